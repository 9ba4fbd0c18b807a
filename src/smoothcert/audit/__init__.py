"""Soundness audit: do certificates fail no more often than alpha says they may?

Each check runs CERTIFY (``engine.certify.certify_batch``) many times, every trial with its own seeds, on a
classifier whose *exact* answer is known, and counts the trials whose certificate is wrong:

* a linear binary classifier f(x) = 1[wᵀx + b > 0]. Under any symmetric noise its smoothed classifier
  is the same half-space, so the exact certified set around x is everything on x's side of the
  hyperplane: in the θ-scaled ℓp metric the exact gap is |wᵀx + b| / ‖θ ⊙ w‖_q (q the dual norm:
  ℓ2 → ℓ2, ℓ1 → ℓ∞). A certificate fails when it predicts the wrong class or its gap exceeds this.
  Checks: ``cohen_l2`` (isotropic Gaussian; ``cohen_clip_l2`` on (T, C, H, W) clips), ``ddrs_l2``
  (per-input σ from the ddrs method's search), ``ancer_l2`` (per-dimension θ from the ancer method's),
  ``cohen_l1`` and ``ddrs_l1`` (isotropic uniform noise, fixed or DDRS σ, on an axis-aligned classifier,
  where the ℓ1 bound is tight), ``ancer_l1`` (per-dimension uniform noise, generic w in d = 4: here the
  exact smoothed probability is computed in closed form, and both p̲A > pA and a region that crosses the
  hyperplane count as failures), ``smooth_reduce_mean`` / ``smooth_reduce_clip_mean`` (the correlated
  Smooth-Reduce classifier the registered method's ``wrap`` builds around a linear patch / sub-clip classifier
  with mean reduction: the composite is linear, its weight vector is read off by autograd), and
  ``smooth_reduce_mean_l1`` (correlated, uniform noise, one patch reading one pixel: ≤ 4 bilinear weights,
  exact pA in closed form).
* Uncorrelated Smooth-Reduce (images and clips), certified in the stacked space z = A x and mapped back by
  the radius factor: ``smooth_reduce[_clip]_uncorrelated_l2`` (mean of a linear classifier: a half-space
  in z, exact pA = Φ(|m| / σ‖v‖), exact input-space radius |m| / ‖Aᵀv‖₂) and
  ``smooth_reduce[_clip]_uncorrelated_l1`` (max of "some value below τ": exact P(class 0) as a product
  over the stacked coordinates, exact worst ℓ1 perturbation = one pixel lowered by the radius). Failures:
  wrong class, p̲A > pA, or the smoothed class changing inside the reported input-space radius.
  ``broken_smooth_reduce[_clip]_uncorrelated_l1`` re-reads the ℓ1 certificates with the ℓ2 factor
  1/(√maxcov·‖S‖₂) the ℓ1 radius used to be divided by; the audit must flag it.
* Sequential CERTIFY (:mod:`~smoothcert.audit.stopping`) at the hardest margin, decide and estimate, ℓ2 and ℓ1,
  every confidence-sequence bound, and ``sequential_*_l2_anisotropic``: per-input anisotropic θ (the sequential
  certificate of DDRS / ANCER), a generic w, exact gap |wᵀx| / ‖θ ⊙ w‖₂. ``broken_sequential_decide_l2`` drops
  the union over checkpoints; the audit must flag it.
* ``predict``: PREDICT (``engine.certify.predict_batch``) at known pA = 0.51 and 0.55 must return the wrong class
  at rate <= alpha (Cohen et al., Prop. 1).
* ``attack``: a digits CNN trained with Gaussian noise; for certified, correctly classified test inputs,
  PGD on the smoothed classifier's soft output (mean softmax over fresh noise draws each step) inside
  the certified ℓ2 ball, then PREDICT with many draws at the attacked point. A flip (a class other than
  the certified one, not an abstention) inside the radius is a failure; at 1.5× the radius flips are
  only reported.

Each trial fails with probability at most alpha, so the number of failures is stochastically at most
Binomial(trials, alpha). A check passes when failures <= F⁻¹(1 - δ; trials, alpha) (scipy.stats.binom),
δ = 1e-3: a sound certifier fails a check with probability <= δ. ``broken_cohen_l2`` reruns the Cohen
check with the point estimate k/n in place of the Clopper-Pearson bound, to show the audit catches it.

:func:`run_all` runs every check; ``python benchmarks/audit.py`` runs it at full size and writes
``benchmarks/results/audit.json``; the test suite (tests/test_audit.py) runs the same functions with fewer trials.

The package: :mod:`~smoothcert.audit.harness` (verdicts, seeded trials, the known classifiers), one module per
certificate family (:mod:`~smoothcert.audit.linear`, :mod:`~smoothcert.audit.smooth_reduce`,
:mod:`~smoothcert.audit.stopping`, :mod:`~smoothcert.audit.pgd`), and :func:`run_all` here.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from smoothcert.audit.harness import DELTA, Linear2, margin_for, smoothed_probability_uniform, uniform_sum_cdf, verdict
from smoothcert.audit.linear import ancer_l1, ancer_l2, cohen_l1, cohen_l2, ddrs_l1, ddrs_l2
from smoothcert.audit.pgd import attack, pgd_smoothed, train_digits
from smoothcert.audit.smooth_reduce import (
    BelowThreshold,
    smooth_reduce_mean,
    smooth_reduce_mean_l1,
    smooth_reduce_uncorrelated_l1,
    smooth_reduce_uncorrelated_l2,
)
from smoothcert.audit.stopping import SEQUENTIAL_CHECKPOINTS, NoUnionCP, predict, sequential

__all__ = [
    "DELTA",
    "SEQUENTIAL_CHECKPOINTS",
    "BelowThreshold",
    "Linear2",
    "NoUnionCP",
    "ancer_l1",
    "ancer_l2",
    "attack",
    "cohen_l1",
    "cohen_l2",
    "ddrs_l1",
    "ddrs_l2",
    "margin_for",
    "pgd_smoothed",
    "predict",
    "run_all",
    "sequential",
    "smooth_reduce_mean",
    "smooth_reduce_mean_l1",
    "smooth_reduce_uncorrelated_l1",
    "smooth_reduce_uncorrelated_l2",
    "smoothed_probability_uniform",
    "train_digits",
    "uniform_sum_cdf",
    "verdict",
]

# ------------------------------------------------------------------------------------------ main


def run_all(trials: int, n: int, alpha: float, attack_inputs: int, epochs: int, sr_trials: int) -> dict:
    """Every check above (progress on stderr): ``{summary, checks, settings, seconds}``.

    ``summary.all_sound_checks_pass``: no sound check exceeded its bound (the 1.5× attack is reported only);
    ``summary.broken_certifier_detected``: every deliberately broken certifier was flagged.
    """
    checks, timing = [], {}
    sr = {"trials": sr_trials}
    for name, fn, kw in [
        ("cohen_l2", cohen_l2, {}),
        ("broken_cohen_l2", cohen_l2, {"broken": True}),
        ("cohen_clip_l2", cohen_l2, {"shape": (3, 1, 4, 4)}),
        ("ddrs_l2", ddrs_l2, {}),
        ("ancer_l2", ancer_l2, {}),
        ("cohen_l1", cohen_l1, {}),
        ("ddrs_l1", ddrs_l1, {}),
        ("ancer_l1", ancer_l1, {}),
        ("smooth_reduce_mean", smooth_reduce_mean, sr),
        ("smooth_reduce_mean_l1", smooth_reduce_mean_l1, sr),
        ("smooth_reduce_uncorrelated_l2", smooth_reduce_uncorrelated_l2, sr),
        ("smooth_reduce_uncorrelated_l1", smooth_reduce_uncorrelated_l1, sr),
        ("smooth_reduce_clip_mean", smooth_reduce_mean, {**sr, "clip": True}),
        ("smooth_reduce_clip_uncorrelated_l2", smooth_reduce_uncorrelated_l2, {**sr, "clip": True}),
        ("smooth_reduce_clip_uncorrelated_l1", smooth_reduce_uncorrelated_l1, {**sr, "clip": True}),
        ("sequential_decide_l2", sequential, {}),
        ("sequential_estimate_l2", sequential, {"target": "estimate"}),
        ("sequential_decide_l1", sequential, {"norm_name": "l1"}),
        ("sequential_estimate_l1", sequential, {"norm_name": "l1", "target": "estimate"}),
        ("sequential_decide_l2_anisotropic", sequential, {"anisotropic": True}),
        ("sequential_estimate_l2_anisotropic", sequential, {"anisotropic": True, "target": "estimate"}),
        ("broken_sequential_decide_l2_anisotropic", sequential, {"anisotropic": True, "bound": "broken"}),
        ("sequential_decide_l2_beta_mixture", sequential, {"bound": "beta_mixture"}),
        ("broken_sequential_decide_l2", sequential, {"bound": "broken"}),
        ("predict_pA0.51", predict, {"pa": 0.51}),
        ("predict_pA0.55", predict, {"pa": 0.55}),
    ]:
        t0 = time.time()
        args = {"trials": trials, "n": n, "alpha": alpha, **kw}
        result = fn(**args)
        timing[name] = round(time.time() - t0, 2)
        for c in result if isinstance(result, list) else [result]:
            checks.append(c)
            print(
                f"{c['check']}: {c['failures']}/{c['trials']} failures, allowed {c['allowed']}, "
                f"pass {c['pass']} ({timing[name]} s)",
                file=sys.stderr,
            )
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        _, model, x, y = train_digits(Path(tmp), epochs=epochs)
    timing["train"] = round(time.time() - t0, 2)
    t0 = time.time()
    checks += attack(model, x, y, max_inputs=attack_inputs)
    timing["attack"] = round(time.time() - t0, 2)
    for c in checks[-2:]:
        print(f"{c['check']}: {c['failures']}/{c['trials']} flips (pass {c['pass']})", file=sys.stderr)
    sound = [c for c in checks if not c["check"].startswith("broken")]
    broken = [c for c in checks if c["check"].startswith("broken")]
    return {
        "summary": {
            "all_sound_checks_pass": all(c["pass"] is not False for c in sound),
            "broken_certifier_detected": all(not c["pass"] for c in broken),
            "broken_detected": {c["check"]: not c["pass"] for c in broken},
        },
        "checks": checks,
        "settings": {
            "trials": trials,
            "n": n,
            "alpha": alpha,
            "delta": DELTA,
            "smooth_reduce_trials": sr_trials,
            "attack_inputs": attack_inputs,
            "attack_train_epochs": epochs,
        },
        "seconds": timing,
    }
