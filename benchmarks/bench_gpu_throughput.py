"""Certification throughput (Cohen CERTIFY through ``engine.certify.certify_batch``) on CUDA, or on the CPU.

Two sections, untrained models on random inputs (throughput does not depend on the weights), one
warm-up call per setting not timed, best of repeats:

* ``results`` — the batch-size table: ``digits_cnn`` (1×8×8), ``cifar_resnet20`` and ``cifar_resnet110``
  (3×32×32) at a few forward batch sizes, float32 and autocast (CUDA): inputs/s, base-classifier
  evaluations/s and, on CUDA, the peak GPU memory of the call — how far the batch size can grow with
  the GPU's memory (docs/cluster.md).
* ``per_image`` — seconds per CIFAR-10 image for ResNet-110 at N = ``--image-n`` (100,000, Cohen et
  al.'s setting; n0 = 100), float32 and autocast, at the fastest batch size of the table (or
  ``--image-batch``), against the goal of :data:`GOAL_S_PER_IMAGE` on an H100.

"float32" keeps torch's defaults (cuDNN convolutions may use TF32 tensor cores: the flags are recorded);
"autocast" is ``torch.autocast`` at its CUDA default, float16 (``Sampling.amp``). On a machine without
a GPU it still runs (small N, few inputs) and records ``device: cpu``.

Writes ``benchmarks/results/gpu_throughput_<device>.json`` (device = cuda or cpu), or ``--out``.

Usage: python benchmarks/bench_gpu_throughput.py [--device auto|cpu|cuda] [--n N] [--inputs K]
       [--batch-sizes 1000 4000] [--archs ...] [--image-n 100000] [--image-inputs 2] [--image-batch B]
       [--repeats R] [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse

import torch

import harness
from smoothcert import data as data_mod
from smoothcert.engine.certify import certify_batch
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling
from smoothcert.training.models import build_model

WORKLOADS = {"digits_cnn": "digits", "cifar_resnet20": "cifar10", "cifar_resnet110": "cifar10"}
IMAGE_ARCH = "cifar_resnet110"
GOAL_S_PER_IMAGE = 0.5  # ResNet-110, N = 100,000, on one H100 (issue 27; locuslab: 15 s on an RTX 2080 Ti)


def bench_one(
    arch: str,
    dataset: str,
    device: torch.device,
    n: int,
    n0: int,
    inputs: int,
    batch_size: int,
    amp: bool,
    repeats: int,
) -> dict:
    meta = data_mod.info(dataset)
    model = build_model(arch, meta.channels, meta.num_classes, meta.size, list(meta.mean), list(meta.std))
    model = model.to(device).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(inputs, meta.channels, meta.size, meta.size, generator=gen).to(device)
    sampling = Sampling(kind="gaussian", batch_size=batch_size, chunk=min(batch_size, n), device=device, amp=amp)
    seeds_s = [stream_seed(0, i, "select") for i in range(inputs)]
    seeds_e = [stream_seed(0, i, "estimate") for i in range(inputs)]

    def once() -> float:
        return harness.timed(
            lambda: certify_batch(model, x, 0.25, meta.num_classes, n0, n, 0.001, "l2", seeds_s, seeds_e, sampling),
            device,
        )[1]

    cuda = device.type == "cuda"
    if cuda:  # the peak of this setting alone: the previous settings' cached blocks are given back first
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    once()  # warm-up: cuDNN autotuning, allocator, lazy init
    times = sorted(once() for _ in range(repeats))
    best = times[0]
    row = {
        "arch": arch,
        "input_shape": [meta.channels, meta.size, meta.size],
        "inputs": inputs,
        "n0": n0,
        "n": n,
        "batch_size": batch_size,
        "amp": amp,
        "seconds_best": round(best, 4),
        "seconds_median": round(times[len(times) // 2], 4),
        "inputs_per_s": round(inputs / best, 4),
        "seconds_per_input": round(best / inputs, 4),
        "evals_per_s": round(inputs * (n0 + n) / best, 1),
    }
    if cuda:
        row["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--n", type=int, default=None, help="estimation draws per input (default: 10000 cuda, 500 cpu)")
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--inputs", type=int, default=None, help="inputs per timed call (default: 32 cuda, 2 cpu)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--archs", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--image-n", type=int, default=None, help="N per image (default: 100000 cuda, 1000 cpu; 0: skip)")
    ap.add_argument("--image-inputs", type=int, default=2, help="images per timed call of the per-image section")
    ap.add_argument("--image-batch", type=int, default=None, help="default: the table's fastest for ResNet-110")
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default: 3 cuda, 2 cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    device = harness.pick_device(args.device)
    use_cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10000 if use_cuda else 500)
    inputs = args.inputs or (32 if use_cuda else 2)
    repeats = args.repeats or (3 if use_cuda else 2)
    batch_sizes = args.batch_sizes or ([1000, 4000, 16000, 64000] if use_cuda else [1000, 4000])
    amps = [False, True] if use_cuda else [False]
    image_n = (100_000 if use_cuda else 1000) if args.image_n is None else args.image_n

    results = []
    for arch in args.archs:
        for bs in batch_sizes:
            for amp in amps:
                r = bench_one(arch, WORKLOADS[arch], device, n, args.n0, inputs, bs, amp, repeats)
                harness.emit({"device": device.type, **r})
                results.append(r)

    per_image = []
    if image_n:
        for amp in amps:
            table = [r for r in results if r["arch"] == IMAGE_ARCH and r["amp"] == amp]
            bs = args.image_batch or (max(table, key=lambda r: r["evals_per_s"])["batch_size"] if table else 4000)
            r = bench_one(
                IMAGE_ARCH, WORKLOADS[IMAGE_ARCH], device, image_n, args.n0, args.image_inputs, bs, amp, repeats
            )
            r["goal_seconds_per_input"] = GOAL_S_PER_IMAGE
            r["meets_goal"] = r["seconds_per_input"] <= GOAL_S_PER_IMAGE
            harness.emit({"device": device.type, "per_image": True, **r})
            per_image.append(r)

    info = harness.machine()
    record = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if use_cuda else info["cpu_model"],
        "machine": info,
        "commit": harness.commit(),
        "precision": {
            "float32": f"torch defaults: cudnn.allow_tf32 = {torch.backends.cudnn.allow_tf32}, "
            f"cuda.matmul.allow_tf32 = {torch.backends.cuda.matmul.allow_tf32}",
            "autocast": "torch.autocast(device) at its default dtype (float16 on CUDA, bfloat16 on the CPU)",
        },
        "note": "untrained models on random inputs: throughput only (inputs/s and base-classifier evals/s, "
        "best of repeats after one warm-up; peak_gpu_memory_gib over warm-up and repeats)",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1) if use_cuda else None,
        "results": results,
        "per_image": per_image,
    }
    harness.write_result(args.out or harness.results_path(f"gpu_throughput_{device.type}.json"), record)
    return record


if __name__ == "__main__":
    main()
