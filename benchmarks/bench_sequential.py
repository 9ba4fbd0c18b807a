"""Benchmark: sequential certification against fixed N = 100,000 on the same model and inputs (issue #16).

For each σ, a Gaussian-trained model of the dataset (trained once by the pipeline's own ``train`` command in
``benchmarks/work/<dataset>/``, reused when its fingerprint matches) certifies the same test inputs with the same
seeds in three modes: ``fixed`` (N = n_max draws, Cohen et al.), ``decide`` (settle certified-or-not at each
radius of ``--radii``) and ``estimate`` (pin the radius to ``--precision``). Per-input results are cached in
``benchmarks/work/<dataset>/sigma-<σ>-<mode>.npz`` after every group, so a killed run resumes. Reported:
mean estimation draws per input and the ratio to fixed N, certified accuracy at each radius per mode (and the
difference to fixed), ACR, wall seconds per input, and the forward-batch fill rate (rows per forward pass ÷
batch size, over all passes). Results: ``benchmarks/results/sequential_<dataset>_<device>.json``.

    python benchmarks/bench_sequential.py --dataset digits                 # all 540 held-out inputs
    python benchmarks/bench_sequential.py --dataset mnist5k --inputs 100   # fixed N costs ≈ 25 s per input
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from smoothcert import config as config_mod  # noqa: E402
from smoothcert import data as data_mod  # noqa: E402
from smoothcert.engine import core, noise, sequential  # noqa: E402
from smoothcert.training.models import load_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ARCH = {"digits": "digits_cnn", "mnist5k": "mnist_cnn", "fashion-mnist": "mnist_cnn"}


def workspace(args) -> tuple[dict, Path, Path]:
    """The config, prepared data and trained models of this benchmark (made once, reused)."""
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "work" / args.dataset
    cfg, data = harness.trained_workspace(work, args.dataset, ARCH[args.dataset], args.epochs, args.sigmas, args.inputs)
    return cfg, data, work


class FillMeter:
    """Rows per forward pass of the wrapped model, to compute the batch fill rate."""

    def __init__(self, model):
        self.model, self.rows = model, []

    def __call__(self, x):
        self.rows.append(len(x))
        return self.model(x)


def run_mode(mode, model, x, idx, sigma, args, sampling, work) -> dict:
    """Per-input results of one mode (cached by groups of inputs in an npz, resumed)."""
    plan_key = "" if mode == "fixed" else f"-min{args.n_min}-r{args.ratio:g}-{args.bound}"
    cache = work / f"sigma-{sigma:g}-{mode}-n{args.n_max}{plan_key}.npz"
    done = (
        dict(np.load(cache))
        if cache.exists()
        else {k: np.zeros(0) for k in ("idx", "predict", "pA_lower", "gap", "n", "seconds", "rows")}
    )
    cks = tuple(
        int(k) * args.chunk for k in sequential.schedule(args.n_min // args.chunk, args.n_max // args.chunk, args.ratio)
    )
    cs = sequential.UnionCP(cks) if args.bound == "union_cp" else sequential.BetaMixture()
    plan = core.SequentialPlan(cks, cs, tuple(args.radii) if mode == "decide" else None, args.precision)
    meter = FillMeter(model)
    start = len(done["idx"])
    for g in range(start, len(idx), args.group):
        pos = idx[g : g + args.group]
        seeds = (
            [noise.stream_seed(0, int(i), "select") for i in pos],
            [noise.stream_seed(0, int(i), "estimate") for i in pos],
        )
        meter.rows = []
        t0 = time.perf_counter()
        if mode == "fixed":
            out = core.certify_batch(meter, x[pos], sigma, 10, args.n0, args.n_max, args.alpha, "l2", *seeds, sampling)
            out["n"] = np.full(len(pos), args.n_max)
        else:
            out = core.certify_sequential_batch(
                meter, x[pos], sigma, 10, args.n0, args.alpha, "l2", *seeds, sampling, plan, np.full(len(pos), sigma)
            )
        seconds = time.perf_counter() - t0
        rows = np.array([sum(meter.rows), len(meter.rows)])
        new = {
            "idx": pos,
            "predict": out["predict"],
            "pA_lower": out["pA_lower"],
            "gap": out["gap"],
            "n": out["n"],
            "seconds": np.full(len(pos), seconds / len(pos)),
            "rows": np.tile(rows, (len(pos), 1)) / len(pos),
        }
        done = {k: np.concatenate([done[k].reshape(-1, *np.shape(new[k])[1:]), new[k]]) for k in new}
        np.savez(cache, **done)
        print(f"σ={sigma:g} {mode}: {len(done['idx'])}/{len(idx)} inputs, mean n {done['n'].mean():.0f}", flush=True)
    return done


def summary(res: dict, labels: np.ndarray, sigma: float, radii, batch_rows: int, fixed: dict | None) -> dict:
    correct = (res["predict"] == labels) & (res["predict"] >= 0)
    radius = np.where(correct, sigma * res["gap"], 0.0)
    acc = {f"{r:g}": float((correct & (radius >= r)).mean()) for r in radii}
    rows, passes = res["rows"][:, 0].sum(), res["rows"][:, 1].sum()
    out = {
        "inputs": int(len(labels)),
        "mean_draws": float(res["n"].mean()),
        "certified_accuracy": acc,
        "acr": float(radius.mean()),
        "abstain": float((res["predict"] < 0).mean()),
        "seconds_per_input": float(res["seconds"].mean()),
        "batch_fill": float(rows / (passes * batch_rows)) if passes else None,
        "draws_histogram": {str(int(k)): int(v) for k, v in zip(*np.unique(res["n"], return_counts=True))},
    }
    if fixed is not None:
        out["draws_ratio_fixed_over_this"] = float(fixed["mean_draws"] / out["mean_draws"])
        out["accuracy_minus_fixed_points"] = {r: round(100 * (acc[r] - fixed["certified_accuracy"][r]), 2) for r in acc}
        out["acr_minus_fixed"] = out["acr"] - fixed["acr"]
        out["seconds_ratio_fixed_over_this"] = fixed["seconds_per_input"] / out["seconds_per_input"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=sorted(ARCH))
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--inputs", type=int, default=None, help="first N test inputs (default: all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n-min", type=int, default=1000)
    p.add_argument("--n-max", type=int, default=100_000)
    p.add_argument("--ratio", type=float, default=2.0)
    p.add_argument("--chunk", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--precision", type=float, default=0.1)
    p.add_argument("--bound", default="union_cp", choices=["union_cp", "beta_mixture"])
    p.add_argument("--batch-size", type=int, default=4000)
    p.add_argument("--group", type=int, default=64, help="inputs in flight (and per cache write)")
    p.add_argument("--modes", nargs="+", default=["fixed", "decide", "estimate"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--work", default=None, help="data, models and per-input caches (default: benchmarks/work/<dataset>)"
    )
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg, data, work = workspace(args)
    x, y = data_mod.load_split(data, "test", args.dataset)
    idx = data_mod.test_indices(len(x), 0, 1, args.inputs)
    sampling = core.Sampling(kind="gaussian", batch_size=args.batch_size, chunk=args.chunk, device=device)
    out = args.out or harness.results_path(f"sequential_{args.dataset}_{device.type}.json")
    print(f"results -> {out}", flush=True)
    record = {
        "machine": harness.machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "model": cfg["model"]["arch"],
        "results": {},
    }
    for spec in config_mod.model_specs(cfg):
        model = load_model(cfg, work / "models" / spec.id / "model.pt", device).eval()
        res = {mode: run_mode(mode, model, x, idx, spec.sigma, args, sampling, work) for mode in args.modes}
        labels = y[idx].numpy()
        fixed = summary(res["fixed"], labels, spec.sigma, args.radii, args.batch_size, None) if "fixed" in res else None
        record["results"][f"{spec.sigma:g}"] = {
            mode: (fixed if mode == "fixed" else summary(r, labels, spec.sigma, args.radii, args.batch_size, fixed))
            for mode, r in res.items()
        }
        harness.emit({"sigma": spec.sigma, **{m: record["results"][f"{spec.sigma:g}"][m]["mean_draws"] for m in res}})
        harness.write_result(out, record)  # after every σ: a run stopped later keeps what it measured


if __name__ == "__main__":
    main()
