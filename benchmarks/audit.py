"""Soundness audit: do certificates fail no more often than alpha says they may?

Each check runs CERTIFY (``core.certify_batch``) many times, every trial with its own seeds, on a
classifier whose *exact* answer is known, and counts the trials whose certificate is wrong:

* a linear binary classifier f(x) = 1[wᵀx + b > 0]. Under any symmetric noise its smoothed classifier
  is the same half-space, so the exact certified set around x is everything on x's side of the
  hyperplane: in the θ-scaled ℓp metric the exact gap is |wᵀx + b| / ‖θ ⊙ w‖_q (q the dual norm:
  ℓ2 → ℓ2, ℓ1 → ℓ∞). A certificate fails when it predicts the wrong class or its gap exceeds this.
  Checks: ``cohen_l2`` (isotropic Gaussian), ``ddrs_l2`` (per-input σ from ``optimize.ddrs_sigma``),
  ``ancer_l2`` (per-dimension θ from ``optimize.ancer_theta``), ``cohen_l1`` (isotropic uniform noise
  on an axis-aligned classifier, where the ℓ1 bound is tight), ``ancer_l1`` (per-dimension uniform
  noise, generic w in d = 4: here the exact smoothed probability is computed in closed form, and both
  p̲A > pA and a region that crosses the hyperplane count as failures), and ``smooth_reduce_mean``
  (the correlated Smooth-Reduce classifier built by ``smooth_reduce.wrap`` around a linear patch
  classifier with mean reduction: the composite is linear, its weight vector is read off by autograd).
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

Usage: python benchmarks/audit.py [--trials 20000] [--n 500] [--alpha 0.1] [--attack-inputs 200] [--epochs 8]
                                  [--threads 1] [--out benchmarks/results/audit.json]
The test suite (tests/test_audit.py) runs the same functions with fewer trials.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import binom, binomtest
from scipy.stats import norm as normal
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from smoothcert import core, stats
from smoothcert.noise import make_generator, stream_seed

DELTA = 1e-3  # false-alarm probability of one check
HERE = Path(__file__).resolve().parent


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
    return {"check": check, "trials": int(trials), "failures": int(failures), "rate": failures / trials,
            "rate_ci": [float(np.nan_to_num(low)), float(np.nan_to_num(high, nan=1.0))], "alpha": alpha,
            "allowed": allowed, "p_value": float(binomtest(int(failures), int(trials), alpha, alternative="greater").pvalue),
            "delta": DELTA, "pass": bool(failures <= allowed), **extra}


def _seeds(seed: int, trials: int, stream: str) -> list[int]:
    return [stream_seed(seed, i, stream) for i in range(trials)]


def _certify(model, x, scale, n0, n, alpha, norm_name, seed, kind, num_classes=2):
    sampling = core.Sampling(kind=kind, batch_size=100_000, chunk=n)
    return core.certify_batch(model, x, scale, num_classes, n0, n, alpha, norm_name,
                              _seeds(seed, len(x), "select"), _seeds(seed, len(x), "estimate"), sampling)


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

def cohen_l2(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=0, broken=False) -> dict:
    """Isotropic Gaussian noise; exact ℓ2 radius |wᵀx + b| / ‖w‖."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), 0.1
    model = Linear2(torch.from_numpy(w), b)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, (1, 4, 4))
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    if broken:  # the point estimate k/n instead of the Clopper-Pearson lower bound
        p_hat = out["count"] / n
        ok = (p_hat > 0.5) & (out["count"] > 0)
        guess = np.where(margin > 0, 1, 0)  # the selection step is almost always right here
        out = {"predict": np.where(ok, guess, core.ABSTAIN), "gap": np.where(ok, normal.ppf(np.clip(p_hat, 0, 1 - 1e-12)), 0.0)}
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * wn))
    return verdict("broken_cohen_l2" if broken else "cohen_l2", trials, int(failed.sum()), alpha, n=n, n0=n0,
                   certified=int(certified.sum()), noise="gaussian", sigma=sigma, d=16)


def ddrs_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=1, iterations=3) -> dict:
    """Per-input σ optimized by DDRS (gradient ascent on the radius surrogate) before certification."""
    from smoothcert.optimize import ddrs_sigma

    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), -0.2
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma0 * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, (1, 4, 4))
    gens = [make_generator(s, "cpu") for s in _seeds(seed, trials, "optimize")]
    sigma = ddrs_sigma(model, x, torch.from_numpy(sigma0).float(), "l2", iterations=iterations, lr=0.05, samples=16,
                       sigma_min=0.05, generator=gens).double().numpy()
    margin = _margins(model, x)
    wn = np.linalg.norm(model.w.double().numpy())
    out = _certify(model, x, torch.from_numpy(sigma).float(), n0, n, alpha, "l2", seed, "gaussian")
    sigma32 = torch.from_numpy(sigma).float().double().numpy()  # the σ the noise was scaled by
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma32 * wn))
    return verdict("ddrs_l2", trials, int(failed.sum()), alpha, n=n, n0=n0, certified=int(certified.sum()),
                   noise="gaussian", sigma_range=[float(sigma.min()), float(sigma.max())], d=16)


def ancer_l2(trials=1000, n=500, n0=50, alpha=0.1, seed=2, iterations=3) -> dict:
    """Per-dimension θ from ANCER (started from a random anisotropic θ0); exact gap |wᵀx + b| / ‖θ ⊙ w‖₂."""
    from smoothcert.optimize import ancer_theta

    rng = np.random.default_rng(seed)
    d = 16
    w, b = rng.normal(size=d), 0.05
    model = Linear2(torch.from_numpy(w), b)
    sigma0 = rng.uniform(0.25, 1.0, trials)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma0 * np.linalg.norm(w) * normal.ppf(_target_pa(rng, trials)), rng, (1, 4, 4))
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
    return verdict("ancer_l2", trials, int(failed.sum()), alpha, n=n, n0=n0, certified=int(certified.sum()),
                   noise="gaussian", anisotropy=float(np.median(th.max(1) / th.min(1))), d=d)


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
    return verdict("cohen_l1", trials, int(failed.sum()), alpha, n=n, n0=n0, certified=int(certified.sum()),
                   noise="uniform", sigma=sigma, d=d)


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
            total += (-1) ** sum(pick) * shift ** d
    return float(np.clip(total / (np.prod(c) * np.prod(np.arange(1, d + 1))), 0.0, 1.0))


def smoothed_probability_uniform(margin: float, w: np.ndarray, theta: np.ndarray) -> float:
    """P(wᵀ(x + θ ⊙ u) + b > 0) = P(Σ |wᵢθᵢ| uᵢ > -margin), u ~ U[-1, 1]^d: the exact smoothed pA of class 1."""
    return 1.0 - uniform_sum_cdf(-margin, np.abs(w * theta))


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
        a = np.abs(w32 * th[i]).sum()
        margins[i] = sign[i] * brentq(lambda m: smoothed_probability_uniform(m, w32, th[i]) - pa_target[i], 0.0, a)
    x = _inputs_with_margin(w, b, margins, rng, (1, 2, 2))
    margin = _margins(model, x)
    p1 = np.array([smoothed_probability_uniform(m, w32, th[i]) for i, m in enumerate(margin)])
    p_true = np.where(margin > 0, p1, 1 - p1)
    out = _certify(model, x, theta, n0, n, alpha, "l1", seed, "uniform")
    exact_gap = np.abs(margin) / np.abs(th * w32).max(1)
    certified, failed = _linear_failures(out, margin, exact_gap)
    bound_fail = certified & (out["pA_lower"] > p_true)
    return verdict("ancer_l1", trials, int((failed | bound_fail).sum()), alpha, n=n, n0=n0,
                   certified=int(certified.sum()), region_failures=int(failed.sum()),
                   bound_failures=int(bound_fail.sum()), noise="uniform", d=d)


def smooth_reduce_mean(trials=1000, n=500, n0=50, alpha=0.1, sigma=0.5, seed=5) -> dict:
    """Correlated Smooth-Reduce (mean over 9 patches of a linear patch classifier): linear end to end."""
    from smoothcert.smooth_reduce import wrap

    rng = np.random.default_rng(seed)
    base = Linear2(torch.from_numpy(rng.normal(size=64)), 0.1)
    cfg = {"seed": seed, "smooth_reduce": {"resize": 10, "patch": 8, "stride": 1, "positions": "grid",
                                           "num_random": 9, "variant": "correlated"}}
    certified_model = wrap(base, cfg, "smooth_reduce_mean", (1, 8, 8))
    assert certified_model.radius_factor == 1.0
    clf = certified_model.classifier
    # the composite's weights and bias, by autograd in float64 (it is linear: checked below)
    probe = torch.zeros(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    clf64 = _float64(clf)
    logit = clf64(probe)[0, 1]
    (v,) = torch.autograd.grad(logit, probe)
    b_eff = float(logit.detach())
    v = v.flatten().numpy()
    test = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    assert np.allclose(clf64(test)[:, 1].detach().numpy(), test.flatten(1).numpy() @ v + b_eff, atol=1e-9)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(v, b_eff, sign * sigma * np.linalg.norm(v) * normal.ppf(_target_pa(rng, trials)), rng, (1, 8, 8))
    margin = x.flatten(1).double().numpy() @ v + b_eff
    out = _certify(clf, x, sigma, n0, n, alpha, "l2", seed, "gaussian")
    certified, failed = _linear_failures(out, margin, np.abs(margin) / (sigma * np.linalg.norm(v)))
    return verdict("smooth_reduce_mean", trials, int(failed.sum()), alpha, n=n, n0=n0, certified=int(certified.sum()),
                   noise="gaussian", sigma=sigma, patches=int(certified_model.evals_per_draw), d=64)


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
    pred = core.predict_batch(model, x, sigma, 2, n, alpha, _seeds(seed, trials, "predict"),
                              core.Sampling(batch_size=100_000, chunk=n))
    wrong = (pred != core.ABSTAIN) & (pred != (margin > 0).astype(np.int64))
    return verdict(f"predict_pA{pa:g}", trials, int(wrong.sum()), alpha, n=n, pA=pa,
                   abstained=int((pred == core.ABSTAIN).sum()))


# ------------------------------------------------------------------------------------------ attack

def train_digits(folder: Path, epochs: int = 4, sigma: float = 0.25, seed: int = 0):
    """A digits CNN trained with Gaussian noise σ (smoothcert.train.train), on digits prepared in ``folder``."""
    import yaml

    from smoothcert import config as config_mod
    from smoothcert import data as data_mod
    from smoothcert.train import load_model, train

    cfg = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    cfg.update(seed=seed, device="cpu")
    cfg["data"].update(dataset="digits", download=False)
    cfg["model"]["arch"] = "digits_cnn"
    cfg["train"].update(epochs=epochs, batch_size=32, lr=0.05, lr_step=100)
    cfg["models"] = [{"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [sigma], "methods": ["cohen"]}]
    config_mod.validate(cfg, "audit config")
    data_mod.prepare({**cfg["data"], "seed": seed}, folder / "data")
    spec = config_mod.model_specs(cfg)[0]
    train(cfg, spec, folder / "data", folder / "model", "cpu", progress=False)
    model = load_model(cfg, folder / "model" / "model.pt", "cpu")
    x, y = data_mod.load_split(folder / "data", "test", "digits")
    return cfg, model, x, y


def pgd_smoothed(model: nn.Module, x: torch.Tensor, label: torch.Tensor, radius: torch.Tensor, sigma: float,
                 steps: int, draws: int, seed: int) -> torch.Tensor:
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


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float = 0.25, n0: int = 100, n: int = 1000,
           alpha: float = 0.01, max_inputs: int = 20, steps: int = 20, draws: int = 32, eval_n: int = 4000,
           eval_alpha: float = 0.001, factors=(1.0, 1.5), seed: int = 7, pa_n: int = 1000) -> list[dict]:
    """PGD inside (factor 1) and just outside (1.5) the certified radius of certified, correct inputs."""
    k = 10
    sampling = core.Sampling(batch_size=20_000, chunk=1000)
    out = core.certify_batch(model, x, sigma, k, n0, n, alpha, "l2", _seeds(seed, len(x), "select"),
                             _seeds(seed, len(x), "estimate"), sampling)
    good = np.flatnonzero((out["predict"] == y.numpy()) & (out["gap"] > 0))[:max_inputs]
    xc, label = x[good], torch.from_numpy(out["predict"][good])
    radius = torch.from_numpy(sigma * out["gap"][good])
    results = []
    for factor in factors:
        delta = pgd_smoothed(model, xc, label, radius * factor, sigma, steps, draws, seed + int(100 * factor))
        xa = xc + delta
        pred = core.predict_batch(model, xa, sigma, k, eval_n, eval_alpha, _seeds(seed + 1, len(xa), "attack"), sampling)
        # pA of the certified class at the attacked point, for the report only (fewer draws)
        counts = core.count_classes(model, xa, sigma, pa_n, k, _seeds(seed + 2, len(xa), "attack"), sampling)
        p_label = counts[np.arange(len(good)), label.numpy()] / pa_n
        flips = (pred != core.ABSTAIN) & (pred != label.numpy())
        check = f"attack_x{factor:g}"
        extra = {"inputs": int(len(good)), "certified_of": int(len(x)), "factor": factor,
                 "mean_radius": float(radius.mean()) if len(good) else 0.0, "steps": steps, "draws": draws,
                 "eval_n": eval_n, "eval_alpha": eval_alpha, "pA_draws": pa_n, "abstained": int((pred == core.ABSTAIN).sum()),
                 "mean_pA_at_attack": float(p_label.mean()) if len(good) else None,
                 "min_pA_at_attack": float(p_label.min()) if len(good) else None,
                 "delta_norm_max_over_radius": float((delta.flatten(1).norm(dim=1) / radius.float()).max()) if len(good) else 0.0}
        # a flip counts if the certificate was wrong (<= alpha) or PREDICT erred (<= eval_alpha)
        v = verdict(check, max(1, len(good)), int(flips.sum()), alpha + eval_alpha, **extra)
        if factor > 1.0:
            v["pass"] = None  # outside the certified radius nothing is promised: reported only
        results.append(v)
    return results


# ------------------------------------------------------------------------------------------ main

def run_all(trials: int, n: int, alpha: float, attack_inputs: int, epochs: int, sr_trials: int) -> dict:
    checks, timing = [], {}
    for name, fn, kw in [
        ("cohen_l2", cohen_l2, {}), ("broken_cohen_l2", cohen_l2, {"broken": True}), ("ddrs_l2", ddrs_l2, {}),
        ("ancer_l2", ancer_l2, {}), ("cohen_l1", cohen_l1, {}), ("ancer_l1", ancer_l1, {}),
        ("smooth_reduce_mean", smooth_reduce_mean, {"trials": sr_trials}),
        ("predict_pA0.51", predict, {"pa": 0.51}), ("predict_pA0.55", predict, {"pa": 0.55}),
    ]:
        t0 = time.time()
        args = {"trials": trials, "n": n, "alpha": alpha, **kw}
        checks.append(fn(**args))
        timing[name] = round(time.time() - t0, 2)
        print(f"{name}: {checks[-1]['failures']}/{checks[-1]['trials']} failures, allowed {checks[-1]['allowed']}, "
              f"pass {checks[-1]['pass']} ({timing[name]} s)", file=sys.stderr)
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
    return {
        "summary": {"all_sound_checks_pass": all(c["pass"] is not False for c in sound),
                    "broken_certifier_detected": not next(c for c in checks if c["check"] == "broken_cohen_l2")["pass"]},
        "checks": checks, "settings": {"trials": trials, "n": n, "alpha": alpha, "delta": DELTA,
                                       "smooth_reduce_trials": sr_trials, "attack_inputs": attack_inputs,
                                       "attack_train_epochs": epochs},
        "seconds": timing, "machine": {"python": platform.python_version(), "torch": torch.__version__,
                                       "threads": torch.get_num_threads()},
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=20_000)
    p.add_argument("--sr-trials", type=int, default=10_000, help="trials of the Smooth-Reduce check (9 patches per draw)")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--attack-inputs", type=int, default=200)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: steadiest on a shared machine)")
    p.add_argument("--out", default=str(HERE / "results" / "audit.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    result = run_all(args.trials, args.n, args.alpha, args.attack_inputs, args.epochs, args.sr_trials)
    result["seconds"]["total"] = round(time.time() - t0, 1)
    from smoothcert.io import write_json

    write_json(args.out, result)
    print(json.dumps(result["summary"]), f"-> {args.out} in {result['seconds']['total']} s", file=sys.stderr)
    return 0 if result["summary"]["all_sound_checks_pass"] and result["summary"]["broken_certifier_detected"] else 1


if __name__ == "__main__":
    sys.exit(main())
