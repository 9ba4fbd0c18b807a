"""The clip model's training: :class:`~smoothcert.training.models.FrameNet` on the moving digits
(:mod:`smoothcert.data.clips`), as a :class:`~smoothcert.training.loop.Recipe` of the one train loop.

What clips change: Adam at ``video.train.lr``; Gaussian noise on whole clips, then a ``video.train.patch_fraction``
share of the noisy frames resized and cropped back as Smooth-Reduce will present them (the patch ``geometry`` of
:func:`smoothcert.methods.smooth_reduce.clip_geometry`, passed in); cross-entropy of every frame against the clip's
label. Checkpoints, resume and the byte-identical ``model.pt`` are the loop's. This module imports no
certification code, so an edit of certification code does not retrain the clip model
(:func:`smoothcert.pipeline.stages.module_fingerprint` of this module stamps its checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from smoothcert import data as data_mod
from smoothcert.config import VIDEO_NORM, ModelSpec
from smoothcert.engine import patches as patch_ops
from smoothcert.engine.noise import noisy_copies
from smoothcert.errors import require
from smoothcert.training.loop import Recipe
from smoothcert.training.models import frame_net, load_weights
from smoothcert.training.objectives import TrainContext

ARCH = "video_frame_dft_mlp"
NUM_CLASSES = data_mod.info("digits").num_classes  # moving digits: the digits' classes


def spec(cfg: dict, sigma: float) -> ModelSpec:
    """The clip experiment at ``sigma``: Gaussian noise, fixed σ, certified in ℓ2 by ``video.methods``."""
    require(float(sigma) > 0, f"video: sigma = {sigma} must be > 0")
    return ModelSpec("gaussian", "fixed", VIDEO_NORM, float(sigma), tuple(cfg["video"]["methods"]))


def training_settings(cfg: dict, geometry: dict) -> dict:
    """What the clip model's training reads (its checkpoint's fingerprint); ``video.train.epochs`` only says when
    to stop, so a longer run resumes a shorter one's checkpoint."""
    v = cfg["video"]
    return {
        "video": {
            "frames": v["frames"],
            "canvas": v["canvas"],
            "model": v["model"],
            "train": {k: x for k, x in v["train"].items() if k != "epochs"},
        },
        "data": {"test_fraction": cfg["data"]["test_fraction"]},
        "geometry": geometry,
    }


def recipe(cfg: dict, data: tuple, geometry: dict) -> Recipe:
    """The loop's :class:`~smoothcert.training.loop.Recipe` for clips ``data`` (x_train, y_train, x_test, y_test)."""
    v, tc = cfg["video"], cfg["video"]["train"]
    crops = patch_ops.patch_positions(geometry["resize"], geometry["patch"], 1)
    xtr = data[0]

    def objective(model, x, y, sigma, kind, ctx: TrainContext):
        """Cross-entropy of every frame of x + σε against the clip's label; logits: the clips' (temporal mean)."""
        noisy = noisy_copies(x, sigma, 1, kind, ctx.generator)
        frames = noisy.reshape(-1, *noisy.shape[2:])
        if geometry["resize"] != geometry["patch"]:  # some frames as Smooth-Reduce will cut them
            pick = torch.rand(len(frames), generator=ctx.generator, device=x.device) < tc["patch_fraction"]
            chosen = frames[pick]
            cut = patch_ops.extract_patches(
                patch_ops.resize_to(chosen, geometry["resize"]), crops.to(x.device), geometry["patch"]
            )
            which = torch.randint(len(crops), (len(chosen),), generator=ctx.generator, device=x.device)
            frames = frames.clone()
            frames[pick] = cut.view(len(chosen), len(crops), *frames.shape[1:])[
                torch.arange(len(chosen), device=x.device), which
            ]
        logits = model.frame_logits(frames)
        clip_logits = logits.detach().view(len(x), v["frames"], -1).mean(1)
        return F.cross_entropy(logits, y.repeat_interleave(v["frames"])), clip_logits

    return Recipe(
        arch=ARCH,
        splits=data,
        model=lambda: frame_net(v, NUM_CLASSES, mean=float(xtr.mean()), std=float(xtr.std())),
        optimizer=lambda params: (torch.optim.Adam(params, lr=tc["lr"]), None),
        objective=objective,
        epochs=tc["epochs"],
        batch_size=tc["batch_size"],
        settings=training_settings(cfg, geometry),
        num_classes=NUM_CLASSES,
    )


def load_clip_model(cfg: dict, path: str | Path, device) -> torch.nn.Module:
    """The :class:`FrameNet` saved at ``path`` by the video stage (one-line error if it does not fit ``video``)."""
    return load_weights(lambda: frame_net(cfg["video"], NUM_CLASSES), path, ARCH, "the video model").to(device)
