"""Certification throughput (Cohen CERTIFY through ``core.certify_batch``) on CUDA, or on the CPU.

Measures inputs certified per second and base-classifier evaluations (noisy draws) per
second for two shapes of work: ``digits_cnn`` on 1×8×8 inputs and ``cifar_resnet20`` on
3×32×32 inputs, untrained (throughput does not depend on the weights), each at a few
forward batch sizes, with and without mixed precision on CUDA. One warm-up call per
setting is not timed. On a machine without a GPU it still runs (small N, few inputs) and
records ``device: cpu``, so the file shows what a CPU gives for comparison.

Writes ``benchmarks/results/gpu_throughput_<device>.json`` (device = cuda or cpu).

Usage: python benchmarks/bench_gpu_throughput.py [--device auto|cpu|cuda] [--n N] [--inputs K]
       [--batch-sizes 1000 4000] [--threads T] [--out PATH]
"""

from __future__ import annotations

import argparse

import torch

import harness
from smoothcert import data as data_mod
from smoothcert.engine import core
from smoothcert.engine.noise import stream_seed
from smoothcert.training.models import build_model

WORKLOADS = [("digits_cnn", "digits"), ("cifar_resnet20", "cifar10")]


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
    sampling = core.Sampling(kind="gaussian", batch_size=batch_size, chunk=min(batch_size, n), device=device, amp=amp)
    seeds_s = [stream_seed(0, i, "select") for i in range(inputs)]
    seeds_e = [stream_seed(0, i, "estimate") for i in range(inputs)]

    def once() -> float:
        return harness.timed(
            lambda: core.certify_batch(
                model, x, 0.25, meta.num_classes, n0, n, 0.001, "l2", seeds_s, seeds_e, sampling
            ),
            device,
        )[1]

    once()  # warm-up: cuDNN autotuning, allocator, lazy init
    times = sorted(once() for _ in range(repeats))
    best = times[0]
    return {
        "arch": arch,
        "input_shape": [meta.channels, meta.size, meta.size],
        "inputs": inputs,
        "n0": n0,
        "n": n,
        "batch_size": batch_size,
        "amp": amp,
        "seconds_best": round(best, 4),
        "seconds_median": round(times[len(times) // 2], 4),
        "inputs_per_s": round(inputs / best, 2),
        "evals_per_s": round(inputs * (n0 + n) / best, 1),
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--n", type=int, default=None, help="estimation draws per input (default: 10000 cuda, 500 cpu)")
    ap.add_argument("--n0", type=int, default=100)
    ap.add_argument("--inputs", type=int, default=None, help="inputs per timed call (default: 32 cuda, 2 cpu)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    ap.add_argument("--repeats", type=int, default=None, help="timed calls per setting (default: 3 cuda, 2 cpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device("cuda" if use_cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.n or (10000 if use_cuda else 500)
    inputs = args.inputs or (32 if use_cuda else 2)
    repeats = args.repeats or (3 if use_cuda else 2)
    batch_sizes = args.batch_sizes or ([4000, 16000, 64000] if use_cuda else [1000, 4000])
    amps = [False, True] if use_cuda else [False]

    results = []
    for arch, dataset in WORKLOADS:
        for bs in batch_sizes:
            for amp in amps:
                r = bench_one(arch, dataset, device, n, args.n0, inputs, bs, amp, repeats)
                harness.emit({"device": device.type, **r})
                results.append(r)

    info = harness.machine()
    record = {
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if use_cuda else info["cpu_model"],
        "machine": info,
        "note": "untrained models on random inputs: throughput only (inputs/s and base-classifier evals/s, "
        "best of repeats after one warm-up)",
        "results": results,
    }
    harness.write_result(args.out or harness.results_path(f"gpu_throughput_{device.type}.json"), record)
    return record


if __name__ == "__main__":
    main()
