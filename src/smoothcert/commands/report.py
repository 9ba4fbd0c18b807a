"""The comparison report: tables, DVC metrics/plot data and figures from every experiment's certificates."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert import config as config_mod
from smoothcert.reporting import tables as rep
from smoothcert.commands._common import add_config
from smoothcert.errors import SmoothcertError, require
from smoothcert.io import atomic_path, load_torch, read_table, write_json, write_text

HELP = "build the comparison report (summary/memory/training tables, metrics.json, curves, PNGs) from the results"
MEMORY_COLUMNS = ["memory", "gap_original", "predict_original"]
ANCER_PANELS = 6


def add_arguments(p):
    add_config(p)
    p.add_argument("--results", required=True,
                   help="results/<dataset> folder (<model>/<method>/certify.tsv, final.tsv)")
    p.add_argument("--models", default=None,
                   help="models/<dataset> folder (<model>/metrics.tsv) for the training tables")
    p.add_argument("--data", default=None, help="prepared data folder (test.pt) for the ANCER θ figure")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="NAME[@SIGMA]=PATH",
                   help="add a table in locuslab/smoothing's format (idx label predict radius correct time) "
                        "as method NAME (ℓ2; σ from @SIGMA or a noise_<σ>/sigma_<σ> part of PATH)")
    p.add_argument("--video", default=None,
                   help="video results folder (sigma-<σ>/<method>/certify.tsv): adds video.csv/.md and metrics")
    p.add_argument("--metrics", default=None,
                   help="folder for metrics.json and curves*.csv (DVC metrics/plots); default: the --out folder")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")


def _table(path: Path, required: list[str], what: str) -> pd.DataFrame:
    df = read_table(path, required, what=what)
    require(len(df) > 0, f"{what} {path} has no rows")
    return df


def load_experiments(cfg: dict, results: str | Path) -> list[rep.Experiment]:
    """Every configured experiment's final table (and, for memory methods, the table before memory)."""
    from smoothcert.pipeline.certify import COLUMNS
    from smoothcert.methods import get as get_method

    results = Path(results)
    specs = {s.id: s for s in config_mod.model_specs(cfg)}
    out = []
    for model_id, method in config_mod.experiments(cfg):
        spec, base = specs[model_id], results / model_id / method
        what = f"certificate table of {model_id}/{method}"
        table = before = _table(base / "certify.tsv", COLUMNS, what)
        if get_method(method).memory:
            table = _table(base / "final.tsv", COLUMNS + MEMORY_COLUMNS, f"final (after memory) {what}")
        theta_files = sorted((base / "theta").glob("*-of-*.pt")) if method == "ancer" else []
        out.append(rep.Experiment(model_id, spec.objective, spec.sigma_mode, method, spec.sigma, spec.norm, table,
                                  before if get_method(method).memory else None, {"files": theta_files}))
    return out


def parse_import(text: str) -> tuple[str, float, Path]:
    """``NAME[@SIGMA]=PATH`` → (name, σ or NaN, path)."""
    name, sep, path = text.partition("=")
    require(sep == "=" and name and path, f"--import {text!r}: expected NAME=PATH or NAME@SIGMA=PATH")
    name, _, sig = name.partition("@")
    require(re.fullmatch(r"[A-Za-z0-9_.+-]+", name) is not None,
            f"--import {text!r}: NAME may use letters, digits, _.+- only")
    sigma = float("nan")
    if sig:
        try:
            sigma = float(sig)
        except ValueError as exc:
            raise SmoothcertError(f"--import {text!r}: SIGMA {sig!r} is not a number") from exc
    else:
        found = re.findall(r"(?:noise|sigma)_([0-9]*\.?[0-9]+)", path)
        if found:
            sigma = float(found[-1])
    return name, sigma, Path(path)


def load_import(text: str) -> rep.Experiment:
    """An imported locuslab-format table as an experiment of model ``import``."""
    from smoothcert.pipeline.certify import COLUMNS

    name, sigma, path = parse_import(text)
    df = _table(path, rep.LOCUSLAB_COLUMNS, f"imported table {name}")
    df = rep.fill_imported(df, name, COLUMNS, sigma=sigma)
    return rep.Experiment("import", "imported", "fixed", name, sigma, "l2", df)


def load_video(folder: str | Path) -> list[rep.Experiment]:
    """Video certificate tables ``sigma-<σ>/<method>/certify.tsv`` as experiments of model ``video-<σ>``."""
    from smoothcert.pipeline.certify import COLUMNS

    folder = Path(folder)
    require(folder.is_dir(), f"video results folder not found: {folder}")
    out = []
    for path in sorted(folder.glob("sigma-*/*/certify.tsv")):
        sigma, method = float(path.parent.parent.name[len("sigma-"):]), path.parent.name
        df = _table(path, rep.LOCUSLAB_COLUMNS, f"video certificate table {method}")
        df = rep.fill_imported(df, method, COLUMNS, sigma=sigma)
        out.append(rep.Experiment(f"video-{sigma:g}", "video", "fixed", method, sigma, "l2", df))
    require(len(out) > 0, f"no video certificate tables under {folder} (expected sigma-<σ>/<method>/certify.tsv)")
    return out


def load_training(cfg: dict, models: str | Path) -> dict[str, pd.DataFrame]:
    """models/<dataset>/<model_id>/metrics.tsv for every configured model."""
    cols = ["epoch", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc", "time"]
    return {s.id: _table(Path(models) / s.id / "metrics.tsv", cols, f"training metrics of {s.id}")
            for s in config_mod.model_specs(cfg)}


def load_theta(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ANCER θ shard files → (idx (n,), θ (n, d))."""
    idx, theta = [], []
    for f in files:
        blob = load_torch(f, what="theta file")
        require(isinstance(blob, dict) and {"idx", "theta"} <= set(blob), f"theta file {f} needs idx and theta")
        idx.append(blob["idx"].numpy().reshape(-1))
        theta.append(blob["theta"].float().numpy().reshape(len(idx[-1]), -1))
    return np.concatenate(idx), np.concatenate(theta)


def ancer_panels(experiments: list[rep.Experiment], cfg: dict, data_dir: str | Path | None) -> tuple[list[dict], str]:
    """Image/θ panels for a few certified inputs of each ANCER experiment, or ([], why not)."""
    ancer = [e for e in experiments if e.method == "ancer"]
    if not ancer:
        return [], "no ANCER experiment in the config"
    if data_dir is None:
        return [], "no --data folder given; the test images are needed"
    with_theta = [e for e in ancer if e.theta.get("files")]
    if not with_theta:
        return [], f"no ANCER θ files under {ancer[0].model_id}/ancer/theta/"
    from smoothcert import data as data_mod

    x, _ = data_mod.load_split(data_dir, "test", cfg["data"]["dataset"])
    shape = tuple(x.shape[1:])
    per = max(1, ANCER_PANELS // len(with_theta))
    panels = []
    for e in with_theta[:ANCER_PANELS]:
        idx, theta = load_theta(e.theta["files"])
        if theta.shape[1] != int(np.prod(shape)):
            continue
        t = e.table.set_index("idx")
        pos = {int(i): k for k, i in enumerate(idx)}
        known = [i for i in t.index if int(i) in pos and 0 <= int(i) < len(x)]
        good = [i for i in known if t.loc[i, "correct"] > 0 and t.loc[i, "predict"] >= 0]
        for i in (good + [i for i in known if i not in good])[:per]:
            r = t.loc[i]
            pred = "abstain" if int(r["predict"]) < 0 else f"class {int(r['predict'])}"
            panels.append({"image": x[int(i)].numpy(), "theta": theta[pos[int(i)]].reshape(shape),
                           "experiment": e.key,
                           "caption": f"test #{int(i)}: label {int(r['label'])}, predicted {pred}\n"
                                      f"certified radius {float(r['radius']):.3f} (σ={e.sigma:g})"})
    return panels[:ANCER_PANELS], "" if panels else "θ files do not match the test images"


def _md_sections(summ: pd.DataFrame, radii_by_norm: dict) -> str:
    show_keys = ["objective", "sigma_mode", "method", "sigma"]
    out = []
    for norm, part in summ.groupby("norm", sort=False):
        part = part.reset_index(drop=True)
        grid = [rep.rlabel(r) for r in radii_by_norm[norm]]
        bold = rep.best_mask(part, group=None)
        blocks = [
            ("Certified accuracy", ["clean", "abstain", "acr"] + [f"acc@{g}" for g in grid] + ["median_log_volume"],
             "acc@r: fraction of test inputs classified correctly with certified radius ≥ r; clean = acc@0; "
             "acr: average certified radius; median_log_volume: median log-volume (nats) of the certified "
             "region over certified correct inputs."),
            ("Proxy accuracy (not a certificate)", [f"{rep.PROXY_PREFIX}{g}" for g in grid],
             "proxy_acc@r: the fraction of inputs whose *proxy* radius (σ geometric mean × gap, the radius of the "
             "ball with the certified region's volume; ANCER's figure of merit) is ≥ r. The certified region "
             "need not contain that ball, so this is NOT a certified accuracy: it is never bolded or ranked. "
             "It equals acc@r for isotropic methods."),
            ("App.-D lower bound on the true certified accuracy", [f"lb@{g}" for g in grid],
             "Holds with probability ≥ 1 - rho over the certification randomness (Cohen et al. 2019, App. D)."),
            ("Cost per input", rep.COST,
             "opt_time/opt_evals: σ/θ optimization seconds and forward passes; time/evals: certification."),
        ]
        out.append(f"## {norm}\n")
        for title, cols, note in blocks:
            cols = show_keys + [c for c in cols if c in part]
            out.append(f"### {title} ({norm})\n\n{note}\n\n" + rep.markdown(part[cols], bold[cols]))
    return "\n".join(out)


def _memory_md(part: pd.DataFrame) -> str:
    """Before/after rows per experiment, then the action counts."""
    keys = ["objective", "sigma_mode", "method", "sigma"]
    rows = []
    for _, r in part.iterrows():
        for stage in ("before", "after"):
            vals = {c[len(stage) + 1:]: r[c] for c in part.columns if c.startswith(f"{stage}_")}
            rows.append({**{k: r[k] for k in keys}, "stage": stage, **vals})
    counts = part[keys + ["inputs", *rep.MEMORY_ACTIONS]]
    return rep.markdown(rep.drop_empty(pd.DataFrame(rows))) + "\nMemory actions (inputs):\n\n" + rep.markdown(counts)


def _placeholder(path: Path, title: str, why: str) -> None:
    import matplotlib.pyplot as plt

    from smoothcert.reporting import plots

    fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n(not available: {why})", ha="center", va="center")
    plots.save(fig, path)


def build_report(cfg: dict, results, out, models=None, data=None, imports=(), plot: bool = True,
                 video=None, metrics_dir=None) -> dict:
    """Write every report file into ``out`` (metrics.json and curves into ``metrics_dir`` if given)."""
    out = Path(out)
    rc = cfg["report"]
    radii_by_norm = {k: [float(r) for r in v] for k, v in rc["radii"].items()}
    experiments = load_experiments(cfg, results) + [load_import(t) for t in imports]
    keys = [e.key for e in experiments]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    require(not dup, f"two experiments share a name: {dup} (give each --import its own NAME)")
    for e in experiments:
        require(e.norm in radii_by_norm, f"{e.key}: no report.radii.{e.norm} in the config")
    dataset = cfg["data"]["dataset"]
    alpha = cfg["certify"]["alpha"]
    summ = rep.summary(experiments, radii_by_norm, alpha, rc["rho"])
    write_csv(out / "summary.csv", summ)
    write_text(out / "summary.md", f"# Certified robustness on {dataset}\n\nBest value per column in **bold** "
               f"(within each norm). {len(experiments)} experiments.\n\n" + _md_sections(summ, radii_by_norm))

    mem = rep.memory_table(experiments, radii_by_norm)
    write_csv(out / "memory.csv", mem)
    md = "# Memory step (data-dependent certificates)\n\n"
    if mem.empty:
        md += "No experiment uses the memory step.\n"
    else:
        md += ("Certified accuracy before (per-input certificates, certify.tsv) and after (sound for the "
               "data-dependent classifier, final.tsv) the memory step, and how many inputs each action hit.\n\n")
        for norm, part in mem.groupby("norm", sort=False):
            md += f"## {norm}\n\n" + _memory_md(part) + "\n"
    write_text(out / "memory.md", md)

    metrics = load_training(cfg, models) if models else {}
    train = rep.training_table(metrics, config_mod.model_specs(cfg))
    mid = radii_by_norm.get("l2", [0.5])
    objectives = rep.objective_table(summ[summ["model_id"] != "import"] if len(summ) else summ,
                                     0.5 if 0.5 in mid else None)
    write_csv(out / "training.csv", train)
    write_csv(out / "objectives.csv", objectives)
    md = "# Training\n\n"
    md += ("Final-epoch metrics of each base model (test accuracies of the base classifier, "
           "clean and under training noise; train_time in seconds).\n\n" + rep.markdown(train) if len(train)
           else "No models folder given.\n")
    md += ("\n## Certified accuracy per objective × sigma_mode × method\n\nAverage certified radius (acr) and, "
           "where 0.5 is on the radius grid, certified accuracy at r = 0.5 of each method on each base model.\n\n"
           + rep.markdown(objectives))
    write_text(out / "training.md", md)

    head = rep.headline_metrics(summ)
    if video:
        vsumm = rep.summary(load_video(video), radii_by_norm, alpha, rc["rho"])
        write_csv(out / "video.csv", vsumm)
        keys = ["method", "sigma", "inputs", "clean", "abstain", "acr"]
        cols = keys + [f"acc@{rep.rlabel(r)}" for r in radii_by_norm["l2"]] + ["time", "evals"]
        write_text(out / "video.md", "# Video (Smooth-Reduce on clips)\n\nCertified accuracy on the moving-digits "
                   "clips; radii in clip pixel space ([0,1] scale).\n\n"
                   + rep.markdown(vsumm[cols], rep.best_mask(vsumm[cols], group=None)))
        head.update(rep.headline_metrics(vsumm))
    dvc_dir = Path(metrics_dir) if metrics_dir else out
    write_json(dvc_dir / "metrics.json", head)
    curves = rep.curves(experiments, radii_by_norm)
    curves_proxy = rep.curves(experiments, radii_by_norm, column="proxy_radius")
    write_csv(dvc_dir / "curves.csv", curves)
    write_csv(dvc_dir / "curves_proxy.csv", curves_proxy)

    if plot:
        _figures(out, cfg, experiments, curves, curves_proxy, mem, metrics, data)
    return head


def _figures(out: Path, cfg, experiments, curves, curves_proxy, mem, metrics, data) -> None:
    from smoothcert.reporting import plots

    dataset = cfg["data"]["dataset"]
    plots.certified_accuracy(curves, experiments, out / "certified_accuracy.png",
                             f"{dataset}: certified accuracy vs radius")
    plots.certified_accuracy(curves_proxy, experiments, out / "certified_accuracy_proxy.png",
                             f"{dataset}: proxy accuracy vs volume-equivalent radius (NOT a certificate)", proxy=True)
    plots.log_volume(experiments, out / "log_volume.png", f"{dataset}: log-volume of certified regions")
    if len(mem):
        plots.memory_effect(mem, out / "memory_effect.png", f"{dataset}: effect of the memory step")
    else:
        _placeholder(out / "memory_effect.png", "memory step", "no experiment uses it")
    panels, why = ancer_panels(experiments, cfg, data)
    if panels:
        plots.ancer_theta(panels, out / "ancer_theta.png", f"{dataset}: ANCER per-pixel θ")
    else:
        print(f"smoothcert report: ancer_theta.png is a placeholder ({why})", file=sys.stderr)
        _placeholder(out / "ancer_theta.png", "ANCER θ maps", why)
    if metrics:
        plots.training(metrics, out / "training.png", f"{dataset}: training")
    else:
        _placeholder(out / "training.png", "training curves", "no --models folder given")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Atomically write a comma-separated table."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def run(args):
    cfg = config_mod.load(args.config)
    head = build_report(cfg, args.results, args.out, models=args.models, data=args.data, imports=args.imports,
                        plot=not args.no_plots, video=args.video, metrics_dir=args.metrics)
    print(f"report: {len(head)} experiments -> {args.out}")
