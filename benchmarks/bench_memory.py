"""Time ``run_memory`` on synthetic but realistic certificates (d = 64) for 1,000 and 10,000 inputs.

Two workloads of centres, both in [0, 1]⁶⁴:

* ``duplicates``: scikit-learn's 1,797 8×8 digits with small pixel noise (σ = 0.05), so at 10,000 inputs
  every image appears ~5.6 times: close pairs grow quadratically (the hard case);
* ``fresh``: independent draws from a 40-component Gaussian mixture fitted to the digits, as a larger
  test set from the same distribution would be (neighbours get closer as n grows, slowly).

θ is anisotropic around σ (ANCER-like, log-normal per pixel); gaps are Φ⁻¹(p̲A) (ℓ2) or 2(p̲A − ½)
(ℓ1) for p̲A in (½, 0.9999]; 90 % of predictions are right, 5 % abstain. Writes
``benchmarks/results/memory.json``: wall and CPU seconds per run, memory actions, ``close_pairs``
(pairs of different classes whose bounding balls meet, the pairs the sequential pass must look at), and
the growth ratio t(10,000) / t(1,000) (10 for linear time, 100 for quadratic).

Usage: python benchmarks/bench_memory.py [--sizes 1000 10000] [--out benchmarks/results/memory.json]
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import norm as normal
from sklearn.datasets import load_digits

import harness
from smoothcert.engine.regions import candidate_pairs, run_memory


def synthetic(n: int, norm: str, sigma: float, seed: int = 0, workload: str = "duplicates"):
    """A certificate table with centres (n, 64) and θ (n, 64) shaped like a digits run."""
    rng = np.random.default_rng(seed)
    digits = load_digits()
    images = digits.images.reshape(len(digits.images), -1) / 16.0
    if workload == "duplicates":
        pick = rng.integers(0, len(images), n)
        centers = np.clip(images[pick] + rng.normal(0, 0.05, (n, 64)), 0.0, 1.0)
        label = digits.target[pick].astype(np.int64)
    else:
        from sklearn.mixture import GaussianMixture

        mix = GaussianMixture(n_components=40, covariance_type="full", random_state=0).fit(images)
        mix.random_state = seed
        drawn, comp = mix.sample(n)
        perm = rng.permutation(n)
        centers = np.clip(drawn[perm], 0.0, 1.0)
        # label of a draw: the majority digit of its mixture component
        majority = np.array(
            [np.bincount(digits.target[mix.predict(images) == k], minlength=10).argmax() for k in range(40)]
        )
        label = majority[comp[perm]].astype(np.int64)
    wrong = rng.random(n) < 0.10
    predict = np.where(wrong, (label + rng.integers(1, 10, n)) % 10, label)
    p_lower = 0.5 + 0.4999 * rng.beta(2.0, 1.0, n)
    gap = normal.ppf(p_lower) if norm == "l2" else 2.0 * (p_lower - 0.5)
    abstain = rng.random(n) < 0.05
    predict = np.where(abstain, -1, predict)
    gap = np.where(abstain, 0.0, gap)
    theta = sigma * np.exp(rng.normal(0.0, 0.3, (n, 64)))
    table = pd.DataFrame(
        {
            "idx": np.arange(n),
            "label": label,
            "predict": predict,
            "gap": gap,
            "norm": norm,
            "correct": (predict == label).astype(int),
        }
    )
    return table, centers, theta


def bench(n: int, norm: str, sigma: float, workload: str) -> dict:
    table, centers, theta = synthetic(n, norm, sigma, workload=workload)
    (final, arrays), seconds, cpu = harness.timed(lambda: run_memory(table, centers, theta, norm))
    counts = final["memory"].value_counts().to_dict()
    predict = table["predict"].to_numpy()
    pairs = len(candidate_pairs(centers, theta, np.where(predict >= 0, table["gap"], 0.0), predict, norm)[1])
    return {
        "workload": workload,
        "n": n,
        "norm": norm,
        "sigma": sigma,
        "close_pairs": pairs,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "ms_per_input": round(1000 * seconds / n, 3),
        "recorded": int(len(arrays["idx"])),
        "actions": {k: int(counts.get(k, 0)) for k in ("none", "inside", "shrunk", "abstained")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--out", default=str(harness.results_path("memory.json")))
    args = ap.parse_args()
    runs = []
    for workload in ("duplicates", "fresh"):
        for norm, sigma in (("l2", 0.25), ("l2", 0.5), ("l2", 1.0), ("l1", 0.5), ("l1", 2.0)):
            for n in args.sizes:
                runs.append(bench(n, norm, sigma, workload))
                harness.emit(runs[-1])
    growth, growth_cpu, growth_pairs = {}, {}, {}
    lo, hi = min(args.sizes), max(args.sizes)
    for workload, norm, sigma in sorted({(r["workload"], r["norm"], r["sigma"]) for r in runs}):
        for key, out in (("seconds", growth), ("cpu_seconds", growth_cpu), ("close_pairs", growth_pairs)):
            t = {r["n"]: r[key] for r in runs if (r["workload"], r["norm"], r["sigma"]) == (workload, norm, sigma)}
            out[f"{workload}-{norm}-{sigma:g}"] = round(t[hi] / t[lo], 2) if t[lo] > 0 else None
    harness.write_result(
        args.out,
        {
            "runs": runs,
            "growth_ratio": growth,
            "growth_ratio_cpu": growth_cpu,
            "growth_ratio_close_pairs": growth_pairs,
            "sizes": [lo, hi],
            "d": 64,
            "load_average": harness.load_avg(),
            "machine": harness.machine(),
        },
    )
    print(f"growth ratio t({hi})/t({lo}): wall {growth}, cpu {growth_cpu}")


if __name__ == "__main__":
    main()
