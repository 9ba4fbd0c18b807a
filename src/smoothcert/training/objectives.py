"""Training objectives by name: each maps a batch to a loss.

An objective has the signature ``loss(model, x, y, sigma, kind, ctx) -> (loss, logits)``
where ``sigma`` is a per-sample (B,) tensor of noise levels (fixed σ broadcast, or
the data-dependent buffer's entries), ``kind`` is ``gaussian`` or ``uniform`` and
``ctx`` is a :class:`TrainContext` (config sections, epoch, generator). ``logits``
is (B, C) or (B·m, C) with rows grouped by input (m noise draws per input).

Noise is x + σ·ε with ε ~ N(0, I) (``gaussian``, certified in ℓ2) or U[-1, 1]^d
(``uniform``, certified in ℓ1); every draw comes from ``ctx.generator``.

A σ updater (``SIGMA_UPDATERS``) has the signature ``update(model, x, y, sigma, kind, ctx)
-> sigma (B,)``; train.py writes its result into the per-training-sample σ buffer
before calling the objective with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from smoothcert.engine.noise import broadcast_scale, fill_standard, noisy_copies
from smoothcert.engine.surrogate import ddrs_sigma, frozen

# ψ is clamped into [MACER_CLAMP, 1 - MACER_CLAMP] before Φ⁻¹: Φ⁻¹(1 - 1e-6) ≈ 4.75, so a
# saturated pair (ψ₁ → 1, ψ₂ → 0) has gap ≈ 9.5 > γ = 8 and falls outside the hinge, as the
# infinite gap does in MACER's reference implementation; no infinities reach the loss.
MACER_CLAMP = 1e-6
LOG_CLAMP = 1e-20


@dataclass
class TrainContext:
    """What an objective may need beyond the batch."""

    cfg: dict = field(default_factory=dict)
    epoch: int = 0
    generator: torch.Generator | None = None


def _section(ctx: TrainContext, name: str) -> dict:
    """params.yaml's section ``name`` (validation has checked it is there when a model needs it)."""
    return ctx.cfg[name]


def _scaled_noise(x: torch.Tensor, sigma: torch.Tensor, m: int, kind: str, generator) -> torch.Tensor:
    """σ ⊙ ε of shape (B, m, *x.shape[1:]), ε standard Gaussian or U[-1, 1]."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = fill_standard(torch.empty((b, m, *shape), device=x.device, dtype=x.dtype), kind, generator)
    return broadcast_scale(sigma, b, shape, x.device).to(x.dtype).unsqueeze(1) * eps


def gaussian_augmentation(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, kind: str, ctx: TrainContext
):
    """Cohen et al.: cross-entropy of f(x + ε) with one noise draw per input."""
    logits = model(noisy_copies(x, sigma, 1, kind, ctx.generator))
    return F.cross_entropy(logits, y), logits


def macer_terms(
    logits: torch.Tensor,
    y: torch.Tensor,
    sigma: torch.Tensor,
    kind: str,
    *,
    m: int,
    lbd: float,
    gamma: float,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MACER's two per-input terms from (B·m, C) logits grouped by input: (total, ce, hinge), each (B,).

    ce = -log ψ_y with ψ = mean over the m draws of softmax(logits) (β = 1, as in MACER).
    hinge uses ψ^β = mean of softmax(β·logits), only on inputs whose ψ^β argmax is y
    (so ψ^β_y = ψ₁ and the top other class is ψ₂), with the gap ξ:
      ℓ2 (gaussian): ξ = Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂) (ψ clamped into [1e-6, 1 - 1e-6]), kept where 0 ≤ ξ ≤ γ
      (MACER's filter), term σ/2·(γ - ξ);
      ℓ1 (uniform): ξ = ψ₁ - ψ₂ ∈ [0, 1], term σ·max(min(γ, 1) - ξ, 0).
    total = ce + λ·hinge; σ is per input (B,).
    """
    b = y.shape[0]
    logits = logits.reshape(b, m, -1)
    psi = torch.softmax(logits, dim=2).mean(1)
    ce = -psi.gather(1, y[:, None]).squeeze(1).clamp_min(LOG_CLAMP).log()
    top = torch.softmax(beta * logits, dim=2).mean(1).topk(2, dim=1)
    correct = top.indices[:, 0] == y
    sig = torch.as_tensor(sigma, device=logits.device).to(psi.dtype).expand(b)
    if kind == "gaussian":
        p = top.values.double().clamp(MACER_CLAMP, 1.0 - MACER_CLAMP)
        xi = torch.special.ndtri(p[:, 0]) - torch.special.ndtri(p[:, 1])
        active = correct & torch.isfinite(xi) & (xi >= 0) & (xi <= gamma)
        hinge = torch.where(active, (gamma - xi).clamp_min(0.0), torch.zeros_like(xi)).to(psi.dtype) * sig / 2
    else:
        xi = top.values[:, 0] - top.values[:, 1]
        hinge = torch.where(correct, (min(gamma, 1.0) - xi).clamp_min(0.0), torch.zeros_like(xi)) * sig
    return ce + lbd * hinge, ce, hinge


def macer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, kind: str, ctx: TrainContext):
    """MACER (Zhai et al. 2020): minimize the batch mean of :func:`macer_terms`' total.

    That is the soft smoothed classifier's cross-entropy plus λ times the hinge on its
    differentiable certified radius (m draws per input from ``ctx.cfg['macer']``); logits (B·m, C).
    """
    mc = _section(ctx, "macer")
    m = int(mc["m"])
    logits = model(noisy_copies(x, sigma, m, kind, ctx.generator))
    total, _, _ = macer_terms(
        logits, y, sigma, kind, m=m, lbd=float(mc["lbd"]), gamma=float(mc["gamma"]), beta=float(mc["beta"])
    )
    return total.mean(), logits


def smoothadv_epsilon(epsilon: float, warmup: int, epoch: int) -> float:
    """The attack budget at 0-based ``epoch``: ε·min(1, epoch / warmup) (ε from the start when warmup = 0)."""
    return float(epsilon) if warmup <= 0 else float(epsilon) * min(1.0, epoch / warmup)


def soft_smoothed_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(B,) cross-entropy -log ψ_y of the soft smoothed classifier ψ = mean_j softmax f(x + noise_j); noise (B, m, *shape)."""
    b, m = noise.shape[:2]
    logits = model((x.unsqueeze(1) + noise).reshape(b * m, *x.shape[1:]))
    psi = torch.softmax(logits, dim=1).reshape(b, m, -1).mean(1)
    return -psi.gather(1, y[:, None]).squeeze(1).clamp_min(LOG_CLAMP).log()


def smoothadv_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    noise: torch.Tensor,
    epsilon: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SmoothAdv's PGD on the soft smoothed classifier with the noise ``noise`` (B, m, *shape) held fixed.

    Maximizes :func:`soft_smoothed_loss` over x' with ‖x' - x‖₂ ≤ ε and x' ∈ [0, 1]: ``steps``
    normalized-gradient ℓ2 steps of size 2ε/steps, each followed by clipping x' into [0, 1]
    and rescaling x' - x into the ε-ball (both constraints then hold, as x ∈ [0, 1]). A zero
    gradient is replaced by a random direction. Runs in eval mode with the parameters frozen
    (mode and flags restored); returns x' detached.
    """
    x = x.detach()
    if epsilon <= 0 or steps <= 0:
        return x.clone()
    b = x.shape[0]
    view = (b, *([1] * (x.ndim - 1)))
    alpha = 2.0 * epsilon / steps
    delta = torch.zeros_like(x)
    was_training = model.training
    model.eval()
    try:
        with frozen(model), torch.enable_grad():
            for _ in range(steps):
                delta.requires_grad_(True)
                loss = soft_smoothed_loss(model, x + delta, y, noise.detach()).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                norms = grad.reshape(b, -1).norm(dim=1)
                zero = norms == 0
                if bool(zero.any()):
                    grad[zero] = fill_standard(torch.empty_like(grad[zero]), "gaussian", generator)
                    norms = grad.reshape(b, -1).norm(dim=1)
                delta = delta.detach() + alpha * grad / norms.reshape(view)
                delta = (x + delta).clamp(0.0, 1.0) - x
                scale = (epsilon / delta.reshape(b, -1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
                delta = delta * scale.reshape(view)
    finally:
        model.train(was_training)
    return (x + delta).detach()


def smoothadv(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, kind: str, ctx: TrainContext):
    """SmoothAdv (Salman et al. 2019): minimize the cross-entropy of f(x' + σ⊙ε_j) over all m draws.

    x' = :func:`smoothadv_attack` of x with the same draws ε_j (m from ``ctx.cfg['smoothadv']``)
    and budget :func:`smoothadv_epsilon` at ``ctx.epoch``; logits (B·m, C).
    """
    sc = _section(ctx, "smoothadv")
    m = int(sc["m"])
    noise = _scaled_noise(x, sigma, m, kind, ctx.generator)
    eps = smoothadv_epsilon(float(sc["epsilon"]), int(sc["warmup"]), ctx.epoch)
    x_adv = smoothadv_attack(model, x, y, noise, eps, int(sc["steps"]), ctx.generator)
    logits = model((x_adv.unsqueeze(1) + noise).reshape(x.shape[0] * m, *x.shape[1:]))
    return F.cross_entropy(logits, y.repeat_interleave(m)), logits


def data_dependent_sigma(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, kind: str, ctx: TrainContext
) -> torch.Tensor:
    """Per-sample σ (B,): ``steps`` DDRS ascent steps on the radius surrogate from the buffer's σ.

    Maximizes σ/2·(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)) (gaussian) or σ·(ψ₁ - ψ₂) (uniform) per input with
    :func:`smoothcert.engine.surrogate.ddrs_sigma` (``ctx.cfg['data_dependent']``: steps, lr, samples),
    keeping σ ≥ ``data_dependent.sigma_min``. Runs in eval mode (restored); parameters are neither changed
    nor given gradients.
    """
    dc = _section(ctx, "data_dependent")
    sigma_min = float(dc["sigma_min"])
    was_training = model.training
    model.eval()
    try:
        new = ddrs_sigma(
            model,
            x.detach(),
            sigma.detach(),
            "l2" if kind == "gaussian" else "l1",
            iterations=int(dc["steps"]),
            lr=float(dc["lr"]),
            samples=int(dc["samples"]),
            sigma_min=sigma_min,
            generator=ctx.generator,
        )
    finally:
        model.train(was_training)
    return new.to(sigma.dtype)


OBJECTIVES: dict[str, Callable] = {"gaussian": gaussian_augmentation, "macer": macer, "smoothadv": smoothadv}

# sigma_mode -> updater(model, x, y, sigma, kind, ctx) -> new per-sample sigma (B,), applied to
# the batch's entries of the per-training-sample buffer before the loss. "fixed" needs none.
SIGMA_UPDATERS: dict[str, Callable] = {"dd": data_dependent_sigma}
