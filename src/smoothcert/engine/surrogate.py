"""The differentiable radius surrogate that per-input σ / θ searches climb (DDRS, ANCER, data-dependent training),
and DDRS's σ ascent on it (:func:`ddrs_sigma`), which the DDRS method and data-dependent training both run.

ψ = E_ε softmax f(x + scale ⊙ ε) is estimated from M reparameterized draws per step, so gradients reach σ / θ
through the noise; all inputs of a batch and all their draws go through the base classifier in one forward pass.
Noise comes from seeded generators: one shared generator, or one per input (a list), in which case input i's draws
depend only on its own generator and the result for input i does not depend on which inputs share its batch.

Clamping (ℓ2 only): ψ₁, ψ₂ are clamped into [PSI_CLAMP, 1 - PSI_CLAMP] before Φ⁻¹, so the surrogate stays finite.
With PSI_CLAMP = 1e-3, as in both papers' code, Φ⁻¹(0.999) ≈ 3.09, already above the largest gap certification can
certify with n ≤ 6900 draws at α = 0.001. ℓ1 needs no clamp: its gap ψ₁ - ψ₂ is bounded.

Precision: the base classifier may run in bfloat16 (autocast) while searching; ψ, the gap and the σ / θ updates
stay in float32. A search only looks for good σ / θ: its arithmetic can change how good the result is, never the
soundness of its certificate, which certification computes afresh in float32. Nothing here is a bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from smoothcert.engine import noise as noise_mod
from smoothcert.engine.stats import NOISE_OF_NORM, NORMS
from smoothcert.errors import require

PSI_CLAMP = 1e-3
Generators = torch.Generator | Sequence[torch.Generator] | None
PRECISIONS = ("auto", "float32", "bfloat16")
GRADIENT = "central"  # DDRS ascent in float32: "central" differences (two forward passes, same draws) or "autograd"
FD_STEP = 1e-2  # relative step h / σ of the central difference


def resolve_precision(name: str, device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (None: float32). auto: bfloat16 on a CUDA device that supports it
    and on a CPU whose oneDNN runs bfloat16 natively (AVX-512 BF16 / AMX), else float32."""
    require(name in PRECISIONS, f"unknown precision {name!r}; allowed: {PRECISIONS}")
    if name == "float32":
        return None
    if name == "bfloat16":
        return torch.bfloat16
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:  # torch's own CPU probes (private, so guarded): oneDNN built with bf16, and the CPU runs it natively
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and (
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        )
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def forward(model: nn.Module, z: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """Logits of ``z`` in float32; the model runs under autocast(``amp``) for float32 inputs."""
    if amp is None or z.dtype != torch.float32:
        return model(z)
    with torch.autocast(z.device.type, dtype=amp):
        return model(z).float()


def noise_kind(norm: str) -> str:
    require(norm in NORMS, f"unknown norm {norm!r}; allowed: {NORMS}")
    return NOISE_OF_NORM[norm]


def _scale_view(scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """σ (B,) or θ (B, d) / (B, *shape) as a (B, *shape)-broadcastable tensor of x's dtype (differentiable)."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    s = scale.to(x.dtype)
    if s.ndim == 1 and s.shape[0] == b:
        return s.reshape(b, *([1] * len(shape)))
    if s.ndim >= 2 and s.shape[0] == b and s[0].numel() == int(np.prod(shape)):
        return s.reshape(b, *shape)
    raise ValueError(f"noise scale of shape {tuple(s.shape)} does not fit inputs of shape {tuple(x.shape)}")


def noisy_batch(x: torch.Tensor, scale: torch.Tensor, samples: int, kind: str, generator: Generators) -> torch.Tensor:
    """Reparameterized draws x + scale ⊙ ε, shape (B·samples, *shape), rows grouped by input.

    With a single generator, ε is drawn exactly as :func:`noise.noisy_copies` draws it;
    with a list, ε for input i comes from ``generator[i]`` alone (batch-independent).
    Keeps x's dtype (float64 for gradient checks); gradients flow into ``scale``.
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = standard_noise(x, samples, kind, generator)
    return (x.unsqueeze(1) + _scale_view(scale, x).unsqueeze(1) * eps).reshape(b * samples, *shape)


def standard_noise(x: torch.Tensor, samples: int, kind: str, generator: Generators) -> torch.Tensor:
    """ε (B, samples, *shape) of x's dtype, drawn as :func:`noisy_batch` draws it."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = torch.empty((b, samples, *shape), dtype=x.dtype, device=x.device)
    if isinstance(generator, (list, tuple)):
        require(len(generator) == b, f"got {len(generator)} generators for {b} inputs")
        noise_mod.fill_rows(eps, kind, generator)  # one vectorized draw for all inputs (values as one by one)
    else:
        noise_mod.fill_standard(eps, kind, generator)
    return eps


def top2_probabilities(
    model: nn.Module,
    x: torch.Tensor,
    scale: torch.Tensor,
    norm: str,
    samples: int,
    generator: Generators,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """(B, 2): the two largest entries of ψ = mean over ``samples`` draws of softmax f(x + scale ⊙ ε).

    Gaussian ε for ℓ2, U[-1, 1] for ℓ1. One forward pass for all B·samples draws (under
    autocast(``amp``) when given; the softmax and mean are float32).
    """
    b = x.shape[0]
    logits = forward(model, noisy_batch(x, scale, samples, noise_kind(norm), generator), amp)
    psi = torch.softmax(logits, dim=1).reshape(b, samples, -1).mean(1)
    return psi.topk(2, dim=1).values


def proxy_gap(top2: torch.Tensor, norm: str) -> torch.Tensor:
    """The differentiable gap: ½(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)) with ψ clamped (ℓ2), or ψ₁ - ψ₂ (ℓ1).

    Equals stats.gap(ψ₁) when ψ₂ = 1 - ψ₁, so σ·gap is the certified radius at p̲A = ψ₁.
    """
    if noise_kind(norm) == "gaussian":
        p = top2.clamp(PSI_CLAMP, 1.0 - PSI_CLAMP)
        return 0.5 * (torch.special.ndtri(p[:, 0]) - torch.special.ndtri(p[:, 1]))
    return top2[:, 0] - top2[:, 1]


def bounded(scale: torch.Tensor, low: float | None, high: float | None) -> torch.Tensor:
    """σ / θ clamped into [low, high] (either bound None: none on that side); the searches' only projection."""
    return scale.clamp(min=low, max=high) if low is not None or high is not None else scale


def log_geometric_mean(theta: torch.Tensor) -> torch.Tensor:
    """log (∏ θᵢ)^{1/d} per row of θ (B, ...), computed in log space (no under/overflow)."""
    return theta.reshape(theta.shape[0], -1).log().mean(1)


def surrogate(
    model: nn.Module,
    x: torch.Tensor,
    scale: torch.Tensor | float,
    norm: str,
    samples: int,
    generator: Generators,
    amp: torch.dtype | None = None,
) -> torch.Tensor:
    """(B,) differentiable radius surrogate: σ·gap for σ (B,) or a float, (∏θᵢ)^{1/d}·gap for θ (B, d).

    ℓ2: σ/2·(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)); ℓ1: σ·(ψ₁ - ψ₂) (see :func:`proxy_gap`). For θ this
    is ANCER's proxy radius, the radius of the ℓp ball of equal volume.
    """
    if not torch.is_tensor(scale) or scale.ndim == 0:
        scale = torch.full((x.shape[0],), float(scale), dtype=x.dtype, device=x.device)
    gap = proxy_gap(top2_probabilities(model, x, scale, norm, samples, generator, amp), norm)
    if scale.ndim == 1:
        return scale.to(gap.dtype) * gap
    return log_geometric_mean(scale).exp().to(gap.dtype) * gap


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Turn off ``requires_grad`` on the model's parameters; restore each flag on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def ddrs_sigma(
    model: nn.Module,
    x: torch.Tensor,
    sigma0: torch.Tensor,
    norm: str,
    *,
    iterations: int,
    lr: float,
    samples: int,
    sigma_min: float,
    generator: Generators,
    sigma_max: float | None = None,
    amp: torch.dtype | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDRS: per-input σ (B,) by plain gradient ascent σ ← clamp(σ + lr·∇σ R(σ), sigma_min, sigma_max) on
    R = :func:`surrogate` (``sigma_max`` None: no upper bound, as the paper).

    ``iterations`` steps of ``samples`` draws per input, one forward for the batch per step
    (the model under autocast(``amp``) when given, e.g. ``torch.bfloat16``).
    Guarantees: the result lies in [sigma_min, sigma_max], detached, of x's dtype; with a list of per-input
    generators, row i depends only on x[i], sigma0[i] and generator[i].
    ``callback(step, sigma)`` (optional) sees σ after each step.
    """
    x = x.detach()
    sigma = bounded(torch.as_tensor(sigma0, device=x.device).detach().to(x.dtype), sigma_min, sigma_max).clone()
    require(sigma.shape == (x.shape[0],), f"sigma0 has shape {tuple(sigma.shape)}, expected ({x.shape[0]},)")
    if GRADIENT == "central" and amp is None and x.dtype == torch.float32:
        with frozen(model), torch.no_grad():
            for step in range(iterations):
                grad = _central_gradient(model, x, sigma, norm, samples, generator)
                sigma = bounded(sigma + lr * grad, sigma_min, sigma_max)
                if callback is not None:
                    callback(step, sigma)
        return sigma
    with frozen(model), torch.enable_grad():
        for step in range(iterations):
            sigma.requires_grad_(True)
            radius = surrogate(model, x, sigma, norm, samples, generator, amp)
            (grad,) = torch.autograd.grad(radius.sum(), sigma)
            sigma = bounded(sigma.detach() + lr * grad, sigma_min, sigma_max)
            if callback is not None:
                callback(step, sigma)
    return sigma.detach()


def _central_gradient(
    model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, norm: str, samples: int, generator: Generators
) -> torch.Tensor:
    """dR/dσ (B,) of :func:`surrogate` by a central difference (R(σ + h) − R(σ − h)) / 2h, h = FD_STEP·σ, on the
    same draws ε for both (the step's one draw, as the autograd step takes it); one forward pass of 2·B·samples rows."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = standard_noise(x, samples, noise_kind(norm), generator)
    h = sigma * FD_STEP
    both = torch.cat([sigma + h, sigma - h])  # (2B,)
    view = (2, b, 1, *([1] * len(shape)))
    z = (x.unsqueeze(1).unsqueeze(0) + both.reshape(view) * eps.unsqueeze(0)).reshape(2 * b * samples, *shape)
    psi = torch.softmax(forward(model, z, None), dim=1).reshape(2 * b, samples, -1).mean(1)
    r = both * proxy_gap(psi.topk(2, dim=1).values, norm)
    return (r[:b] - r[b:]) / (2 * h)
