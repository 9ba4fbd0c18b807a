"""Statistics of randomized smoothing, from scipy only.

Every bound here is a library call, so the failure probability alpha holds as proven: the exact
Clopper-Pearson bound is the Beta quantile ``scipy.special.betaincinv`` (bit for bit what
``statsmodels``' ``proportion_confint(method="beta")`` and ``scipy.stats.beta.ppf`` return: a test
checks it), Φ and Φ⁻¹ are ``scipy.special.ndtr`` / ``ndtri``, the exact binomial test is
``scipy.stats.binomtest``. ``scipy.stats`` is imported only inside the two functions that need it:
importing it costs about a second, paid by every pipeline job that loads this module.
"""

from __future__ import annotations

import numpy as np
from scipy.special import betaincinv, gammaln, ndtr, ndtri

NORMS = ("l2", "l1")
NOISE_OF_NORM = {"l2": "gaussian", "l1": "uniform"}


def lower_confidence_bound(count: int | np.ndarray, n: int, alpha: float) -> np.ndarray | float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``P(p >= bound) >= 1 - alpha`` for ``count ~ Binomial(n, p)``: the lower end
    of the two-sided (1 - 2 alpha) exact interval, as in Cohen et al. (2019).
    """
    c, n = np.asarray(count, dtype=float), np.asarray(n, dtype=float)
    low = np.where(c > 0, betaincinv(np.where(c > 0, c, 1.0), n - c + 1.0, alpha), 0.0)
    return low if low.ndim else float(low)


def binomial_pvalue(count_a: int, count_b: int) -> float:
    """Two-sided exact binomial test p-value of ``count_a`` out of ``count_a + count_b`` at 1/2."""
    from scipy.stats import binomtest

    return float(binomtest(int(count_a), int(count_a) + int(count_b), 0.5).pvalue)


def gap(p_lower: np.ndarray | float, norm_name: str) -> np.ndarray:
    """The certified "gap" of a lower bound p̲A, before scaling by sigma.

    l2 (Gaussian noise, Cohen et al. Thm. 1 with p̲B = 1 - p̲A): Φ⁻¹(p̲A).
    l1 (uniform noise U[-σ, σ], Yang et al. 2020): 2 (p̲A - 1/2).
    Negative when p̲A < 1/2, in which case the caller must abstain.
    """
    p = np.asarray(p_lower, dtype=float)
    if norm_name == "l2":
        return ndtri(p)
    if norm_name == "l1":
        return 2.0 * (p - 0.5)
    raise ValueError(f"unknown norm {norm_name!r}; allowed: {NORMS}")


def p_of_gap(gap_value: np.ndarray | float, norm_name: str) -> np.ndarray:
    """The inverse of :func:`gap`: the pA whose gap is ``gap_value`` (Φ(g) for ℓ2, ½ + g/2 for ℓ1)."""
    g = np.asarray(gap_value, dtype=float)
    if norm_name == "l2":
        return ndtr(g)
    if norm_name == "l1":
        return 0.5 + 0.5 * g
    raise ValueError(f"unknown norm {norm_name!r}; allowed: {NORMS}")


def radius(sigma: np.ndarray | float, p_lower: np.ndarray | float, norm_name: str) -> np.ndarray:
    """Certified ℓp radius σ·gap(p̲A) for isotropic smoothing (σ·Φ⁻¹(p̲A) for ℓ2)."""
    return np.asarray(sigma, dtype=float) * gap(p_lower, norm_name)


def log_unit_ball_volume(d: int, norm_name: str) -> float:
    """log volume of the unit ℓ2 ball (π^{d/2}/Γ(d/2+1)) or ℓ1 ball (2^d / d!) in ℝ^d."""
    if norm_name == "l2":
        return 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)
    if norm_name == "l1":
        return d * np.log(2.0) - gammaln(d + 1.0)
    raise ValueError(f"unknown norm {norm_name!r}; allowed: {NORMS}")


def region_log_volume(theta: np.ndarray, gap_value: np.ndarray | float, norm_name: str) -> np.ndarray:
    """log volume of {δ : ‖δ ⊘ θ‖_p ≤ gap}: d·log gap + Σ log θᵢ + log |unit ℓp ball|.

    ``theta`` has shape (..., d); rows with gap ≤ 0 get -inf (empty region).
    """
    theta = np.asarray(theta, dtype=float)
    d = theta.shape[-1]
    g = np.asarray(gap_value, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = d * np.log(np.where(g > 0, g, np.nan)) + np.log(theta).sum(-1) + log_unit_ball_volume(d, norm_name)
    return np.where(g > 0, out, -np.inf)


def certified_accuracy_lower_bound(hits: np.ndarray, alpha: float, rho: float = 0.001) -> float:
    """High-probability lower bound on the true certified accuracy (Cohen et al. 2019, App. D).

    ``hits`` flags the m test points that were certified correct at a radius.
    Each such certificate is wrong with probability at most alpha, so the number
    of wrong ones is stochastically dominated by Binomial(m, alpha); with
    probability ≥ 1 - rho it is at most q = F⁻¹(1 - rho; m, alpha), and the true
    certified accuracy is at least (hits - q) / m.
    """
    hits = np.asarray(hits, dtype=bool)
    m = len(hits)
    if m == 0:
        return 0.0
    from scipy.stats import binom

    q = float(binom.ppf(1.0 - rho, m, alpha))
    return max(0.0, (float(hits.sum()) - q) / m)
