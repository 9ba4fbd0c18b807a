"""ANCER: anisotropic certification via sample-wise volume maximization (Eiras, Alfarra et al., 2022).

Per input and dimension, θ (B, d) found by Adam on ANCER's relaxed volume objective, started from (and kept
above) the DDRS σ of the same input, so the region contains the isotropic one. The ball certificate is the
radius min θ·gap; the proxy radius (∏θ)^{1/d}·gap is the radius of the ball of equal volume — no certificate.
Sound for the data-dependent classifier only after the memory step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from smoothcert.errors import require
from smoothcert.methods import Method
from smoothcert.methods.ddrs import SEARCH, SIGMA_MAX, search_arguments

if TYPE_CHECKING:
    import torch
    from torch import nn

    from smoothcert.engine import surrogate as sg

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [*SEARCH, "kappa", "sigma_max"],
    "properties": {
        **SEARCH,
        "kappa": {"type": "number", "minimum": 0, "description": "weight of min θ in the objective"},
        "sigma_max": SIGMA_MAX,
    },
}


def optimize(
    model: nn.Module, x: torch.Tensor, start: float, init: torch.Tensor, norm: str, settings: dict, generator, amp
) -> tuple[torch.Tensor, torch.Tensor]:
    """θ (B, d) per input of ``x`` from ``init``, the DDRS θ of the same inputs; and the base-classifier
    evaluations (B,) each input spent."""
    import torch

    evals = torch.zeros(x.shape[0], dtype=torch.int64)
    kappa = float(settings["kappa"])
    theta = ancer_theta(model, x, init, norm, kappa=kappa, **search_arguments(settings, generator, amp, evals))
    return theta, evals


METHODS = (
    Method(
        "ancer",
        "per-input anisotropic θ maximizing the certified region's volume, with the memory step",
        section="ancer",
        schema=SCHEMA,
        per_input_sigma=True,
        init_from="ddrs",
        optimize=f"{__name__}:optimize",
        memory=True,
        proxy=True,
    ),
)


def ancer_terms(theta: torch.Tensor, gap: torch.Tensor, kappa: float) -> torch.Tensor:
    """(B,): (∏θᵢ)^{1/d}·gap + κ·minᵢ θᵢ·gap per input (ANCER's relaxed volume objective, to maximize)."""
    from smoothcert.engine import surrogate as sg

    flat = theta.reshape(theta.shape[0], -1)
    return sg.log_geometric_mean(flat).exp() * gap + kappa * flat.min(1).values * gap


def ancer_objective(theta: torch.Tensor, gap: torch.Tensor, kappa: float) -> torch.Tensor:
    """Σ over inputs of :func:`ancer_terms`."""
    return ancer_terms(theta, gap, kappa).sum()


def ancer_theta(
    model: nn.Module,
    x: torch.Tensor,
    theta0: torch.Tensor,
    norm: str,
    *,
    iterations: int,
    lr: float,
    samples: int,
    kappa: float,
    generator: sg.Generators,
    sigma_max: float | None = None,
    amp: torch.dtype | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    early_stop: sg.EarlyStop | None = None,
    steps: torch.Tensor | None = None,
    evals: torch.Tensor | None = None,
    draws: str = "iid",
) -> torch.Tensor:
    """ANCER: per-input, per-dimension θ (B, d) maximizing :func:`ancer_objective` with Adam(lr).

    Noise N(0, diag θ²) for ℓ2, U[-θ, θ] for ℓ1. After every Adam step θ ← min(max(θ, θ0), sigma_max), θ0
    itself capped at sigma_max first, so the returned θ ≥ min(θ0, sigma_max) elementwise (the anisotropic region
    contains the isotropic one when θ0 is the DDRS σ broadcast and within the cap) and ≤ sigma_max (None: no
    upper bound, as the paper). θ0 must be positive. At most ``iterations`` steps; with ``early_stop``, an input
    whose :func:`ancer_terms` plateaus leaves the batch and keeps its θ (Adam is elementwise, so the others'
    steps are unchanged); ``steps`` (B,) int64, when given, receives the steps each input took, ``evals`` (B,)
    int64 the base-classifier evaluations each input spent (samples a step: one forward, then its backward). Rows are
    independent across inputs, as in :func:`smoothcert.engine.surrogate.ddrs_sigma`; ``amp`` as there.
    ``callback(step, theta)`` (optional) sees θ after each projection. ``draws``: how each step's noise is drawn
    (:class:`smoothcert.engine.surrogate.SearchNoise`).
    """
    import torch

    from smoothcert.engine import surrogate as sg

    x = x.detach()
    b = x.shape[0]
    theta_init = torch.as_tensor(theta0, device=x.device).detach().to(x.dtype).reshape(b, -1)
    theta_init = sg.bounded(theta_init, None, sigma_max).clone()
    require(
        theta_init.shape[1] == x[0].numel(),
        f"theta0 has {theta_init.shape[1]} entries per input, inputs have {x[0].numel()}",
    )
    require(bool((theta_init > 0).all()), "theta0 must be positive")
    theta = theta_init.clone().requires_grad_(True)
    result = theta_init.clone()  # each input's θ as of its last step
    taken = torch.zeros(b, dtype=torch.int64)
    plateau = sg.Plateau(early_stop, b) if early_stop is not None else None
    active = sg.Active(x, generator)
    noise = sg.SearchNoise(x, samples, sg.noise_kind(norm), generator, draws)
    opt = torch.optim.Adam([theta], lr=lr, maximize=True)
    with sg.frozen(model), torch.enable_grad():
        for step in range(iterations):
            if not len(active):
                break
            rows = active.rows
            mine = theta if len(rows) == b else theta[rows]
            gap = sg.proxy_gap(sg.top2_of_noise(model, active.x, mine, noise.draw(active), amp), norm)
            terms = ancer_terms(mine, gap, kappa)
            (theta.grad,) = torch.autograd.grad(terms.sum(), theta)
            opt.step()
            with torch.no_grad():
                torch.maximum(theta, theta_init, out=theta)
                if sigma_max is not None:
                    theta.clamp_(max=sigma_max)
                result[rows] = theta[rows]
            taken[rows.cpu()] += 1
            if plateau is not None:
                active.drop(plateau.update(rows, terms.detach()))
            if callback is not None:
                callback(step, result.clone())
    sg.record_cost(taken, samples, steps, evals)
    return result
