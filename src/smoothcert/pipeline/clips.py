"""The video stage: the clip model trained by the train loop (:mod:`smoothcert.training.clips`), then certified by
:func:`smoothcert.pipeline.certify.certify_shard` (seeds, rows in ``engine.certificates.COLUMNS``, resumption).

Radii are ℓ2 in clip space (all T·C·canvas² pixel values); for uncorrelated Smooth-Reduce the wrapper
(:func:`smoothcert.methods.smooth_reduce.wrap`) divides the radius of the stacked sub-clips by the ℓ2 norm bound of
the clip → sub-clips map (docs/soundness.md).
"""

from __future__ import annotations

from pathlib import Path

from smoothcert import data as data_mod
from smoothcert import methods
from smoothcert.config import VIDEO_NORM
from smoothcert.data.clips import moving_digits
from smoothcert.errors import require
from smoothcert.methods.smooth_reduce import clip_geometry  # the training crops follow the patch geometry
from smoothcert.pipeline import stages
from smoothcert.pipeline.certify import certify_shard
from smoothcert.training import clips as training
from smoothcert.training.loop import fit

NORM = VIDEO_NORM  # clips are certified in ℓ2 with Gaussian noise


def clip_methods() -> list[str]:
    """The registered methods that certify clips."""
    return [m.name for m in methods.registry().values() if m.clips]


def run_video(cfg: dict, sigma: float, out_dir: str | Path, device, progress: bool = True) -> dict:
    """Train (or resume) the clip model at ``sigma`` and certify the configured test clips with every ``video.methods``.

    Writes ``out_dir/{checkpoint.pt,model.pt,metrics.tsv}`` (the train loop's, stamped with the training code alone)
    and ``out_dir/<method>/certify.tsv``; returns a summary (clips, certified accuracy at radius 0, average certified
    radius).
    """
    clip = training.spec(cfg, sigma)
    v, out_dir = cfg["video"], Path(out_dir)
    data = moving_digits(cfg)
    recipe = training.recipe(cfg, data, clip_geometry(cfg, v["frames"], v["canvas"], v["canvas"]))
    code = stages.module_fingerprint(training.__name__)
    history = fit(cfg, clip, recipe, out_dir, device, progress, code=code)
    model_path = out_dir / "model.pt"
    model = training.load_clip_model(cfg, model_path, device)
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
            num_classes=training.NUM_CLASSES,
        )
        summary["methods"][method] = {
            "clips": int(len(df)),
            "certified_accuracy_at_0": float(df["correct"].mean()),
            "average_certified_radius": float(df["radius"].where(df["correct"] == 1, 0.0).mean()),
        }
    return summary
