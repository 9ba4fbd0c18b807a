"""A locuslab-layout CIFAR ResNet-110 certified on the 20 CIFAR-10 test images of the foolbox wheel (issue 27).

The model: ResNet-110 with seeded random weights, saved as locuslab/smoothing's released checkpoints are saved
(``tests/locuslab_fixture.py``: the writer the loader's own tests check; this script takes it from there),
read back by the pretrained-model loader ``smoothcert.training.pretrained.load_model_file`` on the device that
``config.resolve_device`` gives (a GPU slot on CUDA). Checked and reported:

* the loaded module's logits on the images equal the reference module's up to float rounding (relative
  difference ≤ 1e-2, which TF32 convolutions on CUDA stay within; images with the same argmax);
* Cohen CERTIFY (σ = 0.25, α = 0.001, ``--n0``, ``--n`` draws) of the images on the device: seconds per image,
  certified / abstained / correct counts and the mean radius. Random weights: the figures measure the path
  and its speed, not accuracy.

The images: ``foolbox/data/cifar10_NN_LABEL.png`` (labels = CIFAR-10's first 20 test labels), found without
importing foolbox (``pip install --no-deps foolbox``; on a bare GPU machine from ``.whl/``).
Writes ``benchmarks/results/gpu_cifar_fixture_<device>.json``, or ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from smoothcert import config as config_mod  # noqa: E402
from smoothcert.engine.certificates import certificate  # noqa: E402
from smoothcert.engine.certify import certify_batch  # noqa: E402
from smoothcert.engine.noise import stream_seed  # noqa: E402
from smoothcert.engine.sampling import Sampling  # noqa: E402
from smoothcert.errors import SmoothcertError, require  # noqa: E402
from smoothcert.training.pretrained import load_model_file  # noqa: E402

sys.path.insert(0, str(harness.REPO / "tests"))
from locuslab_fixture import write_locuslab_checkpoint  # noqa: E402

ARCH, SIGMA, ALPHA, SEED = "cifar_resnet110", 0.25, 0.001, 7


def foolbox_images() -> tuple[torch.Tensor, np.ndarray]:
    """The foolbox wheel's CIFAR-10 test images as (N, 3, 32, 32) floats in [0, 1], and their labels."""
    spec = importlib.util.find_spec("foolbox")
    require(
        spec is not None and spec.submodule_search_locations,
        "foolbox is not installed (pip install --no-deps foolbox): its wheel holds the CIFAR-10 sample images",
    )
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    found = sorted(folder.glob("cifar10_*_*.png"))
    require(len(found) == 20, f"expected 20 cifar10_NN_LABEL.png in {folder}, found {len(found)}")
    x = np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0 for p in found])
    labels = np.array([int(re.fullmatch(r"cifar10_\d+_(\d+)\.png", p.name).group(1)) for p in found])
    return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), labels


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--images", type=int, default=20, help="the first K of the 20 images")
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--batch-size", type=int, default=16_000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cfg = config_mod.load(harness.REPO / "params.yaml")
    device = config_mod.resolve_device({**cfg, "device": args.device})  # CUDA: takes a GPU slot, as jobs do
    x, labels = foolbox_images()
    x, labels = x[: args.images], labels[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "noise_0.25" / "checkpoint.pth.tar"
        reference = write_locuslab_checkpoint(path, ARCH, 10, seed=SEED)
        t0 = time.perf_counter()
        loaded = load_model_file(path, size=32)
        load_seconds = time.perf_counter() - t0
    model = loaded.module.to(device).eval()
    reference = reference.to(device).eval()
    with torch.inference_mode():
        want, got = reference(x.to(device)), model(x.to(device))
    # the same function computed by two module trees: equal up to float rounding (TF32 convolutions on CUDA)
    relative = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    agree = {
        "max_abs_logit_difference": float((got - want).abs().max()),
        "relative_difference": relative,
        "same_argmax_images": int((got.argmax(1) == want.argmax(1)).sum()),
    }
    sampling = Sampling(batch_size=args.batch_size, chunk=min(args.batch_size, args.n), device=device)
    idx = range(len(x))
    seeds = ([stream_seed(0, i, "select") for i in idx], [stream_seed(0, i, "estimate") for i in idx])
    certify_batch(model, x[:1], SIGMA, 10, args.n0, min(args.n, 1000), ALPHA, "l2", *(s[:1] for s in seeds), sampling)
    out, seconds, _ = harness.timed(
        lambda: certify_batch(model, x, SIGMA, 10, args.n0, args.n, ALPHA, "l2", *seeds, sampling), device
    )
    certified = out["predict"] >= 0
    radius = certificate(out["predict"], out["gap"], np.full((len(x), x[0].numel()), SIGMA), 1.0, "l2")["radius"]
    record = {
        "machine": harness.machine(),
        "commit": harness.commit(),
        "device": str(device),
        "model": {"arch": ARCH, "layout": "locuslab", "format": loaded.format, "random_weights_seed": SEED},
        "load_seconds": round(load_seconds, 3),
        "loaded_equals_reference": agree,
        "certify": {"sigma": SIGMA, "alpha": ALPHA, "n0": args.n0, "n": args.n, "batch_size": args.batch_size},
        "images": len(x),
        "seconds": round(seconds, 3),
        "seconds_per_image": round(seconds / len(x), 4),
        "certified": int(certified.sum()),
        "abstained": int((~certified).sum()),
        "certified_correct": int((certified & (out["predict"] == labels)).sum()),
        "mean_radius_certified": float(radius[certified].mean()) if certified.any() else 0.0,
        "predictions": out["predict"].tolist(),
        "labels": labels.tolist(),
        "ok": relative <= 1e-2,
    }
    harness.emit({k: v for k, v in record.items() if k not in ("machine", "predictions", "labels")})
    harness.write_result(args.out or harness.results_path(f"gpu_cifar_fixture_{device.type}.json"), record)
    return record


if __name__ == "__main__":
    try:
        sys.exit(0 if main()["ok"] else 1)
    except SmoothcertError as exc:
        sys.exit(f"gpu_cifar_fixture: {exc}")
