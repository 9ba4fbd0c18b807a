"""Time the memory step (and, at d = 784, the report) on synthetic but realistic certificates.

Two settings, chosen with ``--d``:

**d = 64** (the default; ``benchmarks/results/memory.json``, as before): ``run_memory`` at 1,000 and 10,000
inputs on two workloads of centres, both in [0, 1]⁶⁴:

* ``duplicates``: scikit-learn's 1,797 8×8 digits with small pixel noise (σ = 0.05), so at 10,000 inputs
  every image appears ~5.6 times: close pairs grow quadratically (the hard case);
* ``fresh``: independent draws from a 40-component Gaussian mixture fitted to the digits, as a larger
  test set from the same distribution would be (neighbours get closer as n grows, slowly).

θ is anisotropic around σ (ANCER-like, log-normal per pixel); gaps are Φ⁻¹(p̲A) (ℓ2) or 2(p̲A − ½)
(ℓ1) for p̲A in (½, 0.9999]; 90 % of predictions are right, 5 % abstain. Writes wall and CPU seconds per
run, memory actions, ``close_pairs`` (pairs of different classes whose bounding balls meet, the pairs the
sequential pass must look at), and the growth ratio t(10,000) / t(1,000) (10 for linear time, 100 for
quadratic).

**d = 784** (``--d 784``; ``benchmarks/results/memory_784.json``; issue #17): 28×28 images at 1,000 and
10,000 inputs. Centres (``--centres``):

* ``fashion`` (default): the first n images of the real Fashion-MNIST test split (10,000 × 784, labels
  as they are), read offline through ``smoothcert.data.prepare`` (the Debian package
  ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist/); so n ≤ 10,000;
* ``digits``: scikit-learn's 8×8 digits upsampled to 28×28 (bilinear) with pixel noise σ = 0.05, drawn
  with replacement (no download at all; any n; duplicates, the hard case above).

Certificates per model (norm, σ), shared by its methods: 90 % right, 5 % abstain, p̲A as above; DDRS σᵢ =
σ·exp(N(0, 0.15²)) per input; ANCER θ per input and pixel = σᵢ·exp(|N(0, 0.3²)|), so θ ≥ σᵢ as ANCER keeps
it (started from, and kept above, the DDRS σ); sequential draws per input n ∈ {1,000 … 64,000}. Steps
(``--steps``), each measured in a fresh process (``spawn``) so that peaks do not mix:

1. ``memory``: the memory step (``smoothcert.pipeline.memory.final_table``) with the ANCER θ (n × 784) for each
   ``--memory-runs`` NORM:σ (default ℓ2 0.25 / 0.5 / 1.0, ℓ1 0.5 / 2.0, as at d = 64);
2. ``report``: a results folder shaped like a pipeline run (``<model_id>/<method>/certify.tsv``,
   ``final.tsv`` for ddrs / ancer, ``theta/<i>-of-<shards>.pt`` written by ``smoothcert.shards.write_theta``
   for ancer, n rows each; ``--report-models`` NORM:σ models × cohen, ddrs, ancer; the test split in
   ``data/test.pt``), then ``build_report`` with plots off (``report_tables``) and on (``report``: every
   figure, the ancer θ figure included). ``final.tsv`` holds a synthetic memory outcome (93 % none, 5 %
   shrunk, 1 % inside, 1 % abstained), not a ``run_memory`` result: the report's cost does not depend on it;
3. ``theta``: the θ figure alone (``theta_panels`` for ancer, which reads the θ files, and ``theta_maps``),
   from the same folder.

Peak memory: ``peak_rss_mb`` is the peak resident set size of the measuring process during the step
(VmHWM of /proc/self/status, reset with ``clear_refs`` 5 just before the step: the kernel counter behind
``resource.getrusage``'s ``ru_maxrss``, which cannot be reset and, after spawn's fork + exec, may carry
the parent's peak); ``rss_before_mb`` the resident set just before (interpreter, libraries, inputs), so
``peak_rss_mb − rss_before_mb`` is what the step itself added. ``rss_method`` says whether the reset
worked (else the peak is that of the whole process). ``--work`` keeps the synthetic folders (default: a
temporary folder, removed at the end).

Usage:
  python benchmarks/bench_memory.py                                   # d = 64: memory.json
  python benchmarks/bench_memory.py --d 784                           # d = 784: memory_784.json
  python benchmarks/bench_memory.py --d 784 --sizes 500 1000 --out /tmp/m.json   # a quick check
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

import harness
from smoothcert.engine import stats
from smoothcert.engine.certificates import MEMORY_ACTIONS
from smoothcert.engine.regions import candidate_pairs
from smoothcert.pipeline.memory import final_table


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
    gap = stats.gap(p_lower, norm)
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
    (final, arrays), seconds, cpu = harness.timed(lambda: final_table(table, centers, theta, norm))
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


# ------------------------------------------------------------------------------------------ d = 784 (28×28)
ACTIONS = MEMORY_ACTIONS  # the memory step's outcomes
METHODS_784 = ("cohen", "ddrs", "ancer")  # the report's experiments per model
MEMORY_METHODS = ("ddrs", "ancer")  # with final.tsv
STEPS = ("memory", "report", "theta")
DATASET_OF = {"fashion": "fashion-mnist", "digits": "mnist5k"}  # the dataset name test.pt is checked as (1×28×28)


def norm_sigma(text: str) -> tuple[str, float]:
    """``"l2:0.5"`` → ("l2", 0.5)."""
    norm, _, sigma = text.partition(":")
    if norm not in ("l2", "l1") or not sigma:
        raise argparse.ArgumentTypeError(f"expected NORM:SIGMA with NORM l2 or l1, got {text!r}")
    return norm, float(sigma)


def prepare_centres(centres: str, n: int, data_dir: Path, seed: int = 0) -> str:
    """Write ``data_dir/test.pt`` (at least ``n`` 1×28×28 images and labels); return the dataset name to load it as."""
    import torch

    from smoothcert import data as data_mod
    from smoothcert.artifacts import save_torch

    if centres == "fashion":
        raw = data_dir.parent / "raw"  # empty: prepare falls back to the Debian package's folder (never downloads)
        summary = data_mod.prepare(
            {
                "dataset": "fashion-mnist",
                "root": str(raw),
                "download": False,
                "verify_checksums": True,
                "train_limit": 100,  # train.pt is not used: keep it small
                "seed": seed,
                "test_fraction": 0.3,
            },
            data_dir,
        )
        if summary["test"] < n:
            raise SystemExit(f"--centres fashion has {summary['test']} test images, fewer than n = {n}")
        return DATASET_OF[centres]
    from scipy.ndimage import zoom

    rng = np.random.default_rng(seed)
    digits = load_digits()
    big = np.stack([zoom(im / 16.0, 28 / 8, order=1) for im in digits.images])  # (1797, 28, 28)
    pick = rng.integers(0, len(big), n)
    x = np.clip(big[pick] + rng.normal(0, 0.05, (n, 28, 28)), 0.0, 1.0).astype(np.float32)[:, None]
    y = digits.target[pick].astype(np.int64)
    save_torch(data_dir / "test.pt", {"x": torch.from_numpy(x), "y": torch.from_numpy(y)})
    return DATASET_OF[centres]


def load_centres(data_dir: Path, dataset: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test images as (n, 784) float64 in [0, 1], and their labels."""
    from smoothcert import data as data_mod

    x, y = data_mod.load_split(data_dir, "test", dataset)
    return x[:n].reshape(n, -1).double().numpy(), y[:n].numpy().astype(np.int64)


def certificates(label: np.ndarray, d: int, norm: str, sigma: float, method: str, seed: int = 0):
    """A certify.tsv table (every column of ``smoothcert.engine.certificates.COLUMNS``, the certificate by
    :func:`smoothcert.engine.certificates.certificate`) and θ (n, d) of one experiment; None for θ where the
    method has no per-pixel θ (cohen, ddrs: isotropic)."""
    from smoothcert.engine.certificates import ABSTAIN, COLUMNS, certificate

    n = len(label)
    rng = np.random.default_rng([seed, n, int(round(1000 * sigma)), norm == "l1"])  # shared by the model's methods
    wrong = rng.random(n) < 0.10
    predict = np.where(wrong, (label + rng.integers(1, 10, n)) % 10, label)
    p_lower = 0.5 + 0.4999 * rng.beta(2.0, 1.0, n)
    abstain = rng.random(n) < 0.05
    predict = np.where(abstain, ABSTAIN, predict)
    draws = 1000 * 2 ** rng.integers(0, 7, n)  # sequential: 1,000 … 64,000 draws per input
    sigma_i = sigma * np.exp(rng.normal(0.0, 0.15, n))  # DDRS σ per input
    theta = None
    if method in ("cohen", "ddrs"):
        scale = np.broadcast_to((np.full(n, sigma) if method == "cohen" else sigma_i)[:, None], (n, d))
    else:
        theta = scale = sigma_i[:, None] * np.exp(
            np.abs(np.random.default_rng([seed, n, int(round(1000 * sigma)), norm == "l1", 1]).normal(0.0, 0.3, (n, d)))
        )
    ok = predict != ABSTAIN
    opt = method != "cohen"
    table = pd.DataFrame(
        {
            "idx": np.arange(n),
            "label": label,
            "predict": predict,
            "correct": (predict == label).astype(int),
            "time": draws / 5000.0,
            "method": method,
            "norm": norm,
            "sigma": sigma,
            "pA_lower": np.where(ok, p_lower, 0.0),
            "count": np.minimum(draws, np.ceil(np.minimum(p_lower + 0.01, 1.0) * draws)).astype(np.int64),
            "n0": 100,
            "n": draws,
            "alpha": 0.001,
            **certificate(predict, np.where(ok, stats.gap(p_lower, norm), 0.0), scale, 1.0, norm),
            "evals": draws + 100,
            "opt_time": 2.0 if opt else 0.0,
            "opt_evals": 1600 if opt else 0,
        }
    )
    return table[COLUMNS], theta


def synthetic_final(table: pd.DataFrame, theta: np.ndarray | None, d: int, seed: int = 0) -> pd.DataFrame:
    """``final.tsv``: the table after a synthetic memory step (93 % none, 5 % shrunk, 1 % inside, 1 % abstained
    among answered inputs), with the columns the memory step adds; the certificate of the new gaps by
    :func:`smoothcert.engine.certificates.certificate` with the table's θ (``theta`` (n, d), or the isotropic σ of
    its ``sigma_min`` column where None)."""
    from smoothcert.engine.certificates import CERTIFICATE, certificate

    rng = np.random.default_rng([seed, len(table), 2])
    out = table.copy()
    predict, gap = out["predict"].to_numpy(), out["gap"].to_numpy(dtype=float)
    action = np.where(predict >= 0, rng.choice(ACTIONS, len(out), p=[0.93, 0.01, 0.05, 0.01]), "none")
    scale = np.select([action == "shrunk", action == "inside"], [rng.uniform(0.3, 1.0, len(out)), 0.2], 1.0)
    new_gap = np.where(action == "abstained", 0.0, gap * scale)
    new_pred = np.where(action == "abstained", -1, predict)
    ok = new_pred >= 0
    out["predict_original"], out["gap_original"], out["memory"] = predict, gap, action
    out["predict"] = new_pred
    if theta is None:
        theta = np.broadcast_to(out["sigma_min"].to_numpy(dtype=float)[:, None], (len(out), d))
    cert = certificate(new_pred, np.where(ok, new_gap, 0.0), theta, 1.0, str(out["norm"].iloc[0]))
    for column in CERTIFICATE:
        out[column] = cert[column]
    out["correct"] = (new_pred == out["label"].to_numpy()).astype(int)
    return out


def report_folder(folder: Path, n: int, models: list, data_dir: Path, dataset: str, shards: int) -> dict:
    """Write a results folder shaped like a pipeline run (n rows per table) and its config; return the config."""
    import yaml

    from smoothcert import config as config_mod
    from smoothcert.artifacts import write_table, write_text
    from smoothcert.shards import write_theta

    _, label = load_centres(data_dir, dataset, n)
    d = 28 * 28
    cfg = yaml.safe_load((harness.REPO / "params.yaml").read_text())
    cfg["data"]["dataset"] = dataset
    cfg["test"].update({"start": 0, "step": 1, "limit": n, "shards": shards})
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": norm, "sigmas": [sigma], "methods": list(METHODS_784)}
        for norm, sigma in models
    ]
    cfg = config_mod.validate(cfg, "bench_memory report config")
    for spec in config_mod.model_specs(cfg):
        for method in spec.methods:
            base = folder / "results" / spec.id / method
            table, theta = certificates(label, d, spec.norm, spec.sigma, method)
            write_table(base / "certify.tsv", table)
            if method in MEMORY_METHODS:
                write_table(base / "final.tsv", synthetic_final(table, theta, d))
            if theta is not None:
                for k, rows in enumerate(np.array_split(np.arange(n), shards)):
                    write_theta(
                        base / "theta" / f"{k}-of-{shards}.pt",
                        rows,
                        theta[rows],
                        np.full(len(rows), 2.0),
                        np.full(len(rows), 1600),
                    )
    write_text(folder / "params.yaml", yaml.safe_dump(cfg, sort_keys=True))
    return cfg


# --------------------------------------------------------------------------- one measurement, in a fresh process
def _status_mb() -> dict:
    """VmRSS and VmHWM of this process in MiB (empty where /proc is missing)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _measured(fn) -> dict:
    """Run ``fn`` with wall / CPU seconds and its peak resident memory (see the module docstring)."""
    import resource

    before = _status_mb()
    reset = _reset_peak()
    out, seconds, cpu = harness.timed(fn)
    after = _status_mb()
    if "VmHWM" in after:
        peak, method = after["VmHWM"], "VmHWM after clear_refs" if reset else "VmHWM of the whole process"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "getrusage ru_maxrss (process)"
    return {
        "result": out,
        "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu, 3),
        "peak_rss_mb": round(peak, 1),
        "rss_before_mb": round(before.get("VmRSS", float("nan")), 1),
        "rss_method": method,
    }


def child_memory(data_dir: str, dataset: str, n: int, norm: str, sigma: float) -> dict:
    """``run_memory`` on n ANCER certificates (n × 784 θ), in this (fresh) process."""
    centers, label = load_centres(Path(data_dir), dataset, n)
    table, theta = certificates(label, centers.shape[1], norm, sigma, "ancer")
    row = _measured(lambda: final_table(table, centers, theta, norm))
    final, arrays = row.pop("result")
    counts = final["memory"].value_counts().to_dict()
    predict = table["predict"].to_numpy()
    gaps = np.where(predict >= 0, table["gap"], 0.0)
    pairs = len(candidate_pairs(centers, theta, gaps, predict, norm)[1])
    return {
        "step": "memory",
        "n": n,
        "d": centers.shape[1],
        "norm": norm,
        "sigma": sigma,
        "close_pairs": pairs,
        **row,
        "ms_per_input": round(1000 * row["seconds"] / n, 3),
        "recorded": int(len(arrays["idx"])),
        "actions": {k: int(counts.get(k, 0)) for k in ACTIONS},
    }


def _import_report() -> float:
    """Import what the report needs (torch, matplotlib, the report modules) before the clock starts: seconds taken."""
    import importlib

    start = time.perf_counter()
    for name in (
        "torch",
        "smoothcert.pipeline.certify",
        "smoothcert.pipeline.memory",
        "smoothcert.reporting.build",
        "smoothcert.reporting.claims",
        "smoothcert.reporting.plots",
    ):
        importlib.import_module(name)
    return round(time.perf_counter() - start, 3)


def child_report(folder: str, data_dir: str, n: int, plot: bool) -> dict:
    """``build_report`` over the synthetic folder (plots on or off), in this (fresh) process."""
    import yaml

    from smoothcert.reporting.build import build_report

    imports = _import_report()
    folder = Path(folder)
    cfg = yaml.safe_load((folder / "params.yaml").read_text())
    out = folder / ("report" if plot else "report_tables")
    row = _measured(lambda: build_report(cfg, folder / "results", out, data=data_dir, plot=plot))
    head = row.pop("result")
    return {
        "step": "report" if plot else "report_tables",
        "n": n,
        "experiments": len(head),
        **row,
        "import_seconds": imports,
        "files": sorted(p.name for p in out.iterdir()),
    }


def child_theta(folder: str, data_dir: str, n: int) -> dict:
    """The ancer θ figure alone (θ files read, panels drawn), in this (fresh) process."""
    import yaml

    from smoothcert.reporting import plots
    from smoothcert.reporting.build import theta_panels
    from smoothcert.reporting.runs import load_experiments

    imports = _import_report()
    folder = Path(folder)
    cfg = yaml.safe_load((folder / "params.yaml").read_text())
    experiments = load_experiments(cfg, folder / "results")

    def figure():
        panels, why = theta_panels(experiments, "ancer", cfg, data_dir)
        if not panels:
            raise RuntimeError(f"no θ panels: {why}")
        plots.theta_maps(panels, folder / "ancer_theta.png", "ancer per-pixel θ")
        return len(panels)

    row = _measured(figure)
    files = sum(len(e.theta.get("files", [])) for e in experiments)
    return {
        "step": "theta",
        "n": n,
        "panels": row.pop("result"),
        "theta_files": files,
        **row,
        "import_seconds": imports,
    }


def fresh(fn, *args) -> dict:
    """``fn(*args)`` in a new interpreter (spawn), so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main_784(args) -> None:
    sizes = sorted(args.sizes)
    tmp = None if args.work else tempfile.mkdtemp(prefix="bench_memory_784.")
    work = Path(args.work or tmp)
    try:
        data_dir = work / "data"
        dataset = prepare_centres(args.centres, max(sizes), data_dir)
        runs = []
        for n in sizes:
            if "memory" in args.steps:
                for norm, sigma in args.memory_runs:
                    runs.append(fresh(child_memory, str(data_dir), dataset, n, norm, sigma))
                    harness.emit(runs[-1])
            if {"report", "theta"} & set(args.steps):
                folder = work / f"n{n}"
                start = time.perf_counter()
                report_folder(folder, n, args.report_models, data_dir, dataset, args.shards)
                seconds = time.perf_counter() - start
                print(f"synthetic results folder for n = {n}: {seconds:.1f} s", file=sys.stderr, flush=True)
                if "report" in args.steps:
                    for plot in (False, True):
                        runs.append(fresh(child_report, str(folder), str(data_dir), n, plot))
                        harness.emit(runs[-1])
                if "theta" in args.steps:
                    runs.append(fresh(child_theta, str(folder), str(data_dir), n))
                    harness.emit(runs[-1])
        lo, hi = sizes[0], sizes[-1]

        def name(r):
            return f"memory-{r['norm']}-{r['sigma']:g}" if r["step"] == "memory" else r["step"]

        growth = {}
        for key in dict.fromkeys(name(r) for r in runs):
            t = {r["n"]: r for r in runs if name(r) == key}
            if lo != hi and lo in t and hi in t:
                growth[key] = {
                    k: round(t[hi][k] / t[lo][k], 2) if t[lo][k] > 0 else None
                    for k in ("seconds", "cpu_seconds", "close_pairs")
                    if k in t[lo]
                }
        harness.write_result(
            args.out,
            {
                "runs": runs,
                "growth_ratio": growth,
                "sizes": sizes,
                "d": 784,
                "centres": {"fashion": "Fashion-MNIST test split", "digits": "sklearn digits upsampled to 28×28"}[
                    args.centres
                ],
                "memory_runs": [f"{nm}:{s:g}" for nm, s in args.memory_runs],
                "report_models": [f"{nm}:{s:g}" for nm, s in args.report_models],
                "report_methods": list(METHODS_784),
                "theta_shards": args.shards,
                "steps": list(args.steps),
                "load_average": harness.load_avg(),
                "machine": harness.machine(),
                **harness.commit(),
            },
        )
        for key, g in growth.items():
            print(f"growth t({hi})/t({lo}) {key}: wall {g['seconds']}, cpu {g['cpu_seconds']}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ CLI
def main_64(args) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("Usage:")[1],
        formatter_class=argparse.RawTextHelpFormatter,
    )
    ap.add_argument(
        "--d", type=int, choices=(64, 784), default=64, help="input dimension: 64 (8×8 digits, default) or 784 (28×28)"
    )
    ap.add_argument(
        "--sizes", type=int, nargs="+", default=[1000, 10000], help="numbers of inputs (default: 1000 10000)"
    )
    ap.add_argument(
        "--out",
        default=None,
        help="results file (default: benchmarks/results/memory.json, or memory_784.json with --d 784)",
    )
    g = ap.add_argument_group("d = 784 only")
    g.add_argument(
        "--centres",
        choices=("fashion", "digits"),
        default="fashion",
        help="Fashion-MNIST test images (default) or upsampled digits",
    )
    g.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS), help="what to measure (default: all)")
    g.add_argument(
        "--memory-runs",
        type=norm_sigma,
        nargs="+",
        metavar="NORM:SIGMA",
        default=[("l2", 0.25), ("l2", 0.5), ("l2", 1.0), ("l1", 0.5), ("l1", 2.0)],
        help="run_memory settings (default: l2:0.25 l2:0.5 l2:1 l1:0.5 l1:2)",
    )
    g.add_argument(
        "--report-models",
        type=norm_sigma,
        nargs="+",
        metavar="NORM:SIGMA",
        default=[("l2", 0.25), ("l2", 0.5), ("l1", 0.5)],
        help="base models of the synthetic report, each with cohen, ddrs and ancer (default: l2:0.25 l2:0.5 l1:0.5)",
    )
    g.add_argument("--shards", type=int, default=2, help="θ files per ancer experiment (default: 2)")
    g.add_argument(
        "--work",
        default=None,
        help="keep the synthetic data and results folders here (default: a temporary folder, removed)",
    )
    args = ap.parse_args()
    if args.d == 64:
        args.out = args.out or str(harness.results_path("memory.json"))
        main_64(args)
    else:
        args.out = args.out or str(harness.results_path("memory_784.json"))
        main_784(args)


if __name__ == "__main__":
    main()
