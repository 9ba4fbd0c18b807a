"""Linear-classifier checks: Cohen, DDRS and ANCER certificates, ℓ2 (Gaussian) and ℓ1 (uniform noise)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm as normal

from smoothcert.audit.harness import (
    Linear2,
    _certify,
    _inputs_with_margin,
    _linear_failures,
    _margins,
    _target_pa,
    certify_verdict,
    gaussian_inputs,
    margin_for,
    search,
    smoothed_probability_uniform,
    uniform_verdict,
)
from smoothcert.engine.certificates import ABSTAIN

# ------------------------------------------------------------------------------------------ linear checks


def cohen_l2(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=0, broken=False, shape=(1, 4, 4)) -> dict:
    """Isotropic Gaussian noise; exact ℓ2 radius |wᵀx + b| / ‖w‖. ``shape`` (T, C, H, W): Cohen on clips."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    w, b = rng.normal(size=d), 0.1
    model = Linear2(torch.from_numpy(w), b)
    x = gaussian_inputs(rng, w, b, trials, sigma, shape)
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    if broken:  # the point estimate k/n instead of the Clopper-Pearson lower bound
        p_hat = out["count"] / n
        ok = (p_hat > 0.5) & (out["count"] > 0)
        guess = np.where(margin > 0, 1, 0)  # the selection step is almost always right here
        out = {
            "predict": np.where(ok, guess, ABSTAIN),
            "gap": np.where(ok, normal.ppf(np.clip(p_hat, 0, 1 - 1e-12)), 0.0),
        }
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * wn))
    name = "cohen_l2" if len(shape) == 3 else "cohen_clip_l2"
    check = f"broken_{name}" if broken else name
    extra = {"noise": "gaussian", "sigma": sigma, "d": d}
    return certify_verdict(check, trials, failed, alpha, n, n0, certified, **extra)


def _ddrs(model: Linear2, x: torch.Tensor, sigma0: np.ndarray, norm: str, iterations: int, seed: int) -> torch.Tensor:
    """σ per trial by the registered ddrs method's search, from σ0, each trial on its own noise stream."""
    init = torch.from_numpy(sigma0).float()[:, None].expand(len(x), x[0].numel())
    settings = {"iterations": iterations, "lr": 0.05, "samples": 16, "sigma0": None, "sigma_min": 0.05}
    return search("ddrs", model, x, init, norm, seed, **settings)[:, 0]


def ddrs_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=1, iterations=3) -> dict:
    """Per-input σ optimized by DDRS (gradient ascent on the radius surrogate) before certification."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), -0.2
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    x = gaussian_inputs(rng, w, b, trials, sigma0, (1, 4, 4))
    sigma = _ddrs(model, x, sigma0, "l2", iterations, seed).double().numpy()
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, torch.from_numpy(sigma).float(), n0, n, alpha, "l2", seed, "gaussian")
    sigma32 = torch.from_numpy(sigma).float().double().numpy()  # the σ the noise was scaled by
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma32 * wn))
    extra = {"noise": "gaussian", "sigma_range": [float(sigma.min()), float(sigma.max())], "d": 16}
    return certify_verdict("ddrs_l2", trials, failed, alpha, n, n0, certified, **extra)


def ancer_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=2, iterations=3) -> dict:
    """Per-dimension θ from ANCER (started from a random anisotropic θ0); exact gap |wᵀx + b| / ‖θ ⊙ w‖₂."""
    rng = np.random.default_rng(seed)
    d = 16
    w, b = rng.normal(size=d), 0.05
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    x = gaussian_inputs(rng, w, b, trials, sigma0, (1, 4, 4))
    # an anisotropic start (up to ~5× between dimensions); ANCER keeps θ >= θ0 elementwise
    theta0 = torch.from_numpy(sigma0[:, None] * np.exp(rng.uniform(-0.8, 0.8, (trials, d)))).float()
    settings = {"iterations": iterations, "lr": 0.04, "samples": 16, "kappa": 2.0}
    theta = search("ancer", model, x, theta0, "l2", seed, **settings).reshape(trials, d).float()
    margin = _margins(model, x)
    w64 = model.w.double().numpy()
    th = theta.double().numpy()
    out = _certify(model, x, theta, n0, n, alpha, "l2", seed, "gaussian")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / np.linalg.norm(th * w64, axis=1))
    # the table's ℓ2 radius θ_min·gap lies inside the region, so it can only fail where the gap does
    radius_fail = certified & (th.min(1) * out["gap"] > np.abs(margin) / np.linalg.norm(w64) * (1 + 1e-9))
    assert not (radius_fail & ~failed).any()
    extra = {"noise": "gaussian", "anisotropy": float(np.median(th.max(1) / th.min(1))), "d": d}
    return certify_verdict("ancer_l2", trials, failed, alpha, n, n0, certified, **extra)


def _axis_aligned(rng: np.random.Generator, d: int, b: float) -> tuple[np.ndarray, Linear2]:
    """w = 2·e_k for a random axis k, and the classifier 1[wᵀx + b > 0]: where the ℓ1 gap 2(p̲A − ½) is tight."""
    w = np.zeros(d)
    w[rng.integers(d)] = 2.0
    return w, Linear2(torch.from_numpy(w), b)


def cohen_l1(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=3) -> dict:
    """Isotropic uniform noise U[-σ, σ] on an axis-aligned classifier: the ℓ1 gap 2(p̲A - ½) is tight there."""
    rng = np.random.default_rng(seed)
    d, b = 16, 0.1
    w, model = _axis_aligned(rng, d, b)
    pa = _target_pa(rng, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * 2.0 * (2 * pa - 1), rng, (1, 4, 4))
    margin = _margins(model, x)
    out = _certify(model, x, sigma, n0, n, alpha, "l1", seed, "uniform")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.abs(model.w.double().numpy()).max()))
    return certify_verdict("cohen_l1", trials, failed, alpha, n, n0, certified, noise="uniform", sigma=sigma, d=d)


def ddrs_l1(trials=1000, n=500, n0=50, alpha=0.1, seed=8, iterations=3) -> dict:
    """Per-input σ optimized by DDRS for ℓ1 (uniform noise) on an axis-aligned classifier, where 2(p̲A − ½) is tight."""
    rng = np.random.default_rng(seed)
    d, b = 16, -0.1
    w, model = _axis_aligned(rng, d, b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    # |m| = σ0·|w|·2(2 pA − 1): pA on the target at σ0; DDRS then moves σ, and the exact gap moves with it
    x = _inputs_with_margin(w, b, sign * sigma0 * 2.0 * (2 * _target_pa(rng, trials) - 1), rng, (1, 4, 4))
    sigma = _ddrs(model, x, sigma0, "l1", iterations, seed)
    margin = _margins(model, x)
    out = _certify(model, x, sigma.float(), n0, n, alpha, "l1", seed, "uniform")
    sigma32 = sigma.float().double().numpy()
    certified, failed = _linear_failures(
        out, margin, np.abs(margin) / (sigma32 * np.abs(model.w.double().numpy()).max())
    )
    extra = {"noise": "uniform", "sigma_range": [float(sigma32.min()), float(sigma32.max())], "d": d}
    return certify_verdict("ddrs_l1", trials, failed, alpha, n, n0, certified, **extra)


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
    out = _certify(model, x, theta, n0, n, alpha, "l1", seed, "uniform")
    exact_gap = np.abs(margin) / np.abs(th * w32).max(1)
    return uniform_verdict("ancer_l1", trials, alpha, n, n0, out, margin, exact_gap, p1, noise="uniform", d=d)
