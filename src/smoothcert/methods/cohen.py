"""Randomized smoothing (Cohen, Rosenfeld, Kolter 2019; ℓ1 with uniform noise: Yang et al. 2020).

The base classifier smoothed with the model's own σ: CERTIFY's radius σ·Φ⁻¹(p̲A) (ℓ2, Gaussian noise) or
2σ(p̲A − ½) (ℓ1, uniform noise), with p̲A a one-sided Clopper–Pearson bound at level α
(:mod:`smoothcert.engine.certify`). No settings of its own: ``certify`` holds n0, n and α.
"""

from smoothcert.methods import Method

METHODS = (Method("cohen", "randomized smoothing at the model's fixed σ", clips=True),)
