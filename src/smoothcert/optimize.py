"""Per-input noise optimization: DDRS isotropic σ (Alfarra et al.) and ANCER anisotropic θ (Eiras et al.).

Both maximize a differentiable surrogate of the certified radius built from
ψ = E_ε softmax f(x + scale ⊙ ε), estimated from M reparameterized draws per
step, so gradients reach σ / θ through the noise. All inputs of a batch and all
their draws go through the base classifier in one forward pass per step.

Noise comes from seeded generators: one shared ``torch.Generator``, or one per
input (a list), in which case input i's draws depend only on its own generator
and the result for input i does not depend on which other inputs share its batch.
Only σ / θ receive gradients; the model's parameters are frozen while optimizing
(their ``requires_grad`` flags are restored afterwards) and never stepped. Gradients
are enabled inside the optimizers, so they also work when called under ``no_grad``.

Clamping (ℓ2 only): ψ₁, ψ₂ are clamped into [PSI_CLAMP, 1 - PSI_CLAMP] before Φ⁻¹,
so the surrogate stays finite. With PSI_CLAMP = 1e-3, as in both papers' code,
Φ⁻¹(0.999) ≈ 3.09, which is already above the largest gap certification can
certify with n ≤ 6900 draws at α = 0.001; a saturated ψ₁ (clamped, zero gradient
through ψ) lets the σ·gap term push the noise up until ψ₁ leaves the clamp.
ℓ1 needs no clamp: its gap ψ₁ - ψ₂ is bounded.

Precision: the base classifier may run in bfloat16 (autocast) while optimizing; ψ, the
gap and the σ / θ updates stay in float32. The optimizers only search for good σ / θ:
their arithmetic can change how good the result is, never the soundness of its
certificate, which certification computes afresh in float32.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from smoothcert import noise as noise_mod
from smoothcert.errors import require
from smoothcert.stats import NOISE_OF_NORM, NORMS

PSI_CLAMP = 1e-3
METHODS = ("ddrs", "ancer")
# Used when params.yaml has no ddrs:/ancer: section (both are optional in the schema).
DEFAULTS = {
    "ddrs": {"iterations": 100, "lr": 0.04, "samples": 32, "batch_size": 32, "sigma0": None, "sigma_min": 0.01,
             "precision": "auto"},
    "ancer": {"iterations": 30, "lr": 0.04, "samples": 32, "batch_size": 32, "kappa": 2.0, "precision": "auto"},
}

Generators = torch.Generator | Sequence[torch.Generator] | None
PRECISIONS = ("auto", "float32", "bfloat16")


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
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


def _forward(model: nn.Module, z: torch.Tensor, amp: torch.dtype | None) -> torch.Tensor:
    """Logits of ``z`` in float32; the model runs under autocast(``amp``) for float32 inputs."""
    if amp is None or z.dtype != torch.float32:
        return model(z)
    with torch.autocast(z.device.type, dtype=amp):
        return model(z).float()


def _kind(norm: str) -> str:
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
    eps = torch.empty((b, samples, *shape), dtype=x.dtype, device=x.device)
    if isinstance(generator, (list, tuple)):
        require(len(generator) == b, f"got {len(generator)} generators for {b} inputs")
        for i, gen in enumerate(generator):
            noise_mod.fill_standard(eps[i], kind, gen)
    else:
        noise_mod.fill_standard(eps, kind, generator)
    return (x.unsqueeze(1) + _scale_view(scale, x).unsqueeze(1) * eps).reshape(b * samples, *shape)


def top2_probabilities(model: nn.Module, x: torch.Tensor, scale: torch.Tensor, norm: str, samples: int,
                       generator: Generators, amp: torch.dtype | None = None) -> torch.Tensor:
    """(B, 2): the two largest entries of ψ = mean over ``samples`` draws of softmax f(x + scale ⊙ ε).

    Gaussian ε for ℓ2, U[-1, 1] for ℓ1. One forward pass for all B·samples draws (under
    autocast(``amp``) when given; the softmax and mean are float32).
    """
    b = x.shape[0]
    logits = _forward(model, noisy_batch(x, scale, samples, _kind(norm), generator), amp)
    psi = torch.softmax(logits, dim=1).reshape(b, samples, -1).mean(1)
    return psi.topk(2, dim=1).values


def proxy_gap(top2: torch.Tensor, norm: str) -> torch.Tensor:
    """The differentiable gap: ½(Φ⁻¹(ψ₁) - Φ⁻¹(ψ₂)) with ψ clamped (ℓ2), or ψ₁ - ψ₂ (ℓ1).

    Equals stats.gap(ψ₁) when ψ₂ = 1 - ψ₁, so σ·gap is the certified radius at p̲A = ψ₁.
    """
    if _kind(norm) == "gaussian":
        p = top2.clamp(PSI_CLAMP, 1.0 - PSI_CLAMP)
        return 0.5 * (torch.special.ndtri(p[:, 0]) - torch.special.ndtri(p[:, 1]))
    return top2[:, 0] - top2[:, 1]


def log_geometric_mean(theta: torch.Tensor) -> torch.Tensor:
    """log (∏ θᵢ)^{1/d} per row of θ (B, ...), computed in log space (no under/overflow)."""
    return theta.reshape(theta.shape[0], -1).log().mean(1)


def surrogate(model: nn.Module, x: torch.Tensor, scale: torch.Tensor | float, norm: str, samples: int,
              generator: Generators, amp: torch.dtype | None = None) -> torch.Tensor:
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


def ancer_objective(theta: torch.Tensor, gap: torch.Tensor, kappa: float) -> torch.Tensor:
    """Σ over inputs of (∏θᵢ)^{1/d}·gap + κ·minᵢ θᵢ·gap (ANCER's relaxed volume objective, to maximize)."""
    flat = theta.reshape(theta.shape[0], -1)
    return (log_geometric_mean(flat).exp() * gap + kappa * flat.min(1).values * gap).sum()


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


def ddrs_sigma(model: nn.Module, x: torch.Tensor, sigma0: torch.Tensor, norm: str, *, iterations: int, lr: float,
               samples: int, sigma_min: float, generator: Generators, amp: torch.dtype | None = None,
               callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """DDRS: per-input σ (B,) by plain gradient ascent σ ← max(σ + lr·∇σ R(σ), sigma_min) on R = :func:`surrogate`.

    ``iterations`` steps of ``samples`` draws per input, one forward for the batch per step
    (the model under autocast(``amp``) when given, e.g. ``torch.bfloat16``).
    Guarantees: the result is ≥ sigma_min, detached, of x's dtype; with a list of per-input
    generators, row i depends only on x[i], sigma0[i] and generator[i].
    ``callback(step, sigma)`` (optional) sees σ after each step.
    """
    x = x.detach()
    sigma = torch.as_tensor(sigma0, device=x.device).detach().to(x.dtype).clamp_min(sigma_min).clone()
    require(sigma.shape == (x.shape[0],), f"sigma0 has shape {tuple(sigma.shape)}, expected ({x.shape[0]},)")
    with frozen(model), torch.enable_grad():
        for step in range(iterations):
            sigma.requires_grad_(True)
            radius = surrogate(model, x, sigma, norm, samples, generator, amp)
            (grad,) = torch.autograd.grad(radius.sum(), sigma)
            sigma = (sigma.detach() + lr * grad).clamp_min(sigma_min)
            if callback is not None:
                callback(step, sigma)
    return sigma.detach()


def ancer_theta(model: nn.Module, x: torch.Tensor, theta0: torch.Tensor, norm: str, *, iterations: int, lr: float,
                samples: int, kappa: float, generator: Generators, amp: torch.dtype | None = None,
                callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """ANCER: per-input, per-dimension θ (B, d) maximizing :func:`ancer_objective` with Adam(lr).

    Noise N(0, diag θ²) for ℓ2, U[-θ, θ] for ℓ1. After every Adam step θ ← max(θ, θ0), so the
    returned θ ≥ θ0 elementwise (the anisotropic region contains the isotropic one when θ0 is
    the DDRS σ broadcast). θ0 must be positive. Rows are independent across inputs, as in
    :func:`ddrs_sigma`; ``amp`` as there. ``callback(step, theta)`` (optional) sees θ after each projection.
    """
    x = x.detach()
    b = x.shape[0]
    theta_init = torch.as_tensor(theta0, device=x.device).detach().to(x.dtype).reshape(b, -1).clone()
    require(theta_init.shape[1] == x[0].numel(), f"theta0 has {theta_init.shape[1]} entries per input, inputs have {x[0].numel()}")
    require(bool((theta_init > 0).all()), "theta0 must be positive")
    theta = theta_init.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr, maximize=True)
    with frozen(model), torch.enable_grad():
        for step in range(iterations):
            gap = proxy_gap(top2_probabilities(model, x, theta, norm, samples, generator, amp), norm)
            (theta.grad,) = torch.autograd.grad(ancer_objective(theta, gap, kappa), theta)
            opt.step()
            with torch.no_grad():
                torch.maximum(theta, theta_init, out=theta)
            if callback is not None:
                callback(step, theta.detach())
    return theta.detach()


def optimize_shard(cfg: dict, spec, method: str, model: nn.Module, x: torch.Tensor, idx: np.ndarray, device,
                   init=None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Optimize σ (ddrs, broadcast to θ) or θ (ancer) for inputs ``x`` with test indices ``idx``.

    Batches of ``cfg[method]['batch_size']`` inputs; input i's noise comes from its own
    generator seeded by ``stream_seed(cfg['seed'], idx[i], 'optimize')``, so the output
    does not depend on sharding or batching. ddrs starts at ``cfg['ddrs']['sigma0']`` or
    ``spec.sigma``; ancer starts at ``init`` (n, d), the ddrs θ of the same inputs (required).
    Returns ``idx`` int64 (n,), ``theta`` float32 (n, d), ``time`` float64 (n,) seconds per
    input (its batch's wall time / batch size) and ``evals`` int64 (n,) base-classifier forward
    evaluations per input (iterations × samples, each also back-propagated).
    """
    require(method in METHODS, f"optimize: unknown method {method!r}; allowed: {METHODS}")
    oc = {**DEFAULTS[method], **(cfg.get(method) or {})}
    device = torch.device(device)
    idx = np.asarray(idx, dtype=np.int64)
    n, d = len(idx), int(np.prod(x.shape[1:]))
    require(len(x) == n, f"optimize: {len(x)} inputs but {n} indices")
    if method == "ancer":
        require(init is not None, "ancer needs the ddrs θ of the same inputs as its starting point (init)")
        init = torch.as_tensor(np.asarray(init), dtype=torch.float32)
        require(init.shape == (n, d), f"ancer init has shape {tuple(init.shape)}, expected ({n}, {d})")
        require(bool(torch.isfinite(init).all() and (init > 0).all()), "ancer init holds NaN, inf or non-positive values")
    theta = torch.empty((n, d), dtype=torch.float32)
    seconds = torch.zeros(n, dtype=torch.float64)
    evals = torch.full((n,), int(oc["iterations"]) * int(oc["samples"]), dtype=torch.int64)
    sigma0 = float(oc["sigma0"]) if method == "ddrs" and oc.get("sigma0") is not None else float(spec.sigma)
    bs = int(oc["batch_size"])
    amp = resolve_precision(oc["precision"], device)
    model.eval()
    bar = tqdm(total=n, desc=f"optimize {spec.id} {method}", disable=not progress)
    for b0 in range(0, n, bs):
        b1 = min(n, b0 + bs)
        xb = x[b0:b1].to(device, torch.float32)
        gens = [noise_mod.make_generator(noise_mod.stream_seed(cfg["seed"], int(i), "optimize"), device) for i in idx[b0:b1]]
        t0 = time.perf_counter()
        if method == "ddrs":
            sig = ddrs_sigma(model, xb, torch.full((b1 - b0,), sigma0, device=device), spec.norm,
                             iterations=int(oc["iterations"]), lr=float(oc["lr"]), samples=int(oc["samples"]),
                             sigma_min=float(oc["sigma_min"]), generator=gens, amp=amp)
            out = sig.unsqueeze(1).expand(b1 - b0, d)
        else:
            out = ancer_theta(model, xb, init[b0:b1].to(device), spec.norm, iterations=int(oc["iterations"]),
                              lr=float(oc["lr"]), samples=int(oc["samples"]), kappa=float(oc["kappa"]), generator=gens,
                              amp=amp)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds[b0:b1] = (time.perf_counter() - t0) / (b1 - b0)
        theta[b0:b1] = out.float().cpu()
        bar.update(b1 - b0)
    bar.close()
    return {"idx": torch.from_numpy(idx.copy()), "theta": theta, "time": seconds, "evals": evals}
