"""Soundness audit: do certificates fail no more often than alpha says they may?

Each check runs CERTIFY (``core.certify_batch``) many times, every trial with its own seeds, on a
classifier whose *exact* answer is known, and counts the trials whose certificate is wrong:

* a linear binary classifier f(x) = 1[wᵀx + b > 0]. Under any symmetric noise its smoothed classifier
  is the same half-space, so the exact certified set around x is everything on x's side of the
  hyperplane: in the θ-scaled ℓp metric the exact gap is |wᵀx + b| / ‖θ ⊙ w‖_q (q the dual norm:
  ℓ2 → ℓ2, ℓ1 → ℓ∞). A certificate fails when it predicts the wrong class or its gap exceeds this.
  Checks: ``cohen_l2`` (isotropic Gaussian; ``cohen_clip_l2`` on (T, C, H, W) clips), ``ddrs_l2``
  (per-input σ from ``engine.surrogate.ddrs_sigma``), ``ancer_l2`` (per-dimension θ from ``optimize.ancer_theta``),
  ``cohen_l1`` and ``ddrs_l1`` (isotropic uniform noise, fixed or DDRS σ, on an axis-aligned classifier,
  where the ℓ1 bound is tight), ``ancer_l1`` (per-dimension uniform noise, generic w in d = 4: here the
  exact smoothed probability is computed in closed form, and both p̲A > pA and a region that crosses the
  hyperplane count as failures), ``smooth_reduce_mean`` / ``smooth_reduce_clip_mean`` (the correlated
  Smooth-Reduce classifier built by ``smooth_reduce.wrap`` around a linear patch / sub-clip classifier
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
* ``predict``: PREDICT (``core.predict_batch``) at known pA = 0.51 and 0.55 must return the wrong class
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
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import beta as beta_dist
from scipy.stats import binom, binomtest
from scipy.stats import norm as normal
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from smoothcert.config import ROOT
from smoothcert.engine import core
from smoothcert.engine.noise import make_generator, stream_seed

DELTA = 1e-3  # false-alarm probability of one check


class Linear2(nn.Module):
    """Binary linear classifier with logits (0, wᵀx + b): class 1 iff wᵀx + b > 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().float().clone(), requires_grad=False)
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


# ------------------------------------------------------------------------------------------ bookkeeping


def verdict(check: str, trials: int, failures: int, alpha: float, **extra) -> dict:
    """Failures vs the binomial bound: pass iff failures <= F⁻¹(1 - δ; trials, alpha)."""
    allowed = int(binom.ppf(1.0 - DELTA, trials, alpha))
    low, high = proportion_confint(failures, trials, alpha=2 * DELTA, method="beta")
    return {
        "check": check,
        "trials": int(trials),
        "failures": int(failures),
        "rate": failures / trials,
        "rate_ci": [float(np.nan_to_num(low)), float(np.nan_to_num(high, nan=1.0))],
        "alpha": alpha,
        "allowed": allowed,
        "p_value": float(binomtest(int(failures), int(trials), alpha, alternative="greater").pvalue),
        "delta": DELTA,
        "pass": bool(failures <= allowed),
        **extra,
    }


def _seeds(seed: int, trials: int, stream: str) -> list[int]:
    return [stream_seed(seed, i, stream) for i in range(trials)]


def _certify(model, x, scale, n0, n, alpha, norm_name, seed, kind, num_classes=2):
    sampling = core.Sampling(kind=kind, batch_size=100_000, chunk=n)
    return core.certify_batch(
        model,
        x,
        scale,
        num_classes,
        n0,
        n,
        alpha,
        norm_name,
        _seeds(seed, len(x), "select"),
        _seeds(seed, len(x), "estimate"),
        sampling,
    )


def _inputs_with_margin(w: np.ndarray, b: float, margin: np.ndarray, rng: np.random.Generator, shape) -> torch.Tensor:
    """Inputs x with wᵀx + b = margin exactly (float64), random along the hyperplane."""
    d = w.size
    u = w / np.linalg.norm(w)
    x0 = rng.normal(0.5, 0.3, (len(margin), d))
    x0 -= np.outer(x0 @ u, u)
    x = x0 + np.outer((margin - b) / np.linalg.norm(w), u)
    return torch.from_numpy(x.reshape(len(margin), *shape)).float()


def _margins(model: Linear2, x: torch.Tensor) -> np.ndarray:
    """wᵀx + b of the float32 inputs actually certified, in float64."""
    return x.flatten(1).double().numpy() @ model.w.double().numpy() + model.b


def _target_pa(rng, trials, lo=0.55, hi=0.99) -> np.ndarray:
    return rng.uniform(lo, hi, trials)


def _linear_failures(out: dict, margin: np.ndarray, exact_gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(certified, failed) per trial: wrong class, or certified gap beyond the exact one."""
    pred = out["predict"]
    certified = pred != core.ABSTAIN
    truth = (margin > 0).astype(np.int64)
    failed = certified & ((pred != truth) | (out["gap"] > exact_gap * (1 + 1e-9)))
    return certified, failed


# ------------------------------------------------------------------------------------------ linear checks


def cohen_l2(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=0, broken=False, shape=(1, 4, 4)) -> dict:
    """Isotropic Gaussian noise; exact ℓ2 radius |wᵀx + b| / ‖w‖. ``shape`` (T, C, H, W): Cohen on clips."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w, b = rng.normal(size=d), 0.1
    model = Linear2(torch.from_numpy(w), b)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, shape)
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    if broken:  # the point estimate k/n instead of the Clopper-Pearson lower bound
        p_hat = out["count"] / n
        ok = (p_hat > 0.5) & (out["count"] > 0)
        guess = np.where(margin > 0, 1, 0)  # the selection step is almost always right here
        out = {
            "predict": np.where(ok, guess, core.ABSTAIN),
            "gap": np.where(ok, normal.ppf(np.clip(p_hat, 0, 1 - 1e-12)), 0.0),
        }
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * wn))
    name = "cohen_l2" if len(shape) == 3 else "cohen_clip_l2"
    return verdict(
        f"broken_{name}" if broken else name,
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="gaussian",
        sigma=sigma,
        d=d,
    )


def ddrs_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=1, iterations=3) -> dict:
    """Per-input σ optimized by DDRS (gradient ascent on the radius surrogate) before certification."""
    from smoothcert.engine.surrogate import ddrs_sigma

    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), -0.2
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(
        w, b, sign * sigma0 * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, (1, 4, 4)
    )
    gens = [make_generator(s, "cpu") for s in _seeds(seed, trials, "optimize")]
    sigma = (
        ddrs_sigma(
            model,
            x,
            torch.from_numpy(sigma0).float(),
            "l2",
            iterations=iterations,
            lr=0.05,
            samples=16,
            sigma_min=0.05,
            generator=gens,
        )
        .double()
        .numpy()
    )
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, torch.from_numpy(sigma).float(), n0, n, alpha, "l2", seed, "gaussian")
    sigma32 = torch.from_numpy(sigma).float().double().numpy()  # the σ the noise was scaled by
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma32 * wn))
    return verdict(
        "ddrs_l2",
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="gaussian",
        sigma_range=[float(sigma.min()), float(sigma.max())],
        d=16,
    )


def ancer_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=2, iterations=3) -> dict:
    """Per-dimension θ from ANCER (started from a random anisotropic θ0); exact gap |wᵀx + b| / ‖θ ⊙ w‖₂."""
    from smoothcert.methods.ancer import ancer_theta

    rng = np.random.default_rng(seed)
    d = 16
    w, b = rng.normal(size=d), 0.05
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(
        w, b, sign * sigma0 * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, (1, 4, 4)
    )
    gens = [make_generator(s, "cpu") for s in _seeds(seed, trials, "optimize")]
    # an anisotropic start (up to ~5× between dimensions); ANCER keeps θ >= θ0 elementwise
    theta0 = torch.from_numpy(sigma0[:, None] * np.exp(rng.uniform(-0.8, 0.8, (trials, d)))).float()
    theta = ancer_theta(model, x, theta0, "l2", iterations=iterations, lr=0.04, samples=16, kappa=2.0, generator=gens)
    theta = theta.reshape(trials, d).float()
    margin = _margins(model, x)
    w64 = model.w.double().numpy()
    th = theta.double().numpy()
    out = _certify(model, x, theta, n0, n, alpha, "l2", seed, "gaussian")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / np.linalg.norm(th * w64, axis=1))
    # the table's ℓ2 radius θ_min·gap lies inside the region, so it can only fail where the gap does
    radius_fail = certified & (th.min(1) * out["gap"] > np.abs(margin) / np.linalg.norm(w64) * (1 + 1e-9))
    assert not (radius_fail & ~failed).any()
    return verdict(
        "ancer_l2",
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="gaussian",
        anisotropy=float(np.median(th.max(1) / th.min(1))),
        d=d,
    )


def cohen_l1(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=3) -> dict:
    """Isotropic uniform noise U[-σ, σ] on an axis-aligned classifier: the ℓ1 gap 2(p̲A - ½) is tight there."""
    rng = np.random.default_rng(seed)
    d = 16
    w = np.zeros(d)
    w[rng.integers(d)] = 2.0
    b = 0.1
    model = Linear2(torch.from_numpy(w), b)
    pa = _target_pa(rng, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * 2.0 * (2 * pa - 1), rng, (1, 4, 4))
    margin = _margins(model, x)
    out = _certify(model, x, sigma, n0, n, alpha, "l1", seed, "uniform")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.abs(model.w.double().numpy()).max()))
    return verdict(
        "cohen_l1",
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="uniform",
        sigma=sigma,
        d=d,
    )


def ddrs_l1(trials=1000, n=500, n0=50, alpha=0.1, seed=8, iterations=3) -> dict:
    """Per-input σ optimized by DDRS for ℓ1 (uniform noise) on an axis-aligned classifier, where 2(p̲A − ½) is tight."""
    from smoothcert.engine.surrogate import ddrs_sigma

    rng = np.random.default_rng(seed)
    d = 16
    w = np.zeros(d)
    w[rng.integers(d)] = 2.0
    b = -0.1
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    # |m| = σ0·|w|·2(2 pA − 1): pA on the target at σ0; DDRS then moves σ, and the exact gap moves with it
    x = _inputs_with_margin(w, b, sign * sigma0 * 2.0 * (2 * _target_pa(rng, trials) - 1), rng, (1, 4, 4))
    gens = [make_generator(s, "cpu") for s in _seeds(seed, trials, "optimize")]
    sigma = ddrs_sigma(
        model,
        x,
        torch.from_numpy(sigma0).float(),
        "l1",
        iterations=iterations,
        lr=0.05,
        samples=16,
        sigma_min=0.05,
        generator=gens,
    )
    margin = _margins(model, x)
    out = _certify(model, x, sigma.float(), n0, n, alpha, "l1", seed, "uniform")
    sigma32 = sigma.float().double().numpy()
    certified, failed = _linear_failures(
        out, margin, np.abs(margin) / (sigma32 * np.abs(model.w.double().numpy()).max())
    )
    return verdict(
        "ddrs_l1",
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="uniform",
        sigma_range=[float(sigma32.min()), float(sigma32.max())],
        d=d,
    )


def uniform_sum_cdf(s: float, a: np.ndarray) -> float:
    """P(Σ aᵢ uᵢ <= s) for independent uᵢ ~ U[-1, 1], aᵢ > 0 (exact, inclusion-exclusion; small d)."""
    a = np.asarray(a, dtype=float)
    d = len(a)
    c = 2 * a
    t = s + a.sum()
    total = 0.0
    for mask in range(1 << d):
        pick = [(mask >> i) & 1 for i in range(d)]
        shift = t - float(np.dot(pick, c))
        if shift > 0:
            total += (-1) ** sum(pick) * shift**d
    return float(np.clip(total / (np.prod(c) * np.prod(np.arange(1, d + 1))), 0.0, 1.0))


def smoothed_probability_uniform(margin: float, w: np.ndarray, theta: np.ndarray) -> float:
    """P(wᵀ(x + θ ⊙ u) + b > 0) = P(Σ |wᵢθᵢ| uᵢ > -margin), u ~ U[-1, 1]^d: the exact smoothed pA of class 1."""
    return 1.0 - uniform_sum_cdf(-margin, np.abs(w * theta))


def margin_for(pa: float, w: np.ndarray, theta: np.ndarray) -> float:
    """The margin m ≥ 0 at which the exact uniform-noise pA (:func:`smoothed_probability_uniform`) equals ``pa``."""
    return brentq(lambda m: smoothed_probability_uniform(m, w, theta) - pa, 0.0, float(np.abs(w * theta).sum()))


def ancer_l1(trials=1000, n=500, n0=50, alpha=0.1, seed=4) -> dict:
    """Per-dimension uniform noise U[-θ, θ], generic w in d = 4, exact smoothed pA in closed form.

    Two failure kinds, both counted: p̲A above the exact pA (the statistical claim), and a certified
    region {δ : ‖δ ⊘ θ‖₁ < gap} reaching the hyperplane (gap > |m| / ‖θ ⊙ w‖_∞: the exact smoothed
    class changes there). θ is drawn at random (log-uniform, up to 5× anisotropy) per trial.
    """
    rng = np.random.default_rng(seed)
    d = 4
    w, b = rng.normal(size=d), 0.0
    model = Linear2(torch.from_numpy(w), b)
    w32 = model.w.double().numpy()
    theta = torch.from_numpy(np.exp(rng.uniform(np.log(0.1), np.log(0.5), (trials, d)))).float()
    th = theta.double().numpy()
    pa_target = _target_pa(rng, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    margins = np.empty(trials)
    for i in range(trials):  # |m| such that the exact pA of the true class is the target
        margins[i] = sign[i] * margin_for(pa_target[i], w32, th[i])
    x = _inputs_with_margin(w, b, margins, rng, (1, 2, 2))
    margin = _margins(model, x)
    p1 = np.array([smoothed_probability_uniform(m, w32, th[i]) for i, m in enumerate(margin)])
    p_true = np.where(margin > 0, p1, 1 - p1)
    out = _certify(model, x, theta, n0, n, alpha, "l1", seed, "uniform")
    exact_gap = np.abs(margin) / np.abs(th * w32).max(1)
    certified, failed = _linear_failures(out, margin, exact_gap)
    bound_fail = certified & (out["pA_lower"] > p_true)
    return verdict(
        "ancer_l1",
        trials,
        int((failed | bound_fail).sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        region_failures=int(failed.sum()),
        bound_failures=int(bound_fail.sum()),
        noise="uniform",
        d=d,
    )


def _sr_setup(variant: str, clip: bool, seed: int, positions: str = "grid", num_random: int = 9):
    """(cfg, input shape) of the Smooth-Reduce checks.

    Images: 8×8 resized to 10×10, 9 patches of 8×8 (the default geometry). Clips: 3 frames of 1×4×4,
    frames resized to 5×5, 4 patches of 4×4, windows of 2 frames (2 windows × 4 patches = 8 sub-clips).
    """
    cfg = {
        "seed": seed,
        "smooth_reduce": {
            "resize": 10 if not clip else 9,
            "patch": 8,
            "stride": 1,
            "positions": positions,
            "num_random": num_random,
            "variant": variant,
        },
        "video": {"window": 2},
    }
    return cfg, ((3, 1, 4, 4) if clip else (1, 8, 8))


def _sub_size(cfg: dict, shape: tuple[int, ...]) -> int:
    """Values the base classifier reads per patch (images) or per sub-clip (clips)."""
    from smoothcert.methods.smooth_reduce import clip_geometry

    if len(shape) == 3:
        return shape[0] * cfg["smooth_reduce"]["patch"] ** 2
    g = clip_geometry(cfg, shape[0], shape[2], shape[3])
    return g["window"] * shape[1] * g["patch"] ** 2


def _dense(target, shape: tuple[int, ...]) -> np.ndarray:
    """(rows, d) float64 matrix of x ↦ target.to_space(x) (the uncorrelated variant's stacking map A)."""
    d = int(np.prod(shape))
    eye = torch.eye(d, dtype=torch.float64).view(d, *shape)
    return target.to_space(eye).reshape(d, -1).T.numpy()


def _linear_weights(clf: nn.Module, shape: tuple[int, ...]) -> tuple[np.ndarray, float]:
    """(v, b) with clf(x)[:, 1] = vᵀx + b, by autograd in float64; linearity is asserted on random points."""
    probe = torch.zeros(1, *shape, dtype=torch.float64, requires_grad=True)
    clf64 = _float64(clf)
    logit = clf64(probe)[0, 1]
    (v,) = torch.autograd.grad(logit, probe)
    b_eff = float(logit.detach())
    v = v.flatten().numpy()
    test = torch.rand(5, *shape, dtype=torch.float64)
    assert np.allclose(clf64(test)[:, 1].detach().numpy(), test.flatten(1).numpy() @ v + b_eff, atol=1e-9)
    return v, b_eff


def smooth_reduce_mean(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=5, clip=False) -> dict:
    """Correlated Smooth-Reduce (mean over the patches / sub-clips of a linear classifier): linear end to end."""
    from smoothcert.methods.smooth_reduce import wrap

    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("correlated", clip, seed)
    base = Linear2(torch.from_numpy(rng.normal(size=_sub_size(cfg, shape))), 0.1)
    certified_model = wrap(base, cfg, "smooth_reduce_mean", shape, norm="l2")
    assert certified_model.radius_factor == 1.0
    clf = certified_model.classifier
    v, b_eff = _linear_weights(clf, shape)  # the composite's weights and bias
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(
        v, b_eff, sign * sigma * np.linalg.norm(v) * normal.ppf(_target_pa(rng, trials)), rng, shape
    )
    margin = x.flatten(1).double().numpy() @ v + b_eff
    out = _certify(clf, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.linalg.norm(v)))
    return verdict(
        "smooth_reduce_clip_mean" if clip else "smooth_reduce_mean",
        trials,
        int(failed.sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        noise="gaussian",
        sigma=sigma,
        patches=int(certified_model.evals_per_draw),
        d=int(v.size),
    )


def smooth_reduce_mean_l1(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=9) -> dict:
    """Correlated Smooth-Reduce in ℓ1: uniform noise on the image, resized 8 → 10, one 8×8 patch (random position),
    a classifier reading one pixel of the patch. The composite is linear with the ≤ 4 bilinear weights of that resized
    pixel, so the exact smoothed pA is the closed form of :func:`smoothed_probability_uniform`; failures: p̲A > pA,
    or a certified ℓ1 region reaching the hyperplane (gap > |m| / (σ‖v‖_∞)). Radius factor 1.
    """
    from smoothcert.methods.smooth_reduce import wrap

    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("correlated", False, seed, positions="random", num_random=1)
    w = np.zeros(64)
    w[rng.integers(64)] = 1.0
    certified_model = wrap(Linear2(torch.from_numpy(w), 0.0), cfg, "smooth_reduce_mean", shape, norm="l1")
    assert certified_model.radius_factor == 1.0 and certified_model.evals_per_draw == 1
    clf = certified_model.classifier
    v, b_eff = _linear_weights(clf, shape)
    support = np.flatnonzero(np.abs(v) > 0)
    assert 1 <= len(support) <= 4
    vs = v[support]
    pa_target = _target_pa(rng, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    scale = np.full(len(support), sigma)
    margins = np.array([s_ * margin_for(p, vs, scale) for s_, p in zip(sign, pa_target)])
    x = _inputs_with_margin(v, b_eff, margins, rng, shape)
    margin = x.flatten(1).double().numpy() @ v + b_eff
    p1 = np.array([smoothed_probability_uniform(m, vs, scale) for m in margin])
    p_true = np.where(margin > 0, p1, 1 - p1)
    out = _certify(clf, x, sigma, n0, n, alpha, "l1", seed, "uniform")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.abs(v).max()))
    bound_fail = certified & (out["pA_lower"] > p_true)
    return verdict(
        "smooth_reduce_mean_l1",
        trials,
        int((failed | bound_fail).sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        region_failures=int(failed.sum()),
        bound_failures=int(bound_fail.sum()),
        noise="uniform",
        sigma=sigma,
        d=64,
        weights=int(len(support)),
    )


def smooth_reduce_uncorrelated_l2(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=10, clip=False) -> dict:
    """Uncorrelated Smooth-Reduce in ℓ2: Gaussian noise on the stacked patches (sub-clips) z = A x, mean of a linear
    classifier, so the smoothed classifier is the half-space {vᵀz + b > 0}: exact pA = Φ(|m| / (σ‖v‖₂)), and in input
    space the exact robust radius is |m| / ‖Aᵀv‖₂ (A the dense stacking map). Failures: wrong class, p̲A > pA, or a
    reported radius σΦ⁻¹(p̲A) · radius_factor beyond |m| / ‖Aᵀv‖₂. The patch weights are the top singular vector of
    the map patch weights ↦ Aᵀv, so the ℓ2 factor bound is as close to tight as this classifier allows.
    """
    from smoothcert.methods.smooth_reduce import wrap

    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("uncorrelated", clip, seed)
    k = _sub_size(cfg, shape)
    probe = wrap(Linear2(torch.ones(k, dtype=torch.float64), 0.0), cfg, "smooth_reduce_mean", shape, norm="l2")
    a = _dense(probe, shape)
    subs = probe.evals_per_draw
    tile = np.tile(np.eye(k), (subs, 1)) / subs  # patch weights w ↦ v = (w, ..., w) / P
    _, _, vt = np.linalg.svd(a.T @ tile)
    base = Linear2(torch.from_numpy(vt[0]), 0.05)
    target = wrap(base, cfg, "smooth_reduce_mean", shape, norm="l2")
    v = np.tile(base.w.double().numpy(), subs) / subs  # z-space weights of the mean-reduced classifier
    u = a.T @ v  # input-space weights
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(
        u, base.b, sign * sigma * np.linalg.norm(v) * normal.ppf(_target_pa(rng, trials)), rng, shape
    )
    z = target.to_space(x)
    margin = z.flatten(1).double().numpy() @ v + base.b
    out = _certify(target.classifier, z, sigma, n0, n, alpha, "l2", seed, "gaussian")
    certified, wrong = _linear_failures(out, margin, np.full(trials, np.inf))
    p_true = normal.cdf(np.abs(margin) / (sigma * np.linalg.norm(v)))
    bound_fail = certified & (out["pA_lower"] > p_true)
    radius = sigma * out["gap"] * target.radius_factor
    exact = np.abs(margin) / np.linalg.norm(u)
    region_fail = certified & (radius > exact * (1 + 1e-9))
    looseness = float(np.median((exact / np.where(radius > 0, radius, np.nan))[certified]))
    return verdict(
        "smooth_reduce_clip_uncorrelated_l2" if clip else "smooth_reduce_uncorrelated_l2",
        trials,
        int((wrong | bound_fail | region_fail).sum()),
        alpha,
        n=n,
        n0=n0,
        certified=int(certified.sum()),
        region_failures=int(region_fail.sum()),
        bound_failures=int(bound_fail.sum()),
        noise="gaussian",
        sigma=sigma,
        radius_factor=target.radius_factor,
        exact_over_reported_median=looseness,
        sub_inputs=int(subs),
        d=int(u.size),
    )


class BelowThreshold(nn.Module):
    """Patch / sub-clip classifier: class 1 iff some value is below ``tau`` (logits (0, τ − min))."""

    def __init__(self, tau: float):
        super().__init__()
        self.tau = float(tau)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        low = p.flatten(1).amin(1)
        return torch.stack([torch.zeros_like(low), self.tau - low], 1)


def _p_no_fire(z: np.ndarray, tau: float, sigma: float) -> np.ndarray:
    """Exact P(min_k z_k + σu_k >= τ), u ~ U[-1, 1] iid: Π_k clip((z_k + σ − τ) / 2σ, 0, 1) over the last axis."""
    return np.clip((z + sigma - tau) / (2 * sigma), 0.0, 1.0).prod(-1)


def smooth_reduce_uncorrelated_l1(
    trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, tau=0.2, seed=11, clip=False
) -> list[dict]:
    """Uncorrelated Smooth-Reduce in ℓ1, and the same certificates with the old (ℓ2) radius factor.

    Classifier: a patch (sub-clip) fires, class 1, when any of its values is below τ; max reduction, so the
    stacked classifier fires iff min_k (z_k + σu_k) < τ under the iid U[-σ, σ] noise of the uncorrelated
    variant, and P(class 0) = Π_k clip((z_k + σ − τ) / 2σ, 0, 1) exactly. In input space A ≥ 0 and
    log P(class 0) is concave in the amounts pixels are lowered by, so the worst perturbation of ℓ1 norm r
    lowers one pixel by r: the exact check is min_j P(class 0 | z − r·A e_j) > ½. Inputs: x = c + η,
    η ~ U[0, 0.2] per pixel, c set (bisection) so that the exact pA is the trial's target. Failures: wrong
    class, p̲A > pA, or a flip inside the reported radius σ·2(p̲A − ½) · radius_factor. The second result
    re-reads the same certificates with the factor 1/(√maxcov·‖S‖₂) the ℓ1 radius used to be divided by:
    the audit must flag it.
    """
    from smoothcert.methods.smooth_reduce import wrap

    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("uncorrelated", clip, seed)
    target = wrap(BelowThreshold(tau), cfg, "smooth_reduce_max", shape, norm="l1")
    a = _dense(target, shape)
    assert (a >= 0).all() and np.allclose(a.sum(1), 1.0)
    l2_target = wrap(BelowThreshold(tau), cfg, "smooth_reduce_max", shape, norm="l2")
    old_factor = l2_target.radius_factor
    assert np.isclose(1 / target.radius_factor, a.sum(0).max()) and old_factor > 2 * target.radius_factor
    d = a.shape[1]
    eta = rng.uniform(0.0, 0.2, (trials, d))
    base_z = eta @ a.T
    pa_target = _target_pa(rng, trials)
    lo, hi = np.full(trials, tau - sigma - 0.2), np.full(trials, tau + sigma)  # P(class 0) = 0 at lo, 1 at hi
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _p_no_fire(base_z + mid[:, None], tau, sigma) < pa_target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    x = torch.from_numpy((hi[:, None] + eta).reshape(trials, *shape)).float()
    z = x.flatten(1).double().numpy() @ a.T
    assert np.allclose(target.to_space(x).flatten(1).double().numpy(), z, atol=1e-6)
    p_true = _p_no_fire(z, tau, sigma)
    out = _certify(target.classifier, target.to_space(x), sigma, n0, n, alpha, "l1", seed, "uniform")
    certified = out["predict"] != core.ABSTAIN
    wrong = certified & (out["predict"] != 0)
    bound_fail = certified & (out["pA_lower"] > p_true)

    def flips(factor: float) -> tuple[np.ndarray, np.ndarray]:
        radius = sigma * out["gap"] * factor
        worst = np.ones(trials)
        for i in np.flatnonzero(certified):
            worst[i] = _p_no_fire(z[i][None, :] - radius[i] * a.T, tau, sigma).min()
        return certified & (worst <= 0.5), worst

    region_fail, worst = flips(target.radius_factor)
    old_fail, _ = flips(old_factor)
    name = "smooth_reduce_clip_uncorrelated_l1" if clip else "smooth_reduce_uncorrelated_l1"
    extra = {
        "n": n,
        "n0": n0,
        "certified": int(certified.sum()),
        "noise": "uniform",
        "sigma": sigma,
        "tau": tau,
        "sub_inputs": int(target.evals_per_draw),
        "d": int(d),
    }
    sound = verdict(
        name,
        trials,
        int((wrong | bound_fail | region_fail).sum()),
        alpha,
        region_failures=int(region_fail.sum()),
        bound_failures=int(bound_fail.sum()),
        radius_factor=target.radius_factor,
        min_worst_pA=float(worst[certified].min()) if certified.any() else None,
        **extra,
    )
    broken = verdict(
        "broken_" + name,
        trials,
        int((wrong | bound_fail | old_fail).sum()),
        alpha,
        region_failures=int(old_fail.sum()),
        bound_failures=int(bound_fail.sum()),
        radius_factor=old_factor,
        **extra,
    )
    return [sound, broken]


# ------------------------------------------------------------------------------------------ sequential


class NoUnionCP:
    """Broken on purpose: Clopper–Pearson at full α at every checkpoint (no union over stopping times)."""

    def lower(self, counts, ns, alpha):
        c, n = np.asarray(counts, float), np.asarray(ns, float)
        return np.where(c > 0, beta_dist.ppf(alpha, c, n - c + 1), 0.0)

    def upper(self, counts, ns, alpha):
        c, n = np.asarray(counts, float), np.asarray(ns, float)
        return np.where(c < n, beta_dist.isf(alpha, c + 1, n - c), 1.0)


SEQUENTIAL_CHECKPOINTS = tuple(100 * 2**k for k in range(7))  # 100 … 6,400 estimation draws


def sequential(
    trials=1000,
    n=None,
    n0=50,
    alpha=0.1,
    sigma=0.5,
    seed=11,
    norm_name="l2",
    target="decide",
    bound="union_cp",
    margin=0.3,
) -> dict:
    """Sequential CERTIFY (``certify.mode: sequential``) on x with wᵀx = ``margin``, w = e₁ in 16 dimensions:
    the exact radius is ``margin`` in ℓ2 (Gaussian noise, pA = Φ(m/σ)) and in ℓ1 (uniform noise,
    pA = ½ + m/2σ). decide asks "certified at the exact radius?" (any yes is an over-claim); estimate reports
    the radius of the lower bound at its stopping time. Every input is at the same, hardest margin; distinct
    seeds. ``bound``: union_cp, beta_mixture, or broken (no union over checkpoints: must fail)."""
    from smoothcert.engine import sequential as seq

    cks = SEQUENTIAL_CHECKPOINTS
    cs = {"union_cp": seq.UnionCP(cks), "beta_mixture": seq.BetaMixture(), "broken": NoUnionCP()}[bound]
    w = torch.zeros(16, dtype=torch.float64)
    w[0] = 1.0
    x = torch.zeros(trials, 1, 4, 4)
    x[:, 0, 0, 0] = margin
    kind = "gaussian" if norm_name == "l2" else "uniform"
    plan = core.SequentialPlan(cks, cs, (margin,) if target == "decide" else None, 0.05)
    out = core.certify_sequential_batch(
        Linear2(w, 0.0),
        x,
        sigma,
        2,
        n0,
        alpha,
        norm_name,
        _seeds(seed, trials, "select"),
        _seeds(seed, trials, "estimate"),
        core.Sampling(kind=kind, batch_size=50_000, chunk=cks[0]),
        plan,
        np.full(trials, sigma),
    )
    radius = np.where(out["predict"] == 1, sigma * out["gap"], 0.0)
    failed = (out["predict"] == 0) | (radius > margin * (1 + 1e-9))
    name = f"sequential_{target}_{norm_name}" + ("" if bound in ("union_cp", "broken") else f"_{bound}")
    return verdict(
        name if bound != "broken" else f"broken_{name}",
        trials,
        int(failed.sum()),
        alpha,
        n0=n0,
        checkpoints=list(cks),
        certified=int((out["predict"] == 1).sum()),
        mean_draws=float(out["n"].mean()),
        noise=kind,
        sigma=sigma,
        margin=margin,
    )


def _float64(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).double()


# ------------------------------------------------------------------------------------------ PREDICT


def predict(trials=1000, n=500, alpha=0.1, sigma=0.5, pa=0.51, seed=6) -> dict:
    """PREDICT at a known pA: a class other than the smoothed one is returned at rate <= alpha."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), 0.0
    model = Linear2(torch.from_numpy(w), b)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * np.linalg.norm(w) * normal.ppf(pa), rng, (1, 4, 4))
    margin = _margins(model, x)
    pred = core.predict_batch(
        model, x, sigma, 2, n, alpha, _seeds(seed, trials, "predict"), core.Sampling(batch_size=100_000, chunk=n)
    )
    wrong = (pred != core.ABSTAIN) & (pred != (margin > 0).astype(np.int64))
    return verdict(
        f"predict_pA{pa:g}", trials, int(wrong.sum()), alpha, n=n, pA=pa, abstained=int((pred == core.ABSTAIN).sum())
    )


# ------------------------------------------------------------------------------------------ attack


def train_digits(folder: Path, epochs: int = 4, sigma: float = 0.25, seed: int = 0):
    """A digits CNN trained with Gaussian noise σ (smoothcert.training.loop.train), on digits prepared in ``folder``."""
    import yaml

    from smoothcert import config as config_mod
    from smoothcert import data as data_mod
    from smoothcert.training.loop import train
    from smoothcert.training.models import load_model

    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg.update(seed=seed, device="cpu")
    cfg["data"].update(dataset="digits", download=False)
    cfg["model"]["arch"] = "digits_cnn"
    cfg["train"].update(epochs=epochs, batch_size=32, lr=0.05, lr_step=100)
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [sigma], "methods": ["cohen"]}
    ]
    config_mod.validate(cfg, "audit config")
    data_mod.prepare({**cfg["data"], "seed": seed}, folder / "data")
    spec = config_mod.model_specs(cfg)[0]
    train(cfg, spec, folder / "data", folder / "model", "cpu", progress=False)
    model = load_model(cfg, folder / "model" / "model.pt", "cpu")
    x, y = data_mod.load_split(folder / "data", "test", "digits")
    return cfg, model, x, y


def pgd_smoothed(
    model: nn.Module,
    x: torch.Tensor,
    label: torch.Tensor,
    radius: torch.Tensor,
    sigma: float,
    steps: int,
    draws: int,
    seed: int,
) -> torch.Tensor:
    """ℓ2 PGD on the soft smoothed classifier: minimize log mean_ε softmax(f(x + δ + σε))[label], ‖δ‖₂ <= radius."""
    gen = torch.Generator().manual_seed(seed)
    b, shape = x.shape[0], tuple(x.shape[1:])
    view = (b,) + (1,) * len(shape)
    r = radius.float().view(view)
    step = 2.5 * r / steps
    delta = torch.zeros_like(x)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            eps = torch.randn((b, draws, *shape), generator=gen) * sigma
            noisy = ((x + delta).unsqueeze(1) + eps).reshape(b * draws, *shape)
            probs = torch.softmax(model(noisy), 1).view(b, draws, -1).mean(1)
            loss = -torch.log(probs[torch.arange(b), label].clamp_min(1e-12)).sum()
            (grad,) = torch.autograd.grad(loss, delta)
            g = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)
            delta = delta.detach() + step * g
            norm_ = delta.flatten(1).norm(dim=1).view(view)
            delta = delta * torch.clamp(r / norm_.clamp_min(1e-12), max=1.0)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    return delta.detach()


def attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma: float = 0.25,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.01,
    max_inputs: int = 20,
    steps: int = 20,
    draws: int = 32,
    eval_n: int = 4000,
    eval_alpha: float = 0.001,
    factors=(1.0, 1.5),
    seed: int = 7,
    pa_n: int = 1000,
) -> list[dict]:
    """PGD inside (factor 1) and just outside (1.5) the certified radius of certified, correct inputs."""
    k = 10
    sampling = core.Sampling(batch_size=20_000, chunk=1000)
    out = core.certify_batch(
        model,
        x,
        sigma,
        k,
        n0,
        n,
        alpha,
        "l2",
        _seeds(seed, len(x), "select"),
        _seeds(seed, len(x), "estimate"),
        sampling,
    )
    good = np.flatnonzero((out["predict"] == y.numpy()) & (out["gap"] > 0))[:max_inputs]
    xc, label = x[good], torch.from_numpy(out["predict"][good])
    radius = torch.from_numpy(sigma * out["gap"][good])
    results = []
    for factor in factors:
        delta = pgd_smoothed(model, xc, label, radius * factor, sigma, steps, draws, seed + int(100 * factor))
        xa = xc + delta
        pred = core.predict_batch(
            model, xa, sigma, k, eval_n, eval_alpha, _seeds(seed + 1, len(xa), "attack"), sampling
        )
        # pA of the certified class at the attacked point, for the report only (fewer draws)
        counts = core.count_classes(model, xa, sigma, pa_n, k, _seeds(seed + 2, len(xa), "attack"), sampling)
        p_label = counts[np.arange(len(good)), label.numpy()] / pa_n
        flips = (pred != core.ABSTAIN) & (pred != label.numpy())
        check = f"attack_x{factor:g}"
        extra = {
            "inputs": int(len(good)),
            "certified_of": int(len(x)),
            "factor": factor,
            "mean_radius": float(radius.mean()) if len(good) else 0.0,
            "steps": steps,
            "draws": draws,
            "eval_n": eval_n,
            "eval_alpha": eval_alpha,
            "pA_draws": pa_n,
            "abstained": int((pred == core.ABSTAIN).sum()),
            "mean_pA_at_attack": float(p_label.mean()) if len(good) else None,
            "min_pA_at_attack": float(p_label.min()) if len(good) else None,
            "delta_norm_max_over_radius": float((delta.flatten(1).norm(dim=1) / radius.float()).max())
            if len(good)
            else 0.0,
        }
        # a flip counts if the certificate was wrong (<= alpha) or PREDICT erred (<= eval_alpha)
        v = verdict(check, max(1, len(good)), int(flips.sum()), alpha + eval_alpha, **extra)
        if factor > 1.0:
            v["pass"] = None  # outside the certified radius nothing is promised: reported only
        results.append(v)
    return results


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
