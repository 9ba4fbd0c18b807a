"""Time ``run_memory`` on synthetic but realistic certificates (d = 64) for 1,000 and 10,000 inputs.

Centres are scikit-learn 8×8 digits (pixels in [0, 1]) with small pixel noise, so neighbours are as close
as in the real test set; θ is anisotropic around σ = 0.25 / 0.5 (ANCER-like, log-normal per pixel); gaps
are Φ⁻¹(p̲A) (ℓ2) or 2(p̲A − ½) (ℓ1) for p̲A in (½, 0.9999]; 90 % of predictions are right, 5 % abstain.
Writes ``benchmarks/results/memory.json``: wall and CPU seconds per run, memory actions, and the growth
ratio t(10,000) / t(1,000) (10 for linear time, 100 for quadratic; CPU time is the steadier figure on a
shared machine).

Usage: python benchmarks/bench_memory.py [--sizes 1000 10000] [--out benchmarks/results/memory.json]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import norm as normal
from sklearn.datasets import load_digits

from smoothcert.io import write_json
from smoothcert.memory import run_memory


def synthetic(n: int, norm: str, sigma: float, seed: int = 0):
    """A certificate table with centres (n, 64) and θ (n, 64) shaped like a digits run."""
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = digits.images.reshape(len(digits.images), -1) / 16.0
    pick = rng.integers(0, len(images), n)
    centers = np.clip(images[pick] + rng.normal(0, 0.05, (n, 64)), 0.0, 1.0)
    label = digits.target[pick].astype(np.int64)
    wrong = rng.random(n) < 0.10
    predict = np.where(wrong, (label + rng.integers(1, 10, n)) % 10, label)
    p_lower = 0.5 + 0.4999 * rng.beta(2.0, 1.0, n)
    gap = normal.ppf(p_lower) if norm == "l2" else 2.0 * (p_lower - 0.5)
    abstain = rng.random(n) < 0.05
    predict = np.where(abstain, -1, predict)
    gap = np.where(abstain, 0.0, gap)
    theta = sigma * np.exp(rng.normal(0.0, 0.3, (n, 64)))
    table = pd.DataFrame({"idx": np.arange(n), "label": label, "predict": predict, "gap": gap, "norm": norm,
                          "correct": (predict == label).astype(int)})
    return table, centers, theta


def bench(n: int, norm: str, sigma: float) -> dict:
    table, centers, theta = synthetic(n, norm, sigma)
    t0, c0 = time.perf_counter(), time.process_time()
    final, arrays = run_memory(table, centers, theta, norm)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    counts = final["memory"].value_counts().to_dict()
    return {"n": n, "norm": norm, "sigma": sigma, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "ms_per_input": round(1000 * seconds / n, 3), "recorded": int(len(arrays["idx"])),
            "actions": {k: int(counts.get(k, 0)) for k in ("none", "inside", "shrunk", "abstained")}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "memory.json"))
    args = ap.parse_args()
    runs = []
    for norm, sigma in (("l2", 0.25), ("l2", 0.5), ("l2", 1.0), ("l1", 0.5), ("l1", 2.0)):
        for n in args.sizes:
            runs.append(bench(n, norm, sigma))
            print(runs[-1], flush=True)
    growth, growth_cpu = {}, {}
    lo, hi = min(args.sizes), max(args.sizes)
    for norm, sigma in sorted({(r["norm"], r["sigma"]) for r in runs}):
        for key, out in (("seconds", growth), ("cpu_seconds", growth_cpu)):
            t = {r["n"]: r[key] for r in runs if r["norm"] == norm and r["sigma"] == sigma}
            out[f"{norm}-{sigma:g}"] = round(t[hi] / t[lo], 2) if t[lo] > 0 else None
    write_json(args.out, {"runs": runs, "growth_ratio": growth, "growth_ratio_cpu": growth_cpu,
                          "sizes": [lo, hi], "d": 64, "load_average": list(os.getloadavg()),
                          "machine": {"python": platform.python_version(), "processor": platform.processor(),
                                      "cpus": os.cpu_count()}})
    print(f"growth ratio t({hi})/t({lo}): wall {growth}, cpu {growth_cpu}")


if __name__ == "__main__":
    main()
