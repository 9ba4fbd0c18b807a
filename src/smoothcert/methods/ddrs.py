"""DDRS: data-dependent randomized smoothing (Alfarra, Bibi, Torr, Ghanem, 2022).

Per input, an isotropic σ found by gradient ascent on the radius surrogate σ·gap(ψ)
(:func:`smoothcert.engine.surrogate.surrogate`); the certificate at that σ is the usual one, and it is sound
for the data-dependent classifier only after the memory step (Súkeník et al. 2022 show it is not without one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from smoothcert.errors import require
from smoothcert.methods import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

    from smoothcert.engine import surrogate as sg

GRADIENT = "central"  # in float32: "central" differences (two forward passes, same draws) or "autograd"
FD_STEP = 1e-2  # relative step h / σ of the central difference

PRECISION = {
    "enum": ["auto", "float32", "bfloat16"],
    "description": "arithmetic of the base classifier while searching σ / θ (auto = bfloat16 where the "
    "device runs it natively); certification is always float32",
}
SEARCH = {  # the keys every per-input σ / θ search has (ANCER's section uses them too)
    "iterations": {"type": "integer", "minimum": 0, "description": "gradient steps per input"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "description": "step size"},
    "samples": {"type": "integer", "minimum": 1, "description": "noise draws per input and step"},
    "batch_size": {"type": "integer", "minimum": 1, "description": "inputs searched together"},
    "precision": PRECISION,
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [*SEARCH, "sigma0", "sigma_min"],
    "properties": {
        **SEARCH,
        "sigma0": {
            "oneOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}],
            "description": "starting σ (null: the model's training σ)",
        },
        "sigma_min": {"type": "number", "exclusiveMinimum": 0, "description": "σ is kept at least this"},
    },
}


def optimize(
    model: nn.Module, x: torch.Tensor, start: float, init, norm: str, settings: dict, generator, amp
) -> torch.Tensor:
    """σ per input of ``x`` (B, ...), broadcast to θ (B, d), from σ0 = ``settings['sigma0']`` or ``start``."""
    import torch

    sigma0 = settings["sigma0"] if settings["sigma0"] is not None else start
    sigma = ddrs_sigma(
        model,
        x,
        torch.full((x.shape[0],), float(sigma0), device=x.device),
        norm,
        iterations=int(settings["iterations"]),
        lr=float(settings["lr"]),
        samples=int(settings["samples"]),
        sigma_min=float(settings["sigma_min"]),
        generator=generator,
        amp=amp,
    )
    return sigma.unsqueeze(1).expand(x.shape[0], x[0].numel())


METHODS = (
    Method(
        "ddrs",
        "per-input isotropic σ by gradient ascent on the radius surrogate, with the memory step",
        section="ddrs",
        schema=SCHEMA,
        per_input_sigma=True,
        optimize=f"{__name__}:optimize",
        memory=True,
    ),
)


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
    generator: sg.Generators,
    amp: torch.dtype | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """DDRS: per-input σ (B,) by plain gradient ascent σ ← max(σ + lr·∇σ R(σ), sigma_min) on R = :func:`surrogate`.

    ``iterations`` steps of ``samples`` draws per input, one forward for the batch per step
    (the model under autocast(``amp``) when given, e.g. ``torch.bfloat16``).
    Guarantees: the result is ≥ sigma_min, detached, of x's dtype; with a list of per-input
    generators, row i depends only on x[i], sigma0[i] and generator[i].
    ``callback(step, sigma)`` (optional) sees σ after each step.
    """
    import torch

    from smoothcert.engine import surrogate as sg

    x = x.detach()
    sigma = torch.as_tensor(sigma0, device=x.device).detach().to(x.dtype).clamp_min(sigma_min).clone()
    require(sigma.shape == (x.shape[0],), f"sigma0 has shape {tuple(sigma.shape)}, expected ({x.shape[0]},)")
    if GRADIENT == "central" and amp is None and x.dtype == torch.float32:
        with sg.frozen(model), torch.no_grad():
            for step in range(iterations):
                grad = _central_gradient(model, x, sigma, norm, samples, generator)
                sigma = (sigma + lr * grad).clamp_min(sigma_min)
                if callback is not None:
                    callback(step, sigma)
        return sigma
    with sg.frozen(model), torch.enable_grad():
        for step in range(iterations):
            sigma.requires_grad_(True)
            radius = sg.surrogate(model, x, sigma, norm, samples, generator, amp)
            (grad,) = torch.autograd.grad(radius.sum(), sigma)
            sigma = (sigma.detach() + lr * grad).clamp_min(sigma_min)
            if callback is not None:
                callback(step, sigma)
    return sigma.detach()


def _central_gradient(
    model: nn.Module, x: torch.Tensor, sigma: torch.Tensor, norm: str, samples: int, generator: sg.Generators
) -> torch.Tensor:
    """dR/dσ (B,) of :func:`surrogate` by a central difference (R(σ + h) − R(σ − h)) / 2h, h = FD_STEP·σ, on the
    same draws ε for both (the step's one draw, as the autograd step takes it); one forward pass of 2·B·samples rows."""
    import torch

    from smoothcert.engine import surrogate as sg

    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = sg.standard_noise(x, samples, sg.noise_kind(norm), generator)
    h = sigma * FD_STEP
    both = torch.cat([sigma + h, sigma - h])  # (2B,)
    view = (2, b, 1, *([1] * len(shape)))
    z = (x.unsqueeze(1).unsqueeze(0) + both.reshape(view) * eps.unsqueeze(0)).reshape(2 * b * samples, *shape)
    psi = torch.softmax(sg.forward(model, z, None), dim=1).reshape(2 * b, samples, -1).mean(1)
    r = both * sg.proxy_gap(psi.topk(2, dim=1).values, norm)
    return (r[:b] - r[b:]) / (2 * h)
