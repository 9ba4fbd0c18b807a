"""Certification throughput: how close ``esampling.count_classes`` runs to the speed of the base classifier.

Writes ``benchmarks/results/certify_<device>.json``, every section measured in one run, interleaved (each
repeat times every variant once, in rotating order) so that load from other processes hits all variants alike;
figures are medians over repeats, ratios are medians of the per-repeat ratios.

* ``efficiency``: base-classifier evaluations/s inside ``count_classes`` (the pipeline's path) divided by
  evaluations/s of plain batched forward passes of the same model, same batch size, on pre-made tensors
  under ``torch.inference_mode`` (the ceiling), for the digits CNN and ResNet-20, with 1 and 2 threads.
* ``smooth_certify``: the same ratio for ``Smooth.certify`` (one input per call, n0 + n draws, Cohen et
  al.'s interface), the model in torch's default layout and as the pipeline prepares it.
* ``batched_vs_single``: CERTIFY over test inputs of the digits CNN trained by the pipeline's ``train``
  (``training.loop``), batched as ``certify.certify_shard`` does vs one input at a time through
  ``Smooth.certify``, same n0, n, alpha: the speed ratio and whether the radii agree statistically.
* channels-last forward, batch-size sweep, glibc allocator settings and ``torch.compile`` (in a subprocess
  with a time limit, since inductor compiles C++ on CPU). The engine's choices are options of the engine
  or of the config (``channels_last``, ``batch_size``, threads), measured here through the engine itself.

Usage: python benchmarks/bench_certify.py [--device cpu|cuda] [--repeats 7] [--quick] [--no-compile]
                                          [--skip-resnet] [--out PATH]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy import stats as sps
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import best, cpu_flags, interleaved, machine, rate, ratio, sync, threads  # noqa: E402
from harness import load_avg as load  # noqa: E402
from smoothcert.artifacts import write_json
from smoothcert.engine import certificates as ecertificates  # noqa: E402
from smoothcert.engine import certify as ecertify
from smoothcert.engine import sampling as esampling
from smoothcert.engine import smooth as esmooth
from smoothcert.engine.noise import stream_seed
from smoothcert.training import models

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
ARCHS = {
    "digits_cnn": dict(args=("digits_cnn", 1, 10, 8, [0.3], [0.4]), shape=(1, 8, 8)),
    "cifar_resnet20": dict(
        args=("cifar_resnet20", 3, 10, 32, [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]), shape=(3, 32, 32)
    ),
}
GOALS = {"digits_cnn": 0.95, "cifar_resnet20": 0.90}


# --------------------------------------------------------------------------------------------- helpers


def build(arch: str, device: torch.device, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build_model(*ARCHS[arch]["args"]).to(device).eval()


def forward_passes(model: nn.Module, batch: torch.Tensor, passes: int):
    """A function running ``passes`` plain forward passes of ``batch`` under ``torch.inference_mode``."""

    def f():
        with torch.inference_mode():
            for _ in range(passes):
                model(batch)

    return f


def inputs(arch: str, b: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    x = torch.rand(b, *ARCHS[arch]["shape"], generator=torch.Generator().manual_seed(seed)).to(device)
    return x, [stream_seed(seed, i, "estimate") for i in range(b)]


# ----------------------------------------------------------------------------------------- sections
def efficiency(
    arch: str,
    b: int,
    n: int,
    batch_size: int,
    chunk: int,
    repeats: int,
    device: torch.device,
    n_threads: int | None,
    workload: str = "estimate",
) -> dict:
    model = build(arch, device)
    x, seeds = inputs(arch, b, device)
    sampling = esampling.Sampling(batch_size=batch_size, chunk=chunk, device=device)
    evals = b * n
    passes = -(-evals // batch_size)
    pre = torch.rand(batch_size, *ARCHS[arch]["shape"], generator=torch.Generator().manual_seed(1)).to(device)
    last = evals - (passes - 1) * batch_size

    def forward():
        with torch.inference_mode():
            for k in range(passes):
                model(pre if k < passes - 1 else pre[:last])

    prepared = models.prepare_for_inference(copy.deepcopy(model))  # as load_model prepares it (channels_last: true)

    def forward_prepared():
        with torch.inference_mode():
            for k in range(passes):
                prepared(pre if k < passes - 1 else pre[:last])

    fns = {
        "forward": forward,
        "count_classes": lambda: esampling.count_classes(model, x, 0.25, n, 10, seeds, sampling),
        "forward_prepared": forward_prepared,
        "count_classes_prepared": lambda: esampling.count_classes(prepared, x, 0.25, n, 10, seeds, sampling),
    }
    with threads(n_threads):
        used = torch.get_num_threads()
        mode = esampling.noise_threads() if device.type == "cpu" else None
        times = interleaved(fns, repeats, device)
    eff, eff_cpu = ratio(times, "count_classes", "forward"), ratio(times, "count_classes@cpu", "forward@cpu")
    row = {
        "model": arch,
        "workload": workload,
        "threads": used,
        "noise_threads": mode,
        **cpu_flags(),
        "inputs": b,
        "n": n,
        "batch_size": batch_size,
        "chunk": chunk,
        "evals": evals,
        "forward_passes": passes,
        "repeats": repeats,
        "forward_evals_per_s": rate(evals, times["forward"]),
        "certify_evals_per_s": rate(evals, times["count_classes"]),
        "efficiency": eff["median"],
        "efficiency_range": [eff["min"], eff["max"]],
        "efficiency_best": best(times, "count_classes", "forward"),
        "efficiency_cpu_time": eff_cpu["median"],
        "efficiency_cpu_time_range": [eff_cpu["min"], eff_cpu["max"]],
        "goal": GOALS[arch],
        "meets_goal": bool(eff["median"] >= GOALS[arch]),
        "load_avg": load(),
    }
    prep = ratio(times, "count_classes_prepared", "forward_prepared")
    row.update(
        {  # the same with the model as the pipeline prepares it (channels-last, even pools)
            "prepared_forward_evals_per_s": rate(evals, times["forward_prepared"]),
            "prepared_certify_evals_per_s": rate(evals, times["count_classes_prepared"]),
            "efficiency_prepared": prep["median"],
            "efficiency_prepared_range": [prep["min"], prep["max"]],
            "efficiency_prepared_cpu_time": ratio(times, "count_classes_prepared@cpu", "forward_prepared@cpu")[
                "median"
            ],
            "prepared_speedup": ratio(times, "count_classes_prepared", "count_classes")["median"],
            "meets_goal_prepared": bool(prep["median"] >= GOALS[arch]),
        }
    )
    print(json.dumps(row), flush=True)
    return row


def channels_last_forward(arch: str, batch_size: int, repeats: int, device: torch.device) -> dict:
    """Plain forward throughput, contiguous vs channels-last (weights and input)."""
    model = build(arch, device)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    pre = torch.rand(batch_size, *ARCHS[arch]["shape"]).to(device)
    pre_cl = pre.contiguous(memory_format=torch.channels_last)

    def run(m, t):
        def f():
            with torch.inference_mode():
                m(t)

        return f

    times = interleaved({"contiguous": run(model, pre), "channels_last": run(cl, pre_cl)}, repeats, device)
    row = {
        "model": arch,
        "batch_size": batch_size,
        "contiguous_evals_per_s": rate(batch_size, times["contiguous"]),
        "channels_last_evals_per_s": rate(batch_size, times["channels_last"]),
        "speed_channels_last_vs_contiguous": ratio(times, "channels_last", "contiguous")["median"],
        "speed_channels_last_vs_contiguous_cpu_time": ratio(times, "channels_last@cpu", "contiguous@cpu")["median"],
    }
    print(json.dumps(row), flush=True)
    return row


def batch_sweep(arch: str, sizes: list[int], evals: int, chunk: int, repeats: int, device: torch.device) -> dict:
    """Forward and count_classes throughput against the forward batch size (same total evaluations)."""
    model = build(arch, device)
    shape = ARCHS[arch]["shape"]
    pre = torch.rand(max(sizes), *shape).to(device)
    b = 4
    x, seeds = inputs(arch, b, device)
    n = evals // b
    fns = {}
    for bs in sizes:

        def fwd(bs=bs):
            with torch.inference_mode():
                for _ in range(evals // bs):
                    model(pre[:bs])

        fns[f"forward/{bs}"] = fwd
        sampling = esampling.Sampling(batch_size=bs, chunk=min(chunk, bs), device=device)
        fns[f"count_classes/{bs}"] = lambda sampling=sampling: esampling.count_classes(
            model, x, 0.25, n, 10, seeds, sampling
        )
    times = interleaved(fns, repeats, device)
    rows = [
        {
            "batch_size": bs,
            "forward_evals_per_s": rate(evals - evals % bs, times[f"forward/{bs}"]),
            "count_classes_evals_per_s": rate(b * n, times[f"count_classes/{bs}"]),
            "forward_evals_per_cpu_s": rate(evals - evals % bs, times[f"forward/{bs}@cpu"]),
            "count_classes_evals_per_cpu_s": rate(b * n, times[f"count_classes/{bs}@cpu"]),
        }
        for bs in sizes
    ]
    out = {
        "model": arch,
        "threads": torch.get_num_threads(),
        "evals": evals,
        "rows": rows,
        "best_batch_size_cpu_time": max(rows, key=lambda r: r["count_classes_evals_per_cpu_s"])["batch_size"],
    }
    print(json.dumps(out), flush=True)
    return out


def trained_digits(epochs: int, device: torch.device):
    """The digits CNN trained with Gaussian noise (σ = 0.25) by the pipeline's own ``train`` command
    (``training.loop``, in ``benchmarks/work/digits``, reused when present); returns (model, x_test, y_test)."""
    from harness import trained_workspace
    from smoothcert import data as data_mod

    work = REPO / "benchmarks" / "work" / "digits"
    cfg, data = trained_workspace(work, "digits", "digits_cnn", epochs, [0.25], None)
    x, y = data_mod.load_split(data, "test", "digits")
    model = models.load_model(cfg, work / "models" / "gaussian-fixed-l2-0.25" / "model.pt", device).eval()
    return model, x.to(device), y.numpy()


def smooth_efficiency(sizes: tuple, repeats: int, device: torch.device, n_threads: int | None) -> dict:
    """``Smooth.certify`` (one input per call, n0 + n draws, Cohen et al.'s interface) against the plain batched
    forward of the same model at the same batch size: evaluations per second, interleaved, in one process; the
    digits CNN in torch's default layout and as the pipeline prepares it."""
    b, n0, n, batch_size = sizes
    model = build("digits_cnn", device)
    prepared = models.prepare_for_inference(copy.deepcopy(model))
    x, _ = inputs("digits_cnn", b, device)
    evals = b * (n0 + n)
    passes = -(-evals // batch_size)
    pre = torch.rand(batch_size, *ARCHS["digits_cnn"]["shape"], generator=torch.Generator().manual_seed(1)).to(device)

    def forward(m):
        return forward_passes(m, pre, passes)

    def certify(m):
        smooth = esmooth.Smooth(m, 10, 0.25, seed=0, device=device)
        return lambda: [smooth.certify(x[i], n0, n, 0.001, batch_size) for i in range(b)]

    fns = {
        "forward": forward(model),
        "smooth": certify(model),
        "forward_p": forward(prepared),
        "smooth_p": certify(prepared),
    }
    with threads(n_threads):
        used = torch.get_num_threads()
        mode = esampling.noise_threads() if device.type == "cpu" else None
        times = interleaved(fns, repeats, device)
    f_evals = passes * batch_size
    row = {"model": "digits_cnn", "threads": used, "noise_threads": mode, **cpu_flags(), "inputs": b, "n0": n0}
    row.update(n=n, batch_size=batch_size, repeats=repeats)
    for tag, fw, sm in (("default_layout", "forward", "smooth"), ("prepared", "forward_p", "smooth_p")):
        per = [(evals / ts) / (f_evals / tf) for ts, tf in zip(times[sm], times[fw])]
        cpu = [(evals / ts) / (f_evals / tf) for ts, tf in zip(times[sm + "@cpu"], times[fw + "@cpu"])]
        row[tag] = {
            "forward_evals_per_s": rate(f_evals, times[fw]),
            "smooth_certify_evals_per_s": rate(evals, times[sm]),
            "efficiency": float(np.median(per)),
            "efficiency_range": [float(min(per)), float(max(per))],
            "efficiency_cpu_time": float(np.median(cpu)),
            "goal": 0.97,
        }
    row["load_avg"] = load()
    print(json.dumps(row), flush=True)
    return row


def batched_vs_single(
    trained,
    num_inputs: int,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    chunk: int,
    sigma: float,
    device: torch.device,
    epochs: int,
    repeats: int,
    threads_used: int,
) -> dict:
    model, xt, yt = trained
    xt, yt = xt[:num_inputs], yt[:num_inputs]
    sampling = esampling.Sampling(batch_size=batch_size, chunk=chunk, device=device)
    group = max(1, batch_size // min(chunk, n))  # as certify.certify_shard groups inputs

    def batched(g):
        pred, radius = [], []
        for k in range(0, len(xt), g):
            idx = range(k, min(len(xt), k + g))
            out = ecertify.certify_batch(
                model,
                xt[k : k + g],
                sigma,
                10,
                n0,
                n,
                alpha,
                "l2",
                [stream_seed(0, i, "select") for i in idx],
                [stream_seed(0, i, "estimate") for i in idx],
                sampling,
            )
            pred.append(out["predict"])
            radius.append(np.where(out["predict"] != ecertificates.ABSTAIN, sigma * out["gap"], 0.0))
        return np.concatenate(pred), np.concatenate(radius)

    def single():
        smooth = esmooth.Smooth(model, 10, sigma, seed=1, device=device)
        res = [smooth.certify(xt[i], n0, n, alpha, batch_size) for i in range(len(xt))]
        return np.array([r[0] for r in res]), np.array([r[1] for r in res])

    runs = {}
    fns = {
        "batched_shard_groups": lambda: batched(group),
        "single": single,
        "batched_one_call": lambda: batched(len(xt)),
    }

    def keep(name):  # every repeat gives the same certificates (fixed seeds): keep the last
        def f():
            pred, radius = fns[name]()
            runs[name] = {"predict": pred, "radius": radius}

        return f

    times = interleaved({name: keep(name) for name in fns}, repeats, device, warmup=0)
    for name in fns:
        runs[name]["seconds"] = float(np.median(times[name]))
    a, s = runs["batched_shard_groups"], runs["single"]
    diff = a["radius"] - s["radius"]
    ks = sps.ks_2samp(a["radius"], s["radius"])

    def summary(r):
        correct = r["predict"] == yt
        return {
            "seconds": round(r["seconds"], 3),
            "inputs_per_s": round(len(yt) / r["seconds"], 3),
            "evals_per_s": round(len(yt) * (n0 + n) / r["seconds"], 1),
            "mean_radius": round(float(r["radius"].mean()), 5),
            "abstain_rate": round(float((r["predict"] == ecertificates.ABSTAIN).mean()), 4),
            "certified_accuracy": {
                f"{t:g}": round(float((correct & (r["radius"] >= t)).mean()), 4) for t in (0.0, 0.25, 0.5, 0.75)
            },
        }

    out = {
        "inputs": len(yt),
        "n0": n0,
        "n": n,
        "alpha": alpha,
        "sigma": sigma,
        "batch_size": batch_size,
        "chunk": chunk,
        "inputs_per_certify_batch": group,
        "train_epochs": epochs,
        "repeats": repeats,
        "threads": threads_used,
        **{name: summary(r) for name, r in runs.items()},
        "speedup_batched_vs_single": ratio(times, "batched_shard_groups", "single")["median"],
        "speedup_one_call_vs_single": ratio(times, "batched_one_call", "single")["median"],
        "radius_agreement": {
            "mean_paired_difference": round(float(diff.mean()), 5),
            "paired_difference_se": round(float(diff.std(ddof=1) / np.sqrt(len(diff))), 5),
            "z": round(float(diff.mean() / max(diff.std(ddof=1) / np.sqrt(len(diff)), 1e-12)), 3),
            "ks_statistic": round(float(ks.statistic), 4),
            "ks_pvalue": round(float(ks.pvalue), 4),
            "prediction_agreement": round(float((a["predict"] == s["predict"]).mean()), 4),
            "same_seeds_batched_equal": bool(np.array_equal(a["radius"], runs["batched_one_call"]["radius"])),
        },
    }
    print(json.dumps({k: v for k, v in out.items() if k not in ("single", "batched_shard_groups")}), flush=True)
    return out


def compile_worker(
    arch: str, b: int, n: int, batch_size: int, chunk: int, repeats: int, device: str, n_threads: int | None = None
) -> dict:
    """Run inside a subprocess: torch.compile the model, time eager vs compiled forward and count_classes."""
    if n_threads:
        torch.set_num_threads(n_threads)
    dev = torch.device(device)
    model = build(arch, dev)
    x, seeds = inputs(arch, b, dev)
    sampling = esampling.Sampling(batch_size=batch_size, chunk=chunk, device=dev)
    pre = torch.rand(batch_size, *ARCHS[arch]["shape"]).to(dev)
    t0 = time.perf_counter()
    compiled = torch.compile(model, dynamic=False)
    with torch.inference_mode():
        compiled(pre)
    sync(dev)
    compile_s = time.perf_counter() - t0
    passes = b * n // batch_size

    def fwd(m):
        return forward_passes(m, pre, passes)

    times = interleaved(
        {
            "eager_forward": fwd(model),
            "compiled_forward": fwd(compiled),
            "eager_count_classes": lambda: esampling.count_classes(model, x, 0.25, n, 10, seeds, sampling),
            "compiled_count_classes": lambda: esampling.count_classes(compiled, x, 0.25, n, 10, seeds, sampling),
        },
        repeats,
        dev,
    )
    evals = passes * batch_size
    same = np.array_equal(
        esampling.count_classes(model, x, 0.25, n, 10, seeds, sampling),
        esampling.count_classes(compiled, x, 0.25, n, 10, seeds, sampling),
    )
    return {
        "model": arch,
        "threads": torch.get_num_threads(),
        "compile_seconds": round(compile_s, 1),
        "batch_size": batch_size,
        "evals": evals,
        **{f"{k}_evals_per_s": rate(evals, v) for k, v in times.items() if not k.endswith("@cpu")},
        "speed_compiled_vs_eager_forward": ratio(times, "compiled_forward", "eager_forward")["median"],
        "speed_compiled_vs_eager_count_classes": ratio(times, "compiled_count_classes", "eager_count_classes")[
            "median"
        ],
        "efficiency_compiled": ratio(times, "compiled_count_classes", "compiled_forward")["median"],
        "efficiency_compiled_cpu_time": ratio(times, "compiled_count_classes@cpu", "compiled_forward@cpu")["median"],
        "speed_compiled_vs_eager_forward_cpu_time": ratio(times, "compiled_forward@cpu", "eager_forward@cpu")["median"],
        "counts_equal_eager": bool(same),
        "break_even_evals": None,
    }


def compile_section(
    arch: str,
    b: int,
    n: int,
    batch_size: int,
    chunk: int,
    repeats: int,
    device: torch.device,
    timeout: int,
    n_threads: int | None,
) -> dict:
    spec = [arch, b, n, batch_size, chunk, repeats, str(device), n_threads]
    cmd = [sys.executable, __file__, "--compile-worker", json.dumps(spec)]
    t0 = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="inductor-")  # a cold cache: compile_seconds is a first compile
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        )
    except subprocess.TimeoutExpired:
        return {"model": arch, "available": False, "reason": f"did not finish within {timeout} s (compile + timing)"}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"model": arch, "available": False, "reason": " | ".join(tail)[-500:]}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row.update(available=True, wall_seconds=round(time.perf_counter() - t0, 1))
    # evaluations after which compiling pays: compile_s / (1/eager_rate - 1/compiled_rate)
    e, c = row["eager_count_classes_evals_per_s"], row["compiled_count_classes_evals_per_s"]
    row["break_even_evals"] = int(row["compile_seconds"] / (1 / e - 1 / c)) if c > e else None
    print(json.dumps(row), flush=True)
    return row


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def malloc_worker(arch: str, b: int, n: int, batch_size: int, chunk: int, repeats: int, n_threads: int | None) -> dict:
    """Run inside a subprocess (with or without MALLOC_ENV): forward and count_classes evals/s."""
    if n_threads:
        torch.set_num_threads(n_threads)
    dev = torch.device("cpu")
    model = build(arch, dev)
    x, seeds = inputs(arch, b, dev)
    sampling = esampling.Sampling(batch_size=batch_size, chunk=chunk, device=dev)
    pre = torch.rand(batch_size, *ARCHS[arch]["shape"])
    passes = b * n // batch_size

    def fwd():
        with torch.inference_mode():
            for _ in range(passes):
                model(pre)

    times = interleaved(
        {"forward": fwd, "count_classes": lambda: esampling.count_classes(model, x, 0.25, n, 10, seeds, sampling)},
        repeats,
        dev,
    )
    return {
        "forward": rate(passes * batch_size, times["forward"]),
        "count_classes": rate(b * n, times["count_classes"]),
    }


def malloc_section(
    arch: str, b: int, n: int, batch_sizes: list[int], chunk: int, repeats: int, rounds: int, n_threads: int | None
) -> dict:
    """glibc malloc returning large activation buffers to the OS (page faults on every forward pass) vs keeping them.

    Alternates processes with the default allocator settings and with MALLOC_ENV ``rounds`` times per batch size.
    """
    rows = []
    for bs in batch_sizes:
        got = {"default": [], "malloc_env": []}
        for _ in range(rounds):
            for name, extra in (("default", {}), ("malloc_env", MALLOC_ENV)):
                spec = json.dumps([arch, max(b, 2 * bs // n), n, bs, min(chunk, bs), repeats, n_threads])
                proc = subprocess.run(
                    [sys.executable, __file__, "--malloc-worker", spec],
                    capture_output=True,
                    text=True,
                    env={**os.environ, **extra},
                    timeout=900,
                )
                if proc.returncode == 0:
                    got[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if not got["default"] or not got["malloc_env"]:
            continue
        med = {
            name: {k: float(np.median([r[k] for r in v])) for k in ("forward", "count_classes")}
            for name, v in got.items()
        }
        rows.append(
            {
                "batch_size": bs,
                "default_forward_evals_per_s": round(med["default"]["forward"], 1),
                "malloc_env_forward_evals_per_s": round(med["malloc_env"]["forward"], 1),
                "default_count_classes_evals_per_s": round(med["default"]["count_classes"], 1),
                "malloc_env_count_classes_evals_per_s": round(med["malloc_env"]["count_classes"], 1),
                "speed_malloc_env_vs_default_count_classes": round(
                    med["malloc_env"]["count_classes"] / med["default"]["count_classes"], 4
                ),
            }
        )
    out = {"model": arch, "env": MALLOC_ENV, "rounds": rounds, "threads": n_threads, "rows": rows}
    print(json.dumps(out), flush=True)
    return out


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test of the script")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    ap.add_argument("--skip-resnet", action="store_true", help="skip ResNet-20 (slow on CPU)")
    ap.add_argument("--compile-timeout", type=int, default=900)
    ap.add_argument(
        "--section-threads",
        type=int,
        default=None,
        help="torch threads for the sections after efficiency (default on CPU: 1, the least disturbed by other load)",
    )
    ap.add_argument("--out", default=None)
    ap.add_argument("--compile-worker", help=argparse.SUPPRESS)
    ap.add_argument("--malloc-worker", help=argparse.SUPPRESS)
    ap.add_argument("--no-malloc", action="store_true", help="skip the glibc malloc settings section")
    ap.add_argument(
        "--efficiency-only",
        action="store_true",
        help="only the efficiency section (default out: results/certify_efficiency_<device>.json)",
    )
    args = ap.parse_args()
    if args.compile_worker:
        print(json.dumps(compile_worker(*json.loads(args.compile_worker))))
        return
    if args.malloc_worker:
        print(json.dumps(malloc_worker(*json.loads(args.malloc_worker))))
        return
    device = torch.device(args.device)
    out_path = (
        Path(args.out)
        if args.out
        else RESULTS
        / (f"certify_efficiency_{device.type}.json" if args.efficiency_only else f"certify_{device.type}.json")
    )
    q = args.quick
    reps = 2 if q else args.repeats
    gpu = device.type == "cuda"
    # (inputs, n, batch_size, chunk): digits at the params.yaml defaults; ResNet-20 smaller on CPU.
    cc = yaml.safe_load((REPO / "params.yaml").read_text())["certify"]  # digits at the configured sizes
    n0, n, bs, chunk = cc["n0"], cc["n"], cc["batch_size"], cc["chunk"]
    # enough inputs for 16 (estimate) / 8 (select) full forward passes per timing: ~0.5 s on a CPU core
    digits = (2, 1000, 1000, 500) if q else (max(2, 16 * bs // n), n, bs, chunk)
    select = (10, 100, 1000, 100) if q else (max(1, 8 * bs // n0), n0, bs, min(chunk, n0))
    resnet = (2, 100, 100, 100) if q else ((16, 10_000, 1000, 1000) if gpu else (2, 200, 200, 200))
    # Smooth.certify one input per call, Cohen et al.'s way: (inputs, n0, n, batch_size)
    smooth = (1, n0, 1000, 500) if q else (2, n0, 10_000, 1000)
    t_start = time.perf_counter()
    result = {
        "machine": machine(),
        "device": str(device),
        "load_avg_start": load(),
        "certify_params": cc,
        "method": "interleaved repeats; medians of times and of per-repeat ratios",
        "efficiency": [],
        "smooth_certify": [],
        "channels_last_forward": [],
    }
    thread_settings = [None] if gpu else sorted({1, torch.get_num_threads()}, reverse=True)
    for nt in thread_settings:
        result["efficiency"].append(efficiency("digits_cnn", *digits, 2 * reps, device, nt))
        result["efficiency"].append(efficiency("digits_cnn", *select, 2 * reps, device, nt, workload="select"))
        result["smooth_certify"].append(smooth_efficiency(smooth, 2 * reps, device, nt))
        if not args.skip_resnet:
            result["efficiency"].append(efficiency("cifar_resnet20", *resnet, reps, device, nt))
    if args.efficiency_only:
        result["load_avg_end"] = load()
        result["total_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out_path, result)
        print(f"wrote {out_path}")
        return
    epochs = 2 if q else 20
    trained = trained_digits(epochs, device)
    ab_threads = args.section_threads or (None if gpu else 1)
    # at the configured batch size, and (CPU) at 1000 rows, where the digits CNN runs fastest per row
    with threads(ab_threads):
        result["batched_vs_single"] = [
            batched_vs_single(
                trained,
                num_inputs=10 if q else 100,
                n0=100 if q else n0,
                n=200 if q else n,
                alpha=0.001 if q else cc["alpha"],
                batch_size=size,
                chunk=min(digits[3], size),
                sigma=0.25,
                device=device,
                epochs=epochs,
                repeats=max(3, reps // 2),
                threads_used=torch.get_num_threads(),
            )
            for size in ([digits[2]] if gpu or digits[2] == 1000 else [digits[2], 1000])
        ]
    result["section_threads"] = ab_threads or torch.get_num_threads()
    with threads(ab_threads):
        result["channels_last_forward"].append(channels_last_forward("digits_cnn", digits[2], reps, device))
    if not args.skip_resnet:
        with threads(ab_threads):
            result["channels_last_forward"].append(
                channels_last_forward("cifar_resnet20", resnet[2], max(3, reps // 2), device)
            )
    with threads(ab_threads):
        result["batch_size_sweep"] = [
            batch_sweep(
                "digits_cnn",
                [100, 250, 500, 1000, 2000, 4000, 8000] if not q else [100, 1000],
                8000 if not q else 1000,
                1000,
                reps,
                device,
            )
        ]
        if not args.skip_resnet:
            result["batch_size_sweep"].append(
                batch_sweep(
                    "cifar_resnet20",
                    [25, 50, 100, 200, 400] if not q else [25, 50],
                    800 if not q else 100,
                    1000,
                    max(3, reps // 2),
                    device,
                )
            )
    if not args.no_malloc and not gpu and sys.platform.startswith("linux"):
        result["malloc"] = malloc_section(
            "digits_cnn",
            2,
            digits[1],
            [digits[2], 2 * digits[2]] if not q else [1000],
            digits[3],
            3 if q else reps,
            2 if q else 3,
            ab_threads,
        )
    if not args.no_compile:
        result["compile"] = [compile_section("digits_cnn", *digits, reps, device, args.compile_timeout, ab_threads)]
    result["load_avg_end"] = load()
    result["total_seconds"] = round(time.perf_counter() - t_start, 1)
    write_json(out_path, result)
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
