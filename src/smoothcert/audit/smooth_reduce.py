"""Smooth-Reduce checks: correlated (mean reduction, ℓ2 and ℓ1) and uncorrelated (ℓ2 and ℓ1), images and clips."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm as normal
from torch import nn

from smoothcert.audit.harness import (
    Linear2,
    _certify,
    _float64,
    _inputs_with_margin,
    _linear_failures,
    _target_pa,
    certify_verdict,
    gaussian_inputs,
    margin_for,
    smoothed_probability_uniform,
    uniform_verdict,
    verdict,
    wrapped,
)
from smoothcert.engine.certificates import ABSTAIN


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


class _Reads(nn.Module):
    """A base classifier that records how many values it reads per row (two constant logits)."""

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        self.size = int(np.prod(p.shape[1:]))
        return torch.zeros(len(p), 2, dtype=p.dtype)


def _sub_size(cfg: dict, shape: tuple[int, ...]) -> int:
    """Values the base classifier reads per patch (images) or per sub-clip (clips), as the method's wrapper cuts
    them: measured by wrapping a classifier that records them."""
    probe = _Reads()
    target = wrapped("smooth_reduce_mean", probe, cfg, shape, "l2")
    target.classifier(target.to_space(torch.zeros(1, *shape)))
    return probe.size


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
    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("correlated", clip, seed)
    base = Linear2(torch.from_numpy(rng.normal(size=_sub_size(cfg, shape))), 0.1)
    certified_model = wrapped("smooth_reduce_mean", base, cfg, shape, "l2")
    assert certified_model.radius_factor == 1.0
    clf = certified_model.classifier
    v, b_eff = _linear_weights(clf, shape)  # the composite's weights and bias
    x = gaussian_inputs(rng, v, b_eff, trials, sigma, shape)
    margin = x.flatten(1).double().numpy() @ v + b_eff
    out = _certify(clf, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.linalg.norm(v)))
    check = "smooth_reduce_clip_mean" if clip else "smooth_reduce_mean"
    extra = {"noise": "gaussian", "sigma": sigma, "patches": int(certified_model.evals_per_draw), "d": int(v.size)}
    return certify_verdict(check, trials, failed, alpha, n, n0, certified, **extra)


def smooth_reduce_mean_l1(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=9) -> dict:
    """Correlated Smooth-Reduce in ℓ1: uniform noise on the image, resized 8 → 10, one 8×8 patch (random position),
    a classifier reading one pixel of the patch. The composite is linear with the ≤ 4 bilinear weights of that resized
    pixel, so the exact smoothed pA is the closed form of :func:`smoothed_probability_uniform`; failures: p̲A > pA,
    or a certified ℓ1 region reaching the hyperplane (gap > |m| / (σ‖v‖_∞)). Radius factor 1.
    """
    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("correlated", False, seed, positions="random", num_random=1)
    w = np.zeros(64)
    w[rng.integers(64)] = 1.0
    certified_model = wrapped("smooth_reduce_mean", Linear2(torch.from_numpy(w), 0.0), cfg, shape, "l1")
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
    out = _certify(clf, x, sigma, n0, n, alpha, "l1", seed, "uniform")
    exact_gap = np.abs(margin) / (sigma * np.abs(v).max())
    extra = {"noise": "uniform", "sigma": sigma, "d": 64, "weights": int(len(support))}
    return uniform_verdict("smooth_reduce_mean_l1", trials, alpha, n, n0, out, margin, exact_gap, p1, **extra)


def smooth_reduce_uncorrelated_l2(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=10, clip=False) -> dict:
    """Uncorrelated Smooth-Reduce in ℓ2: Gaussian noise on the stacked patches (sub-clips) z = A x, mean of a linear
    classifier, so the smoothed classifier is the half-space {vᵀz + b > 0}: exact pA = Φ(|m| / (σ‖v‖₂)), and in input
    space the exact robust radius is |m| / ‖Aᵀv‖₂ (A the dense stacking map). Failures: wrong class, p̲A > pA, or a
    reported radius σΦ⁻¹(p̲A) · radius_factor beyond |m| / ‖Aᵀv‖₂. The patch weights are the top singular vector of
    the map patch weights ↦ Aᵀv, so the ℓ2 factor bound is as close to tight as this classifier allows.
    """
    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("uncorrelated", clip, seed)
    k = _sub_size(cfg, shape)
    probe = wrapped("smooth_reduce_mean", Linear2(torch.ones(k, dtype=torch.float64), 0.0), cfg, shape, "l2")
    a = _dense(probe, shape)
    subs = probe.evals_per_draw
    tile = np.tile(np.eye(k), (subs, 1)) / subs  # patch weights w ↦ v = (w, ..., w) / P
    _, _, vt = np.linalg.svd(a.T @ tile)
    base = Linear2(torch.from_numpy(vt[0]), 0.05)
    target = wrapped("smooth_reduce_mean", base, cfg, shape, "l2")
    v = np.tile(base.w.double().numpy(), subs) / subs  # z-space weights of the mean-reduced classifier
    u = a.T @ v  # input-space weights
    x = gaussian_inputs(rng, u, base.b, trials, sigma, shape, norm_of=v)
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
    check = "smooth_reduce_clip_uncorrelated_l2" if clip else "smooth_reduce_uncorrelated_l2"
    extra = {
        "region_failures": int(region_fail.sum()),
        "bound_failures": int(bound_fail.sum()),
        "noise": "gaussian",
        "sigma": sigma,
        "radius_factor": target.radius_factor,
        "exact_over_reported_median": looseness,
        "sub_inputs": int(subs),
        "d": int(u.size),
    }
    return certify_verdict(check, trials, wrong | bound_fail | region_fail, alpha, n, n0, certified, **extra)


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
    rng = np.random.default_rng(seed)
    cfg, shape = _sr_setup("uncorrelated", clip, seed)
    target = wrapped("smooth_reduce_max", BelowThreshold(tau), cfg, shape, "l1")
    a = _dense(target, shape)
    assert (a >= 0).all() and np.allclose(a.sum(1), 1.0)
    l2_target = wrapped("smooth_reduce_max", BelowThreshold(tau), cfg, shape, "l2")
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
    certified = out["predict"] != ABSTAIN
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
