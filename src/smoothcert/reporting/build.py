"""The comparison report of a run: tables, DVC metrics/plot data and figures from every experiment's certificates.

:func:`build_report` reads each configured experiment's final table (for memory methods, ``final.tsv`` and
the table before the memory step), optional locuslab-format imports, the training metrics and the video
tables, and writes every report file atomically. Which table is final, which experiments have θ maps and
which have a memory table come from the method registry, never from a method's name.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert import config as config_mod
from smoothcert.artifacts import atomic_path, write_json, write_text
from smoothcert.errors import SmoothcertError, require
from smoothcert.reporting import CURVE_FIGURES, THETA_FIGURE, curve_figures, importers, theta_methods
from smoothcert.reporting import tables as rep
from smoothcert.reporting.importers import IMPORTED
from smoothcert.reporting.runs import configured_inputs, load_experiments, load_training, load_video

THETA_PANELS = 6  # inputs shown per θ figure
HEADLINES = "metrics"  # report/metrics/<model>/<method>.json: each experiment at a glance
IMPORTS_TITLE = "imported tables"  # what titles name when the report is on imports alone and no --dataset is given


def theta_panels(
    experiments: list[rep.Experiment], method: str, cfg: dict, data_dir: str | Path | None
) -> tuple[list[dict], str]:
    """Image/θ panels for a few certified inputs of each experiment of ``method``, or ([], why not)."""
    from smoothcert.pipeline.memory import load_thetas

    runs = [e for e in experiments if e.method == method]
    if not runs:
        return [], f"no {method} experiment in the config"
    if data_dir is None:
        return [], "no --data folder given; the test images are needed"
    with_theta = [e for e in runs if e.theta.get("files")]
    if not with_theta:
        return [], f"no {method} θ files under {runs[0].model_id}/{method}/theta/"
    from smoothcert import data as data_mod

    x, _ = data_mod.load_split(data_dir, "test", cfg["data"]["dataset"])
    shape = tuple(x.shape[1:])
    per = max(1, THETA_PANELS // len(with_theta))
    panels, why = [], "θ files do not match the test images"
    for e in with_theta[:THETA_PANELS]:
        t = e.table.set_index("idx")
        try:
            theta = load_thetas(e.theta["files"], t.index.to_numpy(dtype=np.int64), int(np.prod(shape)))
        except SmoothcertError as exc:
            why = f"{e.key}: {exc}"
            continue
        pos = {int(i): k for k, i in enumerate(t.index)}
        known = [i for i in t.index if 0 <= int(i) < len(x)]
        good = [i for i in known if t.loc[i, "correct"] > 0 and t.loc[i, "predict"] >= 0]
        for i in (good + [i for i in known if i not in good])[:per]:
            r = t.loc[i]
            pred = "abstain" if int(r["predict"]) < 0 else f"class {int(r['predict'])}"
            panels.append(
                {
                    "image": x[int(i)].numpy(),
                    "theta": theta[pos[int(i)]].reshape(shape),
                    "experiment": e.key,
                    "caption": f"test #{int(i)}: label {int(r['label'])}, predicted {pred}\n"
                    f"certified radius {float(r['radius']):.3f} (σ={e.sigma:g})",
                }
            )
    return panels[:THETA_PANELS], "" if panels else why


def _md_sections(summ: pd.DataFrame, radii_by_norm: dict) -> str:
    show_keys = ["objective", "sigma_mode", "method", "sigma"]
    out = []
    for norm, part in summ.groupby("norm", sort=False):
        part = part.reset_index(drop=True)
        grid = [rep.rlabel(r) for r in radii_by_norm[norm]]
        bold = rep.best_mask(part, group=None)
        blocks = [
            (
                "Certified accuracy",
                ["clean", "abstain", "acr"] + [f"acc@{g}" for g in grid] + ["median_log_volume"],
                "acc@r: fraction of test inputs classified correctly with certified radius ≥ r; clean = acc@0; "
                "acr: average certified radius; median_log_volume: median log-volume (nats) of the certified "
                "region over certified correct inputs.",
            ),
            (
                "Proxy accuracy (not a certificate)",
                [f"{rep.PROXY_PREFIX}{g}" for g in grid],
                "proxy_acc@r: the fraction of inputs whose *proxy* radius (σ geometric mean × gap, the radius of the "
                "ball with the certified region's volume; ANCER's figure of merit) is ≥ r. The certified region "
                "need not contain that ball, so this is NOT a certified accuracy: it is never bolded or ranked. "
                "It equals acc@r for isotropic methods.",
            ),
            (
                "App.-D lower bound on the true certified accuracy",
                [f"lb@{g}" for g in grid],
                "Holds with probability ≥ 1 - rho over the certification randomness (Cohen et al. 2019, App. D).",
            ),
            (
                "Cost per input",
                [*rep.COST, "evals_certified"],
                "opt_time/opt_evals: σ/θ optimization seconds and forward passes; time/evals: certification; "
                "evals_certified: certification evaluations per non-abstaining input (with certify.mode: "
                "sequential each input stops when decided; draws.png shows the distribution).",
            ),
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
            vals = {c[len(stage) + 1 :]: r[c] for c in part.columns if c.startswith(f"{stage}_")}
            rows.append({**{k: r[k] for k in keys}, "stage": stage, **vals})
    counts = part[keys + ["inputs", "lost@0", "gained@0", *rep.MEMORY_ACTIONS]]
    return (
        rep.markdown(rep.drop_empty(pd.DataFrame(rows)))
        + "\nInputs certified correctly before but not after (lost@0) and the reverse (gained@0), as shares of the "
        "inputs (after acc@0 − before acc@0 = gained@0 − lost@0), then how many inputs each action hit:\n\n"
        + rep.markdown(counts)
    )


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Atomically write a comma-separated table."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def build_report(
    cfg: dict,
    results,
    out,
    models=None,
    data=None,
    imports=(),
    plot: bool = True,
    video=None,
    metrics_dir=None,
    capped=None,
    dataset: str | None = None,
) -> dict:
    """Write every report file into ``out`` (metrics.json and curves into ``metrics_dir`` if given).

    ``results`` None: only the ``imports`` (tables someone already has), with the config's radii, α and ρ; titles
    then name ``dataset`` (the tables do not record it) or "imported tables", never the config's dataset.
    ``capped``: the folder of a run of this config with a σ cap (:mod:`smoothcert.reporting.cap`), whose
    experiments the page shows beside their uncapped twins (never in the claims, the summary or the metrics).
    Returns the experiments it reports on (keys), per norm. Bad or missing tables are one-line errors; nothing
    is bolded or ranked on proxy accuracy (no certificate).
    """
    out = Path(out)
    rc = cfg["report"]
    radii_by_norm = {k: [float(r) for r in v] for k, v in rc["radii"].items()}
    require(results is not None or imports, "report: nothing to report (give --results and/or --import)")
    require(capped is None or results is not None, "report: --capped needs --results (the uncapped run)")
    require(
        dataset is None or results is None, "report: --dataset names the imported tables' data; a run's is its config's"
    )
    loaded = [importers.load(t) for t in imports]
    expected = configured_inputs(cfg, data) if results is not None else None
    ran = load_experiments(cfg, results, expected) if results is not None else []
    if capped is not None:
        from smoothcert.reporting import cap as cap_mod

        where = Path(results).resolve()  # <run>/results/<dataset>: the run's Snakemake records are in <run>
        base_run = where.parents[1] if where.parent.name == "results" else None
        capped, pairs = cap_mod.load(cfg, capped, expected, ran, base_run)
    experiments = ran + [e for e, _ in loaded]
    keys = [e.key for e in experiments]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    require(not dup, f"two experiments share a name: {dup} (give each --import at one σ and norm its own NAME)")
    for e in experiments:
        require(e.norm in radii_by_norm, f"{e.key}: no report.radii.{e.norm} in the config")
    dataset = cfg["data"]["dataset"] if results is not None else (dataset or IMPORTS_TITLE)
    alpha = cfg["certify"]["alpha"]
    summ = rep.summary(experiments, radii_by_norm, alpha, rc["rho"])
    write_csv(out / "summary.csv", summ)
    write_text(
        out / "summary.md",
        f"# Certified robustness on {dataset}\n\nBest value per column in **bold** "
        f"(within each norm). {len(experiments)} experiments.\n\n" + _md_sections(summ, radii_by_norm),
    )

    mem = rep.memory_table(experiments, radii_by_norm)
    write_csv(out / "memory.csv", mem)
    md = "# Memory step (data-dependent certificates)\n\n"
    if mem.empty:
        md += "No experiment uses the memory step.\n"
    else:
        md += (
            "Certified accuracy before (per-input certificates, certify.tsv) and after (sound for the "
            "data-dependent classifier, final.tsv) the memory step, and how many inputs each action hit.\n\n"
        )
        for norm, part in mem.groupby("norm", sort=False):
            md += f"## {norm}\n\n" + _memory_md(part) + "\n"
    write_text(out / "memory.md", md)

    metrics = load_training(cfg, models) if models else {}
    train = rep.training_table(metrics, config_mod.trained_specs(cfg))
    mid = radii_by_norm.get("l2", [0.5])
    objectives = rep.objective_table(
        summ[summ["objective"] != IMPORTED] if len(summ) else summ, 0.5 if 0.5 in mid else None
    )
    write_csv(out / "training.csv", train)
    write_csv(out / "objectives.csv", objectives)
    from smoothcert.reporting import claims as claims_mod

    cc = rc["claims"]
    checked = claims_mod.claims(experiments, cc["level"], cc["min_inputs"], cc["resamples"], cfg["seed"])
    write_csv(out / "claims.csv", checked)
    write_text(
        out / "claims.md",
        "# Claims of the seed papers, on this run\n\n"
        + claims_mod.explain(checked, cc["level"], cc["min_inputs"])
        + "\n"
        + (rep.markdown(checked) if len(checked) else "No pair of experiments in this run checks a claim.\n"),
    )
    md = "# Training\n\n"
    md += (
        "Final-epoch metrics of each base model (test accuracies of the base classifier, "
        "clean and under training noise; train_time in seconds).\n\n" + rep.markdown(train)
        if len(train)
        else "No model trained in this run (no models folder given, or checkpoint entries only).\n"
    )
    md += (
        "\n## Certified accuracy per objective × sigma_mode × method\n\nAverage certified radius (acr) and, "
        "where 0.5 is on the radius grid, certified accuracy at r = 0.5 of each method on each base model.\n\n"
        + rep.markdown(objectives)
    )
    write_text(out / "training.md", md)

    head = rep.run_headline(experiments, rc["headline"])
    glance = list(experiments)
    if video:
        clips = load_video(video)
        glance += clips
        vsumm = rep.summary(clips, radii_by_norm, alpha, rc["rho"])
        write_csv(out / "video.csv", vsumm)
        keys = ["method", "sigma", "inputs", "clean", "abstain", "acr"]
        cols = keys + [f"acc@{rep.rlabel(r)}" for r in radii_by_norm["l2"]] + ["time", "evals"]
        write_text(
            out / "video.md",
            "# Video (Smooth-Reduce on clips)\n\nCertified accuracy on the moving-digits "
            "clips; radii in clip pixel space ([0,1] scale).\n\n"
            + rep.markdown(vsumm[cols], rep.best_mask(vsumm[cols], group=None)),
        )
    for e in glance:  # one small file per experiment: `dvc metrics show -R report/metrics` prints a row for each
        write_json(
            out / HEADLINES / e.model_id / f"{e.method}.json", rep.experiment_headline(e, rc["headline"][e.norm])
        )
    dvc_dir = Path(metrics_dir) if metrics_dir else out
    write_json(dvc_dir / "metrics.json", head)
    curves = rep.curves(experiments, radii_by_norm)
    curves_proxy = rep.curves(experiments, radii_by_norm, column="proxy_radius")
    write_csv(dvc_dir / "curves.csv", curves)
    write_csv(dvc_dir / "curves_proxy.csv", curves_proxy)

    # each norm its own curve figures: the configured models' (the workflow's outputs), then the imports'
    configured = [s.norm for s in config_mod.model_specs(cfg)] if results is not None else []
    norms = list(dict.fromkeys(configured + [e.norm for e in experiments]))
    held = _figures(out, cfg, dataset, experiments, norms, curves, curves_proxy, mem, metrics, data) if plot else set()
    from smoothcert.reporting.page import FRONT, PAGE, extras, front, page

    if capped is not None:
        capped = {**capped, "pairs": pairs, "experiments": ran, "figure": None}
        capped["rows"] = cap_mod.rows(
            pairs,
            capped["config"],
            lambda es: pd.concat(
                [
                    rep.summary(es, radii_by_norm, alpha, rc["rho"]),
                    extras(es).drop(columns=["model_id", "method"]),
                ],
                axis=1,
            ),
        )
        if plot:
            from smoothcert.reporting import plots

            runs, panels = cap_mod.curve_pairs(pairs)
            plots.curve_panels(
                rep.curves(runs, radii_by_norm),
                panels,
                out / cap_mod.CAP_FIGURE,
                f"{dataset}: certified accuracy vs radius, uncapped vs capped σ",
            )
            capped["figure"] = cap_mod.CAP_FIGURE

    shown = {p.name for p in out.glob("*.png")} - held
    imported = [d for _, d in loaded]
    from smoothcert import data as data_mod

    classes = data_mod.class_names(data, cfg["data"]["dataset"]) if data is not None and results is not None else None
    paper_md = None
    if rc.get("compare_paper", config_mod.schema_default("report", "compare_paper")):
        from smoothcert.reporting import paper

        paper_md = paper.report_markdown(paper.compare(summ))
        write_text(out / "paper_comparison.md", paper_md)
    text, head_line = page(
        cfg,
        summ,
        checked,
        mem,
        objectives,
        train,
        shown,
        imported,
        results is not None,
        extras(experiments),
        classes,
        paper_md,
        capped,
        dataset,
    )
    write_text(out / PAGE, text)
    first = next((out / n for n in curve_figures(norms) if n in shown), None)
    title = text.splitlines()[0].lstrip("# ")
    if results is not None:
        about = f"The run: {dataset}, certified with α = {alpha:g} per certificate"
    else:
        about = f"{len(loaded)} imported tables, no run of this config (report/page.md's Setup says what each is)"
    about += f"; claims at family-wise level {cc['level']:g}."
    write_text(out / FRONT, front(title, head_line, checked, cc["level"], first, about))
    return {norm: [e.key for e in glance if e.norm == norm] for norm in dict.fromkeys(e.norm for e in glance)}


def _attr(e: rep.Experiment, name: str):
    """An experiment's value of a panel key; "training" is objective/σ mode of the base model, and an import's is
    "imported" (its σ mode is its method's, so imported DDRS / ANCER share the panels of the methods at their σ)."""
    if name != "training":
        return getattr(e, name)
    return IMPORTED if e.objective == IMPORTED else f"{e.objective}/{e.sigma_mode}"


def _shown(name: str, value) -> str:
    if name == "sigma":
        return f"σ={value:g}"
    return {"l2": "ℓ2", "l1": "ℓ1"}.get(value, value) if name == "norm" else str(value)


def curve_panels(
    experiments: list[rep.Experiment], fixed: tuple[str, ...], vary: str, fewest: int = 1
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Panels [(title, [(experiment key, label)])]: experiments that agree on ``fixed``, labelled by ``vary``;
    panels with fewer than ``fewest`` distinct values of ``vary`` are left out."""
    groups: dict[tuple, list[rep.Experiment]] = {}
    for e in experiments:
        groups.setdefault(tuple(_attr(e, f) for f in fixed), []).append(e)
    return [
        (" · ".join(_shown(f, v) for f, v in zip(fixed, key)), [(e.key, _shown(vary, _attr(e, vary))) for e in es])
        for key, es in groups.items()
        if len({_attr(e, vary) for e in es}) >= fewest
    ]


def _placeholder(path: Path, title: str, why: str) -> str:
    """A figure saying why it is not available (the report's outputs are fixed); returns its name, which the
    results page leaves out."""
    import matplotlib.pyplot as plt

    from smoothcert.reporting import plots

    fig, ax = plt.subplots(figsize=(6, 2), layout="constrained")
    ax.axis("off")
    ax.text(0.5, 0.5, f"{title}\n(not available: {why})", ha="center", va="center")
    plots.save(fig, path)
    return path.name


def _figures(out: Path, cfg, dataset: str, experiments, norms, curves, curves_proxy, mem, metrics, data) -> set[str]:
    """Write every figure (the certified-accuracy ones for each of ``norms``), titled by ``dataset``; returns the
    names of placeholders."""
    from smoothcert.reporting import plots

    held: set[str] = set()
    questions = {"method": "methods at one σ", "sigma": "σ for one method", "training": "training objectives"}
    for norm in norms:
        runs = [e for e in experiments if e.norm == norm]
        for template, (fixed, vary, fewest) in CURVE_FIGURES.items():
            name, question = template.format(norm=norm), f"{_shown('norm', norm)}, {questions[vary]}"
            panels = curve_panels(runs, fixed, vary, fewest)
            if panels:
                plots.curve_panels(curves, panels, out / name, f"{dataset}: certified accuracy vs radius, {question}")
            else:
                why = f"no two {norm} experiments differ only in {vary}"
                held.add(_placeholder(out / name, f"certified accuracy, {question}", why))
    fixed, vary, fewest = next(iter(CURVE_FIGURES.values()))
    plots.curve_panels(
        curves_proxy,
        curve_panels(experiments, ("norm", *fixed), vary, fewest),
        out / "certified_accuracy_proxy.png",
        f"{dataset}: proxy accuracy vs volume-equivalent radius (NOT a certificate)",
        proxy=True,
    )
    plots.log_volume(experiments, out / "log_volume.png", f"{dataset}: log-volume of certified regions")
    if len(mem):
        plots.memory_effect(mem, out / "memory_effect.png", f"{dataset}: effect of the memory step")
    else:
        held.add(_placeholder(out / "memory_effect.png", "memory step", "no experiment uses it"))
    for method in theta_methods():
        path = out / THETA_FIGURE.format(method=method)
        panels, why = theta_panels(experiments, method, cfg, data)
        if panels:
            plots.theta_maps(panels, path, f"{dataset}: {method} per-pixel θ")
        else:
            print(f"smoothcert report: {path.name} is a placeholder ({why})", file=sys.stderr)
            held.add(_placeholder(path, f"{method} θ maps", why))
    if any(e.table["n"].nunique() > 1 for e in experiments if "n" in e.table):
        plots.draws(experiments, out / "draws.png", f"{dataset}: estimation draws per input (sequential)")
    else:
        held.add(
            _placeholder(out / "draws.png", "draws per input", "every input used the same n (certify.mode: fixed)")
        )
    if metrics:
        plots.training(metrics, out / "training.png", f"{dataset}: training")
    else:
        held.add(_placeholder(out / "training.png", "training curves", "no model trained in this run"))
    return held
