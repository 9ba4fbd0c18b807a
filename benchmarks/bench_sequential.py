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
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from scipy.stats import beta as beta_dist
from scipy.stats import norm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from smoothcert import config as config_mod  # noqa: E402
from smoothcert import data as data_mod  # noqa: E402
from smoothcert.engine import certify as ecertify  # noqa: E402
from smoothcert.engine import noise, sequential
from smoothcert.engine import sampling as esampling
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


def run_mode(mode, model, x, idx, sigma, num_classes, args, sampling, work) -> dict:
    """Per-input results of one mode (cached by groups of inputs in an npz, resumed). ``mode``: fixed, decide
    (every radius of ``--radii`` at once, as the pipeline does), estimate, or ``decide@r`` (radius r alone)."""
    radii = tuple(args.radii) if mode == "decide" else (float(mode[7:]),) if mode.startswith("decide@") else None
    plan_key = "" if mode == "fixed" else f"-min{args.n_min}-r{args.ratio:g}-c{args.chunk}-{args.bound}"
    cache = work / f"sigma-{sigma:g}-{mode}-n{args.n_max}{plan_key}.npz"
    done = (
        dict(np.load(cache))
        if cache.exists()
        else {k: np.zeros(0) for k in ("idx", "predict", "count", "pA_lower", "gap", "n", "seconds", "rows")}
    )
    cks = tuple(int(k) for k in sequential.schedule(args.n_min, args.n_max, args.ratio))
    cs = sequential.UnionCP(cks) if args.bound == "union_cp" else sequential.BetaMixture()
    plan = ecertify.SequentialPlan(cks, cs, radii, args.precision)
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
            out = ecertify.certify_batch(
                meter, x[pos], sigma, num_classes, args.n0, args.n_max, args.alpha, "l2", *seeds, sampling
            )
            out["n"] = np.full(len(pos), args.n_max)
        else:
            out = ecertify.certify_sequential_batch(
                meter,
                x[pos],
                sigma,
                num_classes,
                args.n0,
                args.alpha,
                "l2",
                *seeds,
                sampling,
                plan,
                np.full(len(pos), sigma),
            )
        seconds = time.perf_counter() - t0
        rows = np.array([sum(meter.rows), len(meter.rows)])
        new = {
            "idx": pos,
            "predict": out["predict"],
            "count": out["count"],
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


def oracle_draws(pa: np.ndarray, threshold: float, alpha: float, n_max: int) -> np.ndarray:
    """Per input, the draws of an oracle that knows pA: the smallest fixed n at which a one-sided Clopper–Pearson
    test at ``alpha`` fed the count n·pA settles "pA > threshold" (lower bound above it, or upper bound below
    it), at most ``n_max``. Found by bisection on n (both bounds move monotonically towards pA as n grows)."""
    pa = np.asarray(pa, dtype=float)

    def settled(n):
        c = n * pa
        with np.errstate(invalid="ignore", divide="ignore"):
            lo = np.where(c > 0, beta_dist.ppf(alpha, np.maximum(c, 1e-300), n - c + 1), 0.0)
            hi = np.where(c < n, beta_dist.isf(alpha, c + 1, np.maximum(n - c, 1e-300)), 1.0)
        return (lo > threshold) | (hi < threshold)

    lo, hi = np.zeros(len(pa)), np.full(len(pa), float(n_max))  # settled(hi) or hi = n_max; lo never settled
    for _ in range(int(np.ceil(np.log2(n_max))) + 1):
        mid = np.floor((lo + hi) / 2)
        ok = settled(np.maximum(mid, 1.0)) & (mid >= 1)
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return hi


def oracle_ratios(res: dict, sigma: float, args) -> dict:
    """Sequential draws ÷ the oracle's (:func:`oracle_draws`, pA = count / n_max of the fixed-N run), summed over
    inputs: per radius for the single-radius runs, and for the pipeline's multi-radius decide against the oracle
    that settles every radius (the largest of its per-radius draws). Estimation draws only (n0 excluded)."""
    fixed = res["fixed"]
    pa = fixed["count"] / args.n_max
    need = {f"{r:g}": oracle_draws(pa, float(norm.cdf(r / sigma)), args.alpha, args.n_max) for r in args.radii}
    out = {"pA_source": f"fixed N = {args.n_max} counts", "oracle_mean_draws": {}, "single": {}, "multi": None}
    for r, d in need.items():
        out["oracle_mean_draws"][r] = float(d.mean())
        if f"decide@{r}" in res:
            out["single"][r] = float(res[f"decide@{r}"]["n"].sum() / d.sum())
    if "decide" in res:
        multi = np.max(np.stack(list(need.values())), 0)
        out["oracle_mean_draws"]["all"] = float(multi.mean())
        out["multi"] = float(res["decide"]["n"].sum() / multi.sum())
    ratios = [*out["single"].values(), *([out["multi"]] if out["multi"] is not None else [])]
    out["goal"] = 1.25
    out["meets_goal"] = bool(ratios) and max(ratios) <= 1.25
    return out


def main(argv=None):
    cc = yaml.safe_load((ROOT / "params.yaml").read_text())["certify"]  # defaults: the pipeline's settings
    sq = cc["sequential"]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=sorted(ARCH))
    p.add_argument(
        "--base",
        default="model",
        choices=["model", "linear"],
        help="model: the dataset's trained CNN | linear: a linear classifier with known pA, in the mix of --mix",
    )
    p.add_argument(
        "--mix",
        default=str(ROOT / "benchmarks" / "results" / "sequential_digits_cpu.json"),
        help="--base linear: the fixed-N certified accuracies whose pA mix the inputs follow",
    )
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--inputs", type=int, default=None, help="first N test inputs (default: all)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n0", type=int, default=cc["n0"])
    p.add_argument("--n-min", type=int, default=sq["n_min"])
    p.add_argument("--n-max", type=int, default=sq["n_max"])
    p.add_argument("--ratio", type=float, default=sq["ratio"])
    p.add_argument("--chunk", type=int, default=cc["chunk"])
    p.add_argument("--alpha", type=float, default=cc["alpha"])
    p.add_argument("--radii", type=float, nargs="+", default=sq["radii"])
    p.add_argument("--precision", type=float, default=sq["precision"])
    p.add_argument("--bound", default=sq["bound"], choices=["union_cp", "beta_mixture"])
    p.add_argument("--batch-size", type=int, default=cc["batch_size"])
    p.add_argument("--group", type=int, default=sq["in_flight"], help="inputs in flight (and per cache write)")
    p.add_argument(
        "--modes",
        nargs="+",
        default=["fixed", "decide", "single", "estimate"],
        help="fixed, decide (all radii at once), single (each radius alone: decide@r), estimate",
    )
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
    sampling = esampling.Sampling(kind="gaussian", batch_size=args.batch_size, chunk=args.chunk, device=device)
    name = "linear" if args.base == "linear" else args.dataset
    out = args.out or harness.results_path(f"sequential_{name}_{device.type}.json")
    print(f"results -> {out}", flush=True)
    record = {"machine": harness.machine(), "settings": {k: v for k, v in vars(args).items() if k != "out"}}
    record.update(results={}, model=None if args.base == "linear" else ARCH[args.dataset])
    for sigma, model, x, labels, num_classes, work in experiments(args, device, record):
        modes = [
            m for mode in args.modes for m in ([f"decide@{r:g}" for r in args.radii] if mode == "single" else [mode])
        ]
        idx = np.arange(len(x))
        res = {mode: run_mode(mode, model, x, idx, sigma, num_classes, args, sampling, work) for mode in modes}
        fixed = summary(res["fixed"], labels, sigma, args.radii, args.batch_size, None) if "fixed" in res else None
        record["results"][f"{sigma:g}"] = {
            mode: (fixed if mode == "fixed" else summary(r, labels, sigma, args.radii, args.batch_size, fixed))
            for mode, r in res.items()
        }
        if "fixed" in res:  # beside the modes' rows: {σ: {mode: row}} stays one row per mode
            record.setdefault("oracle_ratio", {})[f"{sigma:g}"] = oracle_ratios(res, sigma, args)
        harness.emit({"sigma": sigma, **{m: record["results"][f"{sigma:g}"][m]["mean_draws"] for m in res}})
        harness.write_result(out, record)  # after every σ: a run stopped later keeps what it measured


def experiments(args, device, record):
    """(σ, base classifier, inputs, labels, classes, cache folder) per σ: the dataset's Gaussian-trained models,
    or (``--base linear``) a linear classifier whose pA is known exactly at every input."""
    if args.base == "linear":
        yield from linear_experiments(args, record)
        return
    cfg, data, work = workspace(args)
    x, y = data_mod.load_split(data, "test", args.dataset)
    idx = data_mod.test_indices(len(x), 0, 1, args.inputs)
    for spec in config_mod.model_specs(cfg):
        model = load_model(cfg, work / "models" / spec.id / "model.pt", device).eval()
        yield spec.sigma, model, x[idx], y[idx].numpy(), 10, work


def linear_experiments(args, record):
    """The two-class linear classifier wᵀx (w = e₁, 16 dimensions) at inputs of margin σ·gᵢ, so that
    pA = Φ(gᵢ) exactly; the gᵢ follow a trained model's mix: piecewise uniform between the gaps r/σ whose
    shares of inputs are the certified accuracies of the fixed-N run in ``--mix`` (at the same σ; 1 below
    g = −1, 0 above the largest radius), at evenly spaced quantiles (no randomness)."""
    from smoothcert.audit.harness import Linear2

    mix = json.loads(Path(args.mix).read_text())
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "work" / "linear"
    work.mkdir(parents=True, exist_ok=True)
    w = torch.zeros(16, dtype=torch.float64)
    w[0] = 1.0
    record["model"] = f"linear (w = e1, 16 dims), pA mix of {Path(args.mix).name}"
    for sigma in args.sigmas:
        acc = mix["results"][f"{sigma:g}"]["fixed"]["certified_accuracy"]
        gaps = [-1.0] + [float(r) / sigma for r in acc]
        share = [1.0] + [float(v) for v in acc.values()]
        gaps, share = gaps + [gaps[-1] + 1.0], share + [0.0]  # nobody certified at the largest radius: ends 1 later
        levels = (np.arange(args.inputs or 300) + 0.5) / (args.inputs or 300)
        g = np.interp(levels, 1.0 - np.asarray(share), gaps)  # the quantile function of the mix
        x = torch.zeros(len(g), 1, 4, 4)
        x[:, 0, 0, 0] = torch.from_numpy(sigma * g).float()
        record.setdefault("linear_mix", {})[f"{sigma:g}"] = {"gap_anchors": gaps, "share_above": share}
        yield sigma, Linear2(w, 0.0), x, np.ones(len(g), dtype=np.int64), 2, work


if __name__ == "__main__":
    main()
