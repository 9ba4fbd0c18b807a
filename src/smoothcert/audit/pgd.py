"""The attack check: PGD on a trained digits CNN's smoothed classifier inside its certified ℓ2 balls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from smoothcert.audit.harness import (
    _seeds,
    verdict,
)
from smoothcert.config import ROOT
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import certify_batch, predict_batch
from smoothcert.engine.sampling import Sampling, count_classes

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
    sampling = Sampling(batch_size=20_000, chunk=1000)
    out = certify_batch(
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
        pred = predict_batch(model, xa, sigma, k, eval_n, eval_alpha, _seeds(seed + 1, len(xa), "attack"), sampling)
        # pA of the certified class at the attacked point, for the report only (fewer draws)
        counts = count_classes(model, xa, sigma, pa_n, k, _seeds(seed + 2, len(xa), "attack"), sampling)
        p_label = counts[np.arange(len(good)), label.numpy()] / pa_n
        flips = (pred != ABSTAIN) & (pred != label.numpy())
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
            "abstained": int((pred == ABSTAIN).sum()),
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
