"""DDRS: data-dependent randomized smoothing (Alfarra, Bibi, Torr, Ghanem, 2022).

Per input, an isotropic σ found by gradient ascent on the radius surrogate σ·gap(ψ)
(:func:`smoothcert.engine.surrogate.ddrs_sigma`, which data-dependent training climbs too); the certificate at that σ is the usual one, and it is sound
for the data-dependent classifier only after the memory step (Súkeník et al. 2022 show it is not without one).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smoothcert.methods import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

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
    "draws": {
        "enum": ["iid", "antithetic", "common", "common_antithetic"],
        "description": "the search's noise (a variance reduction; certification draws afresh): iid fresh draws "
        "every step (the papers) | antithetic ±ε pairs | common one set per input reused every step | "
        "common_antithetic",
    },
    "early_stop": {
        "type": "boolean",
        "description": "stop an input's search once its smoothed objective stops improving (iterations is then "
        "the maximum); the rule is patience / tolerance / smoothing",
    },
    "patience": {
        "type": "integer",
        "minimum": 1,
        "description": "early stop: steps in a row without improvement of the smoothed objective",
    },
    "tolerance": {
        "type": "number",
        "minimum": 0,
        "description": "early stop: a step improves when the smoothed objective exceeds the best so far by this "
        "fraction of it",
    },
    "smoothing": {
        "type": "number",
        "minimum": 0,
        "exclusiveMaximum": 1,
        "description": "early stop: weight β of the past in the objective's exponential moving average "
        "(m ← β·m + (1 − β)·value; 0: no smoothing)",
    },
}
SIGMA_MAX = {
    "oneOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}],
    "description": "upper bound on every σ / θ entry during the search (null: unbounded, as the papers); when set, "
    "it must exceed sigma_min (checked by smoothcert validate)",
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": [*SEARCH, "sigma0", "sigma_min", "sigma_max"],
    "properties": {
        **SEARCH,
        "sigma0": {
            "oneOf": [{"type": "null"}, {"type": "number", "exclusiveMinimum": 0}],
            "description": "starting σ (null: the model's training σ)",
        },
        "sigma_min": {"type": "number", "exclusiveMinimum": 0, "description": "σ is kept at least this"},
        "sigma_max": SIGMA_MAX,
    },
}


def search_arguments(settings: dict, generator, amp, evals) -> dict:
    """The keyword arguments every σ / θ search (DDRS's, ANCER's) takes from its params.yaml section (the
    :data:`SEARCH` keys and ``sigma_max``), with the per-input ``generator`` list, autocast ``amp`` and the
    ``evals`` (B,) tensor that receives the base-classifier evaluations each input spent."""
    from smoothcert.engine.surrogate import EarlyStop

    return {
        "iterations": int(settings["iterations"]),
        "lr": float(settings["lr"]),
        "samples": int(settings["samples"]),
        "sigma_max": settings["sigma_max"],
        "generator": generator,
        "amp": amp,
        "early_stop": EarlyStop.of(settings),
        "evals": evals,
        "draws": settings["draws"],
    }


def optimize(
    model: nn.Module, x: torch.Tensor, start: float, init, norm: str, settings: dict, generator, amp
) -> tuple[torch.Tensor, torch.Tensor]:
    """σ per input of ``x`` (B, ...), broadcast to θ (B, d), from σ0 = ``settings['sigma0']`` or ``start`` — or, given
    ``init`` (B, d) (a caller with a start per input: the audit), from each row's smallest entry; and the
    base-classifier evaluations (B,) each input spent."""
    import torch

    from smoothcert.engine.surrogate import ddrs_sigma

    if init is not None:
        sigma0 = torch.as_tensor(init).amin(1)
    else:
        start = settings["sigma0"] if settings["sigma0"] is not None else start
        sigma0 = torch.full((x.shape[0],), float(start), device=x.device)
    evals = torch.zeros(x.shape[0], dtype=torch.int64)
    sigma = ddrs_sigma(
        model,
        x,
        sigma0,
        norm,
        sigma_min=float(settings["sigma_min"]),
        **search_arguments(settings, generator, amp, evals),
    )
    return sigma.unsqueeze(1).expand(x.shape[0], x[0].numel()), evals


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
