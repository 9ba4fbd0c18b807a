"""Smooth-Reduce (Joshi et al. 2022): smooth a classifier that votes over patches of its input.

The base model f classifies ``patch``×``patch`` images; the certified classifier resizes the input to
``resize``×``resize``, cuts P patches, runs f on all of them and reduces the P logit vectors by ``max`` or
``mean`` (:mod:`smoothcert.engine.patches`, which holds the proofs). Correlated variant: one noise draw for
the whole input, radius in input space (factor 1). Uncorrelated: one draw per patch, certified in
stacked-patch space; the radius is divided by the patch map's operator norm in the certificate's own norm.
Both norms are proven for both variants (docs/soundness.md). Clips: windows of ``video.window`` frames.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smoothcert.errors import require
from smoothcert.methods import NORMS, Method

if TYPE_CHECKING:
    from torch import nn

    from smoothcert.engine.certify import Certified

SECTION = "smooth_reduce"
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["resize", "patch", "stride", "positions", "num_random", "variant"],
    "properties": {
        "resize": {"type": "integer", "minimum": 1, "description": "the noisy input is resized to resize×resize"},
        "patch": {"type": "integer", "minimum": 1, "description": "patch side (the base model's input size)"},
        "stride": {"type": "integer", "minimum": 1},
        "positions": {"enum": ["grid", "random"]},
        "num_random": {"type": "integer", "minimum": 1, "description": "patches when positions = random"},
        "variant": {"enum": ["correlated", "uncorrelated"]},
    },
}
PROVEN = {"correlated": NORMS, "uncorrelated": NORMS}  # variant → norms with a proof (docs/soundness.md)


def _method(reduce: str) -> Method:
    return Method(
        f"smooth_reduce_{reduce}",
        f"patch classifier on the noisy input, logits reduced by {reduce}",
        section=SECTION,
        schema=SCHEMA,
        variant="variant",
        variant_norms=PROVEN,
        wrap=f"{__name__}:wrap",
        clips=True,
    )


METHODS = (_method("max"), _method("mean"))
REDUCTION = {m.name: m.name.rsplit("_", 1)[1] for m in METHODS}


def settings(cfg: dict) -> dict:
    """``cfg['smooth_reduce']``, with the one check the schema cannot state (patch ≤ resize)."""
    s = cfg[SECTION]
    require(s["patch"] <= s["resize"], f"smooth_reduce: patch = {s['patch']} must be <= resize = {s['resize']}")
    return s


def certificate_norms(cfg: dict, method_name: str, norm: str | None = None) -> tuple[str, ...]:
    """The norms the radius factor must hold for: ``norm`` when given, else those of every ``cfg['models']``
    entry that runs ``method_name`` (both when none does: the factor is then sound for either). Each must be
    proven for the configured variant."""
    require(method_name in REDUCTION, f"smooth_reduce: method {method_name!r} is not one of {list(REDUCTION)}")
    variant = settings(cfg)["variant"]
    if norm is not None:
        norms = (norm,)
    else:
        norms = tuple(sorted({str(e["norm"]) for e in cfg.get("models") or [] if method_name in e["methods"]}))
    for n in norms:
        require(
            n in PROVEN[variant],
            f"smooth_reduce: {method_name} has no proven certificate in norm {n!r} with "
            f"smooth_reduce.variant = {variant}; proven: {list(PROVEN[variant])}",
        )
    return norms or NORMS


def wrap(
    model: nn.Module, cfg: dict, method_name: str, input_shape: tuple[int, ...], norm: str | None = None
) -> Certified:
    """The :class:`~smoothcert.engine.certify.Certified` Smooth-Reduce classifier of ``model`` for ``input_shape``.

    (C, H, W) images: the base model classifies ``patch``-sized patches. (T, C, H, W) clips: it classifies
    clips of H×W frames, in windows of ``video.window``. The radius factor is the one of the certificate's
    ``norm`` (without it, of every norm ``cfg['models']`` certifies this method in: the smallest, sound for each).
    """
    from functools import partial

    import torch

    from smoothcert.engine import patches as P
    from smoothcert.engine.certify import Certified
    from smoothcert.engine.noise import stream_seed

    reduce = REDUCTION.get(method_name)
    norms = certificate_norms(cfg, method_name, norm)
    s = settings(cfg)
    seed = stream_seed(int(cfg["seed"]), 0, "patches")
    device = next(model.parameters(), torch.empty(0)).device
    shape = tuple(int(v) for v in input_shape)
    require(
        len(shape) in (3, 4), f"smooth_reduce: inputs must be (C, H, W) images or (T, C, H, W) clips, got shape {shape}"
    )
    if len(shape) == 4:
        t, c, h, w = shape
        g = clip_geometry(cfg, t, h, w)
        pos = P.patch_positions(g["resize"], g["patch"], s["stride"], s["positions"], s["num_random"], seed).to(device)
        n_rows = (t - g["window"] + 1) * len(pos)
        factor = min(
            P.radius_factor(n, s["variant"], h, w, g["resize"], pos.cpu(), g["patch"], t, g["window"]) for n in norms
        )
        if s["variant"] == "correlated":
            return Certified(
                P.ClipPatchReduce(model, g["resize"], g["patch"], pos, g["window"], reduce),
                radius_factor=factor,
                evals_per_draw=n_rows,
            )
        return Certified(
            P.StackedClipReduce(model, n_rows, g["window"], c, reduce),
            to_space=partial(
                P.stack_clip_patches, resize=g["resize"], positions=pos, patch=g["patch"], window=g["window"]
            ),
            radius_factor=factor,
            evals_per_draw=n_rows,
        )
    _, h, w = shape
    pos = P.patch_positions(s["resize"], s["patch"], s["stride"], s["positions"], s["num_random"], seed).to(device)
    factor = min(P.radius_factor(n, s["variant"], h, w, s["resize"], pos.cpu(), s["patch"]) for n in norms)
    if s["variant"] == "correlated":
        return Certified(
            P.PatchReduce(model, s["resize"], s["patch"], pos, reduce), radius_factor=factor, evals_per_draw=len(pos)
        )
    return Certified(
        P.StackedPatchReduce(model, len(pos), reduce),
        to_space=partial(P.stack_patches, resize=s["resize"], positions=pos, patch=s["patch"]),
        radius_factor=factor,
        evals_per_draw=len(pos),
    )


def clip_geometry(cfg: dict, frames: int, height: int, width: int) -> dict:
    """Patch grid for clips: patch = frame side, resize = side + (resize − patch), window = ``video.window``."""
    s = settings(cfg)
    window = int(cfg["video"]["window"])
    require(height == width, f"smooth_reduce: clip frames must be square, got {height}×{width}")
    require(1 <= window <= frames, f"video.window = {window} must be between 1 and the {frames} frames of a clip")
    return {"patch": height, "resize": height + s["resize"] - s["patch"], "window": window}
