"""The video stage: moving-digits clips (:mod:`smoothcert.data.clips`) on :class:`~smoothcert.training.models.FrameNet`,
trained by :func:`smoothcert.training.loop.fit` and certified by :func:`smoothcert.pipeline.certify.certify_shard`.

This module only says what clips change: the training recipe (Adam at ``video.train.lr``; Gaussian noise on
whole clips, then a ``video.train.patch_fraction`` share of the noisy frames resized and cropped back as
Smooth-Reduce will present them; cross-entropy of every frame) and which methods certify them. Checkpoints,
resume and the byte-identical ``model.pt`` are the train loop's; seeds, rows (``engine.certificates.COLUMNS``)
and resumption are the certify stage's. Radii are ℓ2 in clip space (all T·C·canvas² pixel values); for
uncorrelated Smooth-Reduce the wrapper (:func:`smoothcert.methods.smooth_reduce.wrap`) divides the radius of the
stacked sub-clips by the ℓ2 norm bound of the clip → sub-clips map (docs/soundness.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from smoothcert import data as data_mod
from smoothcert import methods
from smoothcert.config import VIDEO_NORM, ModelSpec
from smoothcert.data.clips import moving_digits
from smoothcert.engine import patches as patch_ops
from smoothcert.engine.noise import noisy_copies
from smoothcert.errors import require
from smoothcert.methods.smooth_reduce import clip_geometry  # the training crops follow the patch geometry
from smoothcert.pipeline import stages
from smoothcert.pipeline.certify import certify_shard
from smoothcert.training.loop import Recipe, fit
from smoothcert.training.models import frame_net, load_weights
from smoothcert.training.objectives import TrainContext

NORM = VIDEO_NORM  # clips are certified in ℓ2 with Gaussian noise
ARCH = "video_frame_dft_mlp"
NUM_CLASSES = data_mod.info("digits").num_classes  # moving digits: the digits' classes


def clip_methods() -> list[str]:
    """The registered methods that certify clips."""
    return [m.name for m in methods.registry().values() if m.clips]


def spec(cfg: dict, sigma: float) -> ModelSpec:
    """The clip experiment at ``sigma``: a Gaussian-noise model with fixed σ, certified in ℓ2 by ``video.methods``."""
    require(float(sigma) > 0, f"video: sigma = {sigma} must be > 0")
    return ModelSpec("gaussian", "fixed", NORM, float(sigma), tuple(cfg["video"]["methods"]))


def training_settings(cfg: dict) -> dict:
    """The settings the clip model's training reads (its checkpoint's fingerprint; ``video.train.epochs`` only says
    when to stop, so a longer run resumes a shorter one's checkpoint)."""
    v = cfg["video"]
    return {
        "video": {
            "frames": v["frames"],
            "canvas": v["canvas"],
            "model": v["model"],
            "train": {k: x for k, x in v["train"].items() if k != "epochs"},
        },
        "data": {"test_fraction": cfg["data"]["test_fraction"]},
        "geometry": clip_geometry(cfg, v["frames"], v["canvas"], v["canvas"]),
    }


def recipe(cfg: dict, data: tuple) -> Recipe:
    """The train loop's :class:`~smoothcert.training.loop.Recipe` for clips ``data`` (x_train, y_train, x_test, y_test)."""
    v, tc = cfg["video"], cfg["video"]["train"]
    settings = training_settings(cfg)
    geometry = settings["geometry"]
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
        settings=settings,
        num_classes=NUM_CLASSES,
    )


def load_clip_model(cfg: dict, path: str | Path, device) -> torch.nn.Module:
    """The :class:`FrameNet` saved at ``path`` by the video stage (one-line error if it does not fit ``video``)."""
    return load_weights(lambda: frame_net(cfg["video"], NUM_CLASSES), path, ARCH, "the video model").to(device)


def run_video(cfg: dict, sigma: float, out_dir: str | Path, device, progress: bool = True) -> dict:
    """Train (or resume) the clip model at ``sigma`` and certify the configured test clips with every ``video.methods``.

    Writes ``out_dir/{checkpoint.pt,model.pt,metrics.tsv}`` (the train loop's) and ``out_dir/<method>/certify.tsv``;
    returns a summary (clips, certified accuracy at radius 0, average certified radius).
    """
    clip = spec(cfg, sigma)
    out_dir = Path(out_dir)
    data = moving_digits(cfg)
    history = fit(cfg, clip, recipe(cfg, data), out_dir, device, progress, code=stages.code_fingerprint("video"))
    model_path = out_dir / "model.pt"
    model = load_clip_model(cfg, model_path, device)
    t = cfg["test"]
    idx = data_mod.test_indices(len(data[2]), t["start"], t["step"], t["limit"])
    require(len(idx) > 0, "video: no test clips selected (check test.start / test.limit)")
    summary = {"sigma": clip.sigma, "train": len(data[0]), "test": len(data[2]), "methods": {}}
    summary["test_noisy_acc"] = float(history["test_noisy_acc"].iloc[-1])
    for method in clip.methods:
        df = certify_shard(
            cfg,
            clip,
            method,
            model,
            data[2][idx],
            data[3][idx],
            idx,
            out_dir / method / "certify.tsv",
            device,
            progress=progress,
            checkpoint=model_path,
            stage="video",
            num_classes=NUM_CLASSES,
        )
        summary["methods"][method] = {
            "clips": int(len(df)),
            "certified_accuracy_at_0": float(df["correct"].mean()),
            "average_certified_radius": float(df["radius"].where(df["correct"] == 1, 0.0).mean()),
        }
    return summary
