"""The results page of a run: one markdown file that answers "does it reproduce the papers?" from the report.

:func:`page` turns the report's tables (summary, claims, memory, objectives, training) and the run's config
into ``page.md`` next to the report's figures; :func:`publish` copies it with the figures it links to
(``docs/results/<dataset>.md`` + ``docs/results/<dataset>/``). Every number on the page comes from the
tables; the headline is computed, never written by hand.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import write_text
from smoothcert.errors import require
from smoothcert.reporting import CURVE_FIGURES, theta_figures
from smoothcert.reporting import claims as claims_mod
from smoothcert.reporting import tables as rep
from smoothcert.reporting.importers import IMPORTED

PAGE = "page.md"
FRONT = "front.rst"  # the HTML report's front page (included by workflow/report/workflow.rst)
FRONT_CLAIMS = ["claim", "setting", "metric", "inputs", "difference", "p_holm", "verdict"]
SHOWN = ["objective", "sigma_mode", "method", "sigma"]
MEDIAN_RADIUS = "median_radius"  # median certified radius among certified correct inputs
SIGMA_SPREAD = ["σ_median", "σ_p95", "σ_max"]  # per-input σ of data-dependent experiments
ACR_NOTE = (
    "What ACR rewards: it averages radii, so a few inputs certified at very large radii can carry it — a per-input σ "
    "grown without bound on inputs whose class the model gives to heavy noise certifies huge radii there (sound, but "
    "about the noise label, not the method; see σ_max). Certified accuracy at fixed radii, the papers' metric, does "
    "not reward that: read the acc@r columns first, ACR beside the median certified radius."
)
NORM_NAMES = {"l2": "ℓ2", "l1": "ℓ1"}
MIXED = ["norm", *SHOWN]  # the keys of a table whose rows mix norms (σ = 0.5 in ℓ2 and in ℓ1 are different runs)
FIGURE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)/]+\.png)\)")


def _decides(cfg: dict) -> bool:
    """Whether certification is sequential with decide-at-radius targets."""
    c = cfg["certify"]
    return c["mode"] == "sequential" and c["sequential"]["target"] == "decide"


def _radii(cfg: dict, norm: str) -> list[float]:
    """Radii worth a column: the decided radii in sequential 'decide' mode (where its stopping rule aims), else
    the report grid."""
    if _decides(cfg):
        return [float(r) for r in cfg["certify"]["sequential"]["radii"]]
    return [float(r) for r in cfg["report"]["radii"][norm]]


def _table(df: pd.DataFrame, cols: list[str]) -> str:
    cols = [c for c in cols if c in df]
    return rep.markdown(df[cols].reset_index(drop=True)) if len(df) else "(none in this run)\n"


def _given(value) -> str:
    """A config value as text: ``none`` for null (never Python's ``None``)."""
    return "none" if value is None else str(value)


def headline(summ: pd.DataFrame, claims: pd.DataFrame, radius: float, level: float) -> str:
    """One line, the papers' metric first: the best certified accuracy at ``radius``, the claim verdicts at the
    family-wise ``level``, then the best ACR with its median certified radius among correct inputs."""
    parts = []
    col = f"acc@{rep.rlabel(radius)}"
    if len(summ) and col in summ and summ[col].notna().any():
        best = summ.loc[summ[col].idxmax()]
        parts.append(
            f"best certified accuracy at ℓ2 r = {radius:g}: {best[col]:.1%} ({best['method']}, σ = {best['sigma']:g}, "
            f"{best['objective']}{'' if best['objective'] == IMPORTED else ' training'})"
        )
    if len(claims):
        n = claims_mod.counts(claims)
        parts.append(
            f"claims at family-wise level {level:g} (Holm): {n['reproduced']} of {len(claims)} rows reproduced, "
            f"{n['not reproduced']} not reproduced, {n['inconclusive']} inconclusive, {n['too few inputs']} with too "
            "few inputs"
        )
    if len(summ) and summ["acr"].notna().any():
        best = summ.loc[summ["acr"].idxmax()]
        med = best.get(MEDIAN_RADIUS, float("nan"))
        beside = f", median certified radius {med:.3f}" if pd.notna(med) else ""
        parts.append(
            f"best ACR {best['acr']:.3f} ({best['method']}, σ = {best['sigma']:g}, {best['objective']}{beside})"
        )
    return "; ".join(parts) + "." if parts else "no experiments."


def extras(experiments) -> pd.DataFrame:
    """Per experiment: median certified radius among certified correct inputs, and for per-input-σ experiments the
    distribution of the per-input σ (median, 95th percentile, max; DDRS's σ, ANCER's geometric-mean θ, min θ where
    an import records only that)."""
    from smoothcert.methods import get
    from smoothcert.reporting.claims import family

    rows = []
    for e in experiments:
        t = e.table
        ok = (t["correct"] > 0) & (t["predict"] >= 0)
        row = {"model_id": e.model_id, "method": e.method, MEDIAN_RADIUS: t["radius"][ok].median()}
        fam = family(e)
        if fam is not None and get(fam).per_input_sigma:
            col = next((c for c in ("sigma_gmean", "sigma_min") if c in t and t[c].notna().any()), None)
            if col is not None:
                v = t[col].dropna().to_numpy(dtype=float)
                row.update(zip(SIGMA_SPREAD, (np.median(v), np.quantile(v, 0.95), v.max())))
        rows.append(row)
    return pd.DataFrame(rows, columns=["model_id", "method", MEDIAN_RADIUS, *SIGMA_SPREAD])


def imported_subject(summ: pd.DataFrame) -> str:
    """The methods of imported tables and the norms and σ they certify at, from the tables (``cohen, ddrs at ℓ2 σ =
    0.25, 0.5``)."""
    if not len(summ):
        return "no tables"
    methods = ", ".join(dict.fromkeys(summ["method"]))
    at = "; ".join(
        f"{NORM_NAMES.get(norm, norm)} σ = {', '.join(f'{v:g}' for v in sorted(part['sigma'].dropna().unique()))}"
        for norm, part in summ.groupby("norm", sort=False)
    )
    return f"{methods} at {at}"


def _model_line(m: dict) -> str:
    """One configured models[] entry: a trained one by objective / σ mode, a checkpoint entry by its file."""
    if "checkpoint" in m:
        what = (
            f"pretrained {Path(m['checkpoint']).name} ({m.get('format', 'auto')} format) {m['norm']} σ = {m['sigma']:g}"
        )
    else:
        what = f"{m['objective']}/{m['sigma_mode']} {m['norm']} σ ∈ {{{', '.join(f'{x:g}' for x in m['sigmas'])}}}"
    return f"{what} certified by {', '.join(m['methods'])}"


def _setup(cfg: dict, summ: pd.DataFrame, classes: list[str] | None = None) -> str:
    c, t = cfg["certify"], cfg["train"]
    models = "; ".join(_model_line(m) for m in cfg["models"])
    if c["mode"] == "sequential":
        s = c["sequential"]
        cert = (
            f"sequential ({s['target']} at r ∈ {{{', '.join(f'{r:g}' for r in s['radii'])}}}, "
            f"n from {s['n_min']:,} to n_max = {s['n_max']:,}, ×{s['ratio']:g} per round, {s['bound']} bound)"
        )
    else:
        cert = f"fixed n = {c['n']:,}"
    inputs = int(summ["inputs"].max()) if len(summ) else 0
    sel = cfg["test"]
    lines = [
        f"- **Data**: {cfg['data']['dataset']}; test inputs: {inputs} per experiment "
        f"(start {sel['start']}, every {sel['step']}, limit {_given(sel['limit'])}); training images: "
        f"{'all' if cfg['data'].get('train_limit') is None else cfg['data']['train_limit']}"
        + (f"; {len(classes)} classes: {', '.join(classes)}." if classes else "."),
        f"- **Base model**: {cfg['model']['arch']}; {t['epochs']} epochs, batch {t['batch_size']}, SGD lr {t['lr']:g} "
        f"(×{t['lr_gamma']:g} every {t['lr_step']} epochs).",
        f"- **Experiments**: {models}.",
        f"- **Certification**: {cert}; n0 = {c['n0']} selection draws; α = {c['alpha']:g} per certificate.",
    ]
    from smoothcert.methods import registry

    methods = registry()
    used = [m for spec in cfg["models"] for m in spec["methods"] if m in methods]
    for section in dict.fromkeys(methods[m].section for m in used if methods[m].section):
        if section in cfg:
            values = ", ".join(f"{k} {_given(v)}" for k, v in cfg[section].items())
            lines.append(f"- **{section}** (methods' section of params.yaml): {values}.")
    return "\n".join(lines) + "\n"


def _imports_setup(cfg: dict, imports: list[str]) -> str:
    """Setup lines of a page built from imported tables: what each import is, and the config's report settings."""
    rc = cfg["report"]
    radii = "; ".join(f"{n} {{{', '.join(f'{r:g}' for r in v)}}}" for n, v in rc["radii"].items())
    lines = [f"- **Imported** {line}." for line in imports]
    lines.append(
        f"- **Report settings** (params.yaml): radius grids {radii}; App.-D bound at ρ = {rc['rho']:g} with the "
        f"tables' α (else {cfg['certify']['alpha']:g})."
    )
    return "\n".join(lines) + "\n"


def page(
    cfg: dict,
    summ,
    claims,
    mem,
    objectives,
    train,
    report_files: set[str],
    imports=(),
    run: bool = True,
    more: pd.DataFrame | None = None,
    classes: list[str] | None = None,
    paper_md: str | None = None,
    capped: dict | None = None,
    dataset: str | None = None,
) -> tuple[str, str]:
    """(markdown, headline) of the results page; figures are linked by file name (in the report folder).

    ``imports``: one line per imported table; ``run`` False: the page is about the imports alone (title and
    setup describe them, not params.yaml's experiments); ``more``: :func:`extras` of the experiments; ``classes``:
    the class names of a folder / npz dataset; ``paper_md``: the published-table comparison
    (:func:`smoothcert.reporting.paper.report_markdown`), shown after the claims; ``capped``: a capped run's
    experiments beside their uncapped twins (:mod:`smoothcert.reporting.cap`; its ``rows``, ``figure``), shown after
    the certified accuracy; ``dataset``: what the page is about (default: the config's dataset; on imports alone
    the caller's name for their data, followed by the methods, norms and σ the tables hold)."""
    dataset = dataset or cfg["data"]["dataset"]
    if not run:
        dataset = f"{dataset} — {imported_subject(summ)}"
    radius = claims_mod.RADIUS
    cc = cfg["report"]["claims"]
    if more is not None and len(summ):
        summ = summ.merge(more, on=["model_id", "method"], how="left")
    head = headline(summ[summ["norm"] == "l2"] if len(summ) else summ, claims, radius, cc["level"])

    def fig(name: str, alt: str) -> str:
        return f"![{alt}]({name})\n" if name in report_files else ""

    out = [
        f"# {dataset}: does it reproduce the papers?\n",
        f"_Generated by `smoothcert report` from the {'run' if run else 'imported'} tables (report/page.md); "
        "published with `smoothcert publish`. Do not edit by hand._\n",
        f"**Headline**: {head}\n",
        "## Setup\n",
        (_setup(cfg, summ, classes) if run else "") + (_imports_setup(cfg, list(imports)) if imports else ""),
        "## Claims checked\n",
        claims_mod.explain(claims, cc["level"], cc["min_inputs"]),
        rep.markdown(claims) if len(claims) else "No pair of experiments in this run checks a claim.\n",
    ]
    if paper_md:  # one level down: the comparison's own title becomes a section of this page
        out.append(re.sub(r"^(#+) ", r"#\1 ", paper_md, flags=re.M))
    for norm, part in summ.groupby("norm", sort=False) if len(summ) else []:
        grid = [f"acc@{rep.rlabel(r)}" for r in (_radii(cfg, norm) if run else cfg["report"]["radii"][norm])]
        out += [
            f"## Certified accuracy ({norm})\n",
            "acc@r: fraction of test inputs classified correctly with a certified radius ≥ r (abstentions count as "
            "wrong), the papers' metric; then ACR (average certified radius) and the median certified radius among "
            "certified correct inputs; for per-input-σ experiments the distribution of the per-input σ (median, 95th "
            f"percentile, max). {ACR_NOTE}",
            " In sequential *decide* mode each input draws until every decided radius is settled (certified or out "
            "of reach), so certified accuracy at the decided radii (the columns) is close to what fixed n = n_max gives "
            "(within 1 point on MNIST-5k: README, Performance), while an input's radius is σ·Φ⁻¹(p̲A) where it stopped: ACR and the curves between "
            "decided radii sit below fixed-n ones.\n"
            if run and _decides(cfg)
            else "\n",
        ]
        for template in CURVE_FIGURES:
            name = template.format(norm=norm)
            out.append(fig(name, name[:-4].replace("_", " ")))
        spread = [c for c in SIGMA_SPREAD if c in part and part[c].notna().any()]
        out.append(_table(part, SHOWN + ["inputs", "clean", "abstain", *grid, "acr", MEDIAN_RADIUS, *spread]))
    if capped is not None:
        from smoothcert.reporting import cap as cap_mod

        rows = capped["rows"]
        spread = [c for c in SIGMA_SPREAD if c in rows and rows[c].notna().any()]
        columns = {
            norm: ["inputs", "clean", "abstain", *[f"acc@{rep.rlabel(r)}" for r in _radii(cfg, norm)], "acr"]
            + [MEDIAN_RADIUS, *spread, "at cap"]
            for norm in dict.fromkeys(rows["norm"])
        }
        figure = capped["figure"] if capped["figure"] in report_files else None
        out.append(cap_mod.section(cfg, capped, capped["pairs"], capped["experiments"], columns, rows, figure))
    if len(summ):
        proxy = [c for c in summ if c.startswith(rep.PROXY_PREFIX) and summ[c].notna().any()]
        vol = summ[summ["median_log_volume"].notna()]
        out += [
            "## Certified regions: volume and proxy radius\n",
            "Median log-volume (nats) of the certified region over certified correct inputs, and proxy accuracy "
            "(the proxy radius is the radius of the ball with the region's volume — ANCER's figure of merit, NOT a "
            "certificate; equal to the certified radius for isotropic methods).\n",
            fig("log_volume.png", "log-volume"),
            fig("certified_accuracy_proxy.png", "proxy accuracy"),
            _table(vol, MIXED + ["median_log_volume", *proxy]),
        ]
    out += ["## Memory step (data-dependent σ made sound)\n", fig("memory_effect.png", "memory step")]
    if len(mem):
        out.append(
            "acc@0 before / after: certified accuracy at r = 0 of the per-input certificates and of the sound ones. "
            "inputs lost: share certified correctly before and not after (the claim row's number); inputs gained: "
            "the reverse (an input inside another input's recorded region takes that region's class, sometimes the "
            "right one). net change = after − before = gained − lost, so it can be positive. Points are percent of "
            "the inputs; the action columns count inputs.\n"
        )
        view = mem.assign(
            **{
                "net change (points)": 100 * (mem["after_acc@0"] - mem["before_acc@0"]),
                "inputs lost (points)": 100 * mem["lost@0"],
                "inputs gained (points)": 100 * mem["gained@0"],
                "ACR change": mem["after_acr"] - mem["before_acr"],
            }
        )
        out.append(
            _table(
                view,
                MIXED
                + ["inputs", "before_acc@0", "after_acc@0", "net change (points)", "inputs lost (points)"]
                + ["inputs gained (points)", "before_acr", "after_acr", "ACR change", *rep.MEMORY_ACTIONS],
            )
        )
    else:
        out.append("No experiment in this run uses the memory step.\n")
    out += [
        "## Training objectives under one certification\n",
        "ACR (and certified accuracy at r = 0.5) of each base model under each certification method.\n",
        _table(objectives, list(objectives.columns)) if len(objectives) else "(one objective only)\n",
        "## Certification cost (per input)\n",
        "opt_time / opt_evals: σ/θ search seconds and forward passes; time / evals: certification seconds and "
        "forward passes (Smooth-Reduce: one per patch); evals_certified: evals per non-abstaining input.\n",
        fig("draws.png", "draws per input"),
        _table(summ, MIXED + rep.COST + ["evals_certified"]),
        "## Per-pixel θ and training\n",
        *[fig(name, name[:-4]) for name in theta_figures()],
        fig("training.png", "training curves"),
        _table(train, ["model_id", "epochs", "train_acc", "test_clean_acc", "test_noisy_acc", "train_time"]),
    ]
    return "\n".join(x for x in out if x), head


def _rst(text) -> str:
    """``text`` with reStructuredText's inline markup characters escaped (and ``@``: no e-mail links)."""
    return re.sub(r"([\\*`|_@])", r"\\\1", str(text))


def front(title: str, head: str, claims, level: float, figure: Path | None, about: str = "") -> str:
    """The HTML report's front page in reStructuredText: the results page's title, headline, ``about`` (one line on
    what was certified: the run's data and α, or the imported tables), claims table and its first figure (embedded,
    so report.html stays one self-contained file)."""
    import base64
    import csv
    import io

    out = [_rst(title), "=" * len(_rst(title)), "", f"**Headline**: {_rst(head)}", ""]  # underline ≥ the title
    if about:
        out += [_rst(about), ""]
    if len(claims):
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for _, row in claims[FRONT_CLAIMS].iterrows():
            writer.writerow(
                [_rst(f"{v:.3g}" if isinstance(v, float) else v) if pd.notna(v) else "" for v in row.to_list()]
            )
        out += [
            f".. csv-table:: Claims of the seed papers (Holm over the page, family-wise level {level:g})",
            "   :header: " + ", ".join(FRONT_CLAIMS),
            "",
            *("   " + line for line in buf.getvalue().splitlines()),
            "",
        ]
    if figure is not None:
        data = base64.b64encode(figure.read_bytes()).decode()
        lines = [data[i : i + 96] for i in range(0, len(data), 96)]  # docutils limits a line's length
        out += [".. image:: data:image/png;base64,", *("   " + line for line in lines), "   :width: 100%", ""]
    out.append(
        "The whole results page is report/page.md; every table and figure is below, by category (Tables, Plots)."
    )
    return "\n".join(out) + "\n"


def publish(report: str | Path, out: str | Path) -> str:
    """Copy ``report/page.md`` to ``out`` and the figures it links into ``out``'s stem folder; returns the
    headline line. Links are rewritten to ``<stem>/<figure>.png``; a missing figure is an error."""
    report, out = Path(report), Path(out)
    src = report / PAGE
    require(src.is_file(), f"no results page {src} (run 'smoothcert report' first)")
    text = src.read_text()
    figures = sorted(set(FIGURE_LINK.findall(text)), key=lambda x: x[1])
    missing = [f for _, f in figures if not (report / f).is_file()]
    require(not missing, f"{src} links figures missing from {report}: {missing}")
    folder = out.parent / out.stem
    folder.mkdir(parents=True, exist_ok=True)
    for _, name in figures:
        shutil.copyfile(report / name, folder / name)
    write_text(out, FIGURE_LINK.sub(lambda m: f"![{m.group(1)}]({out.stem}/{m.group(2)})", text))
    found = [line for line in text.splitlines() if line.startswith("**Headline**")]
    return found[0] if found else ""
