"""Models someone already has (issue #21): what reading them costs, on the CPU.

1. **Load and speed**: a locuslab-layout CIFAR ResNet-110 checkpoint (seeded random weights, written by the tests'
   independent fixture module) against the same weights as smoothcert's own ``cifar_resnet110`` ``model.pt``: load
   time, and certification throughput (evaluations per second of ``engine.sampling.count_classes``, channels-last as
   the pipeline runs it, small batches). Both load into one module class, so the speed should agree within noise.
2. **ONNX**: a CIFAR ResNet-20 exported to ONNX (opset 17), run through onnx2torch (as loaded, and channels-last
   as the pipeline prepares it) and through onnxruntime, against the torch original: throughput, and whether the
   class counts (hence the certificates) are identical under the same seed. The pipeline counts with the faster
   route that needs no gradient (``training.model_check.onnx_route``).
3. **Dry run**: ``snakemake -n --configfile config/cifar10_locuslab.yaml`` (and with ``config/sequential.yaml``) in a
   copy of the repository with fixture checkpoints at the config's paths: jobs per rule, and no train job.

    .venv/bin/python benchmarks/bench_pretrained.py [--quick]     # ≈ 3 CPU-minutes; results/pretrained_cpu.json
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import harness

sys.path.insert(0, str(harness.REPO / "tests"))  # the fixture writer shared with the tests (no package code)
from locuslab_fixture import write_locuslab_checkpoint  # noqa: E402
from smoothcert.engine.sampling import Sampling, count_classes  # noqa: E402
from smoothcert.training.models import prepare_for_inference  # noqa: E402
from smoothcert.training.pretrained import load_model_file  # noqa: E402


def counts(model, x, num: int, batch: int, seed: int = 0):
    sampling = Sampling(kind="gaussian", batch_size=batch, chunk=min(num, 500), device="cpu")
    return count_classes(model, x, 0.25, num, 10, [seed + i for i in range(len(x))], sampling)


def load_and_speed(folder: Path, args) -> dict:
    from smoothcert.training.models import load_model

    path = folder / "checkpoint.pth.tar"
    write_locuslab_checkpoint(path, "cifar_resnet110", seed=0)
    ours = load_model_file(path, size=32).module
    torch.save({"epoch": 1, "arch": "cifar_resnet110", "state_dict": ours.state_dict()}, folder / "model.pt")
    cfg = {"data": {"dataset": "cifar10"}, "model": {"arch": "cifar_resnet110"}, "channels_last": True}
    loads = harness.interleaved(
        {
            "locuslab": lambda: load_model_file(path, size=32),
            "smoothcert": lambda: load_model(cfg, folder / "model.pt", "cpu"),
        },
        repeats=args.repeats,
    )
    models = {
        "locuslab": prepare_for_inference(load_model_file(path, size=32).module),
        "smoothcert": load_model(cfg, folder / "model.pt", "cpu"),
    }
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    same = bool(
        (
            counts(models["locuslab"], x, args.draws, args.batch)
            == counts(models["smoothcert"], x, args.draws, args.batch)
        ).all()
    )
    with torch.no_grad():
        speed = harness.interleaved(
            {k: (lambda m=m: counts(m, x, args.draws, args.batch)) for k, m in models.items()}, repeats=args.repeats
        )
    evals = len(x) * args.draws
    out = {
        "model": "cifar_resnet110 (1.7 M parameters, seeded random weights)",
        "load_seconds": {k: round(min(v), 3) for k, v in loads.items() if "@" not in k},
        "evals_per_second": {k: harness.rate(evals, v) for k, v in speed.items() if "@" not in k},
        "speed_ratio_locuslab_over_smoothcert": harness.ratio(speed, "locuslab", "smoothcert"),
        "same_counts": same,
        "draws": args.draws,
        "batch": args.batch,
    }
    harness.emit({"part": "load_and_speed", **out})
    return out


def onnx_routes(folder: Path, args) -> dict:
    ref = write_locuslab_checkpoint(folder / "r20.pth.tar", "cifar_resnet20", seed=1)
    torch.onnx.export(
        ref,
        torch.zeros(1, 3, 32, 32),
        str(folder / "r20.onnx"),
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        dynamic_axes={"x": {0: "batch"}},
    )
    models = {
        "torch": ref,
        "onnx2torch": load_model_file(folder / "r20.onnx").module,
        # as the pipeline runs a torch module with channels_last: true (params.yaml's default)
        "onnx2torch_channels_last": prepare_for_inference(load_model_file(folder / "r20.onnx").module),
        "onnxruntime": load_model_file(folder / "r20.onnx", onnx_route="onnxruntime").module,
    }
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        base = counts(models["torch"], x, args.draws, args.batch)
        same = {k: bool((counts(m, x, args.draws, args.batch) == base).all()) for k, m in models.items()}
        logits = {k: float((m(x) - ref(x)).abs().max()) for k, m in models.items()}
        speed = harness.interleaved(
            {k: (lambda m=m: counts(m, x, args.draws, args.batch)) for k, m in models.items()}, repeats=args.repeats
        )
    evals = len(x) * args.draws
    out = {
        "model": "cifar_resnet20 exported with torch.onnx.export(dynamo=False, opset_version=17)",
        "evals_per_second": {k: harness.rate(evals, v) for k, v in speed.items() if "@" not in k},
        "speed_vs_torch": {k: harness.ratio(speed, k, "torch") for k in models if k != "torch"},
        "same_counts_as_torch": same,
        "max_abs_logit_difference": logits,
    }
    harness.emit({"part": "onnx", **out})
    return out


def dry_run(folder: Path) -> dict:
    import yaml

    root = harness.copy_repo(folder / "repo")
    override = yaml.safe_load((root / "config" / "cifar10_locuslab.yaml").read_text())
    for entry in override["models"]:
        write_locuslab_checkpoint(root / entry["checkpoint"], "cifar_resnet110", seed=int(entry["sigma"] * 100))
    out = {}
    for extra in ([], ["config/sequential.yaml"]):
        cmd = ["snakemake", "-n", "--cores", "1", "--configfile", "config/cifar10_locuslab.yaml", *extra]
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise SystemExit(proc.stderr[-3000:])
        jobs = collections.Counter(
            line.split()[1].rstrip(":")
            for line in (proc.stdout + proc.stderr).splitlines()
            if line.split()[:1] in (["rule"], ["localrule"])
        )
        out["sequential" if extra else "fixed_n"] = {"jobs": dict(jobs), "total": sum(jobs.values())}
    assert all("train" not in v["jobs"] for v in out.values()), out
    harness.emit({"part": "dry_run", **out})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer draws and repeats (a smoke test of the script)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--draws", type=int, default=100, help="noise draws per input (2 inputs)")
    p.add_argument("--batch", type=int, default=100, help="rows per forward pass (small batches)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.quick:
        args.repeats, args.draws = 1, 50
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = {
            "machine": harness.machine(),
            **harness.commit(),
            "load_and_speed": load_and_speed(tmp, args),
            "onnx": onnx_routes(tmp, args),
            "dry_run": dry_run(tmp),
        }
    path = harness.write_result(args.out or harness.results_path("pretrained_cpu.json"), record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
