"""Comparison metrics over certificate tables (pure functions: DataFrames in, DataFrames out).

A certificate table has the columns of :data:`smoothcert.engine.certificates.COLUMNS` (one row per
test input). An input counts as certified at radius r when it is classified
correctly (not abstained) and its radius is ≥ r, as in Cohen et al. (2019).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from smoothcert.engine import stats
from smoothcert.engine.certificates import ABSTAIN, MEMORY_ACTIONS

KEYS = ["model_id", "objective", "sigma_mode", "method", "sigma", "norm"]
# Summary columns compared across rows (+1: higher is better, -1: lower). Cost columns are not ranked, and
# neither is proxy_acc@r: ANCER's volume-equivalent radius is no ball certificate, so it never ranks a method.
RANKED_PREFIXES = {"acc@": 1, "lb@": 1}
PROXY_PREFIX = "proxy_acc@"
RANKED = {"clean": 1, "acr": 1, "abstain": -1, "median_log_volume": 1}
COST = ["opt_time", "opt_evals", "time", "evals"]
UNITS = {"opt_time": "s", "time": "s", "train_time": "s"}  # shown in markdown headers (CSV columns stay bare)
# Counts (or their means per input): whole numbers in markdown, never 0.000.
COUNTS = {"inputs", "epochs", "opt_evals", "evals", "evals_certified", *MEMORY_ACTIONS}


@dataclass
class Experiment:
    """One certified experiment: its identity, final table and (memory methods) the table before memory."""

    model_id: str
    objective: str
    sigma_mode: str
    method: str
    sigma: float
    norm: str
    table: pd.DataFrame
    before: pd.DataFrame | None = None
    theta: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.model_id}/{self.method}"

    def keys(self) -> dict:
        return {k: getattr(self, k) for k in KEYS}


def rlabel(r: float) -> str:
    """Column suffix for radius ``r`` (``0``, ``0.25``, ``1``)."""
    return f"{float(r):g}"


def _hits(df: pd.DataFrame, radii, column: str = "radius") -> np.ndarray:
    """(m, len(radii)) bool: input certified correct at each radius."""
    ok = (df["correct"].to_numpy(dtype=float) > 0) & (df["predict"].to_numpy() != ABSTAIN)
    rad = df[column].to_numpy(dtype=float)
    return ok[:, None] & (rad[:, None] >= np.asarray(radii, dtype=float)[None, :])


def certified_accuracy(df: pd.DataFrame, radii, column: str = "radius") -> np.ndarray:
    """Fraction of inputs certified correct at each radius (NaN for an empty table)."""
    radii = np.atleast_1d(np.asarray(radii, dtype=float))
    if len(df) == 0:
        return np.full(len(radii), np.nan)
    return _hits(df, radii, column).mean(0)


def acr(df: pd.DataFrame) -> float:
    """Average certified radius: mean of radius·correct (abstentions count 0)."""
    if len(df) == 0:
        return float("nan")
    ok = (df["correct"].to_numpy(dtype=float) > 0) & (df["predict"].to_numpy() != ABSTAIN)
    return float(np.mean(np.where(ok, df["radius"].to_numpy(dtype=float), 0.0)))


def abstention_rate(df: pd.DataFrame) -> float:
    """Fraction of inputs on which the smoothed classifier abstains."""
    return float(np.mean(df["predict"].to_numpy() == ABSTAIN)) if len(df) else float("nan")


def clean_accuracy(df: pd.DataFrame) -> float:
    """Smoothed clean accuracy (= certified accuracy at radius 0)."""
    return float(certified_accuracy(df, [0.0])[0])


def median_log_volume(df: pd.DataFrame) -> float:
    """Median log-volume of the certified region over certified correct inputs (NaN if none)."""
    if "log_volume" not in df:
        return float("nan")
    ok = _hits(df, [0.0])[:, 0] & (df["radius"].to_numpy(dtype=float) > 0)
    lv = df["log_volume"].to_numpy(dtype=float)[ok]
    lv = lv[np.isfinite(lv)]
    return float(np.median(lv)) if len(lv) else float("nan")


def lower_bounds(df: pd.DataFrame, radii, alpha: float, rho: float) -> np.ndarray:
    """App.-D lower bound on the true certified accuracy at each radius (w.p. ≥ 1 - rho)."""
    hits = _hits(df, radii)
    return np.array([stats.certified_accuracy_lower_bound(hits[:, j], alpha, rho) for j in range(hits.shape[1])])


def _mean(df: pd.DataFrame, col: str) -> float:
    if col not in df:
        return float("nan")
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")


def table_alpha(df: pd.DataFrame, default: float) -> float:
    """The per-certificate failure probability recorded in the table (else ``default``)."""
    if "alpha" in df:
        a = pd.to_numeric(df["alpha"], errors="coerce").dropna()
        if len(a):
            return float(a.max())
    return float(default)


def summary_row(df: pd.DataFrame, radii, alpha: float, rho: float) -> dict:
    """Every summary metric of one certificate table, for the radius grid ``radii``."""
    row = {"inputs": len(df), "clean": clean_accuracy(df), "abstain": abstention_rate(df), "acr": acr(df)}
    proxy = "proxy_radius" if "proxy_radius" in df and df["proxy_radius"].notna().all() else "radius"
    for r, a, p, lb in zip(
        radii,
        certified_accuracy(df, radii),
        certified_accuracy(df, radii, proxy),
        lower_bounds(df, radii, table_alpha(df, alpha), rho),
    ):
        row[f"acc@{rlabel(r)}"] = a
        row[f"proxy_acc@{rlabel(r)}"] = p
        row[f"lb@{rlabel(r)}"] = lb
    row["median_log_volume"] = median_log_volume(df)
    for c in COST:
        row[c] = _mean(df, c)
    row["evals_certified"] = _mean(df[df["predict"] >= 0], "evals") if "predict" in df else float("nan")
    return row


def _ordered(columns, radii_by_norm: dict) -> list[str]:
    grid = sorted({rlabel(r) for rs in radii_by_norm.values() for r in rs}, key=float)
    out = KEYS + ["inputs", "clean", "abstain", "acr"]
    for prefix in ("acc@", "proxy_acc@", "lb@"):
        out += [f"{prefix}{g}" for g in grid]
    out += ["median_log_volume"] + COST
    return [c for c in out if c in columns] + [c for c in columns if c not in out]


def summary(experiments: list[Experiment], radii_by_norm: dict, alpha: float, rho: float) -> pd.DataFrame:
    """One row per experiment: accuracy/proxy accuracy/App.-D bound on the norm's grid, ACR, volume, cost."""
    rows = [{**e.keys(), **summary_row(e.table, radii_by_norm[e.norm], alpha, rho)} for e in experiments]
    df = pd.DataFrame(rows)
    return df[_ordered(df.columns, radii_by_norm)] if len(df) else df


def direction(column: str) -> int:
    """+1 if higher is better, -1 if lower, 0 if the column is not ranked."""
    if column in RANKED:
        return RANKED[column]
    return next((d for p, d in RANKED_PREFIXES.items() if column.startswith(p)), 0)


def best_mask(df: pd.DataFrame, group: str | None = "norm", tol: float = 1e-12) -> pd.DataFrame:
    """Boolean frame: the best value of each ranked column (ties included) within each ``group``."""
    mask = pd.DataFrame(False, index=df.index, columns=df.columns)
    groups = df.groupby(group).groups.values() if group and group in df else [df.index]
    for col in df.columns:
        d = direction(col)
        if not d:
            continue
        for ix in groups:
            v = pd.to_numeric(df.loc[ix, col], errors="coerce")
            if v.notna().sum() < 2 or v.max() - v.min() <= tol:
                continue  # nothing to rank: one row, or all equal
            best = v.max() if d > 0 else v.min()
            mask.loc[ix, col] = (v - best).abs() <= tol
    return mask


def memory_table(experiments: list[Experiment], radii_by_norm: dict) -> pd.DataFrame:
    """Per memory experiment: certified accuracy and ACR before/after the memory step, the share of inputs
    certified correctly (r = 0) before but not after (``lost@0``) and after but not before (``gained@0``; so
    after_acc@0 − before_acc@0 = gained@0 − lost@0), and how many inputs each action hit."""
    rows = []
    for e in experiments:
        if e.before is None:
            continue
        radii = radii_by_norm[e.norm]
        row = {**e.keys(), "inputs": len(e.table)}
        for stage, df in (("before", e.before), ("after", e.table)):
            row[f"{stage}_acr"] = acr(df)
            row[f"{stage}_abstain"] = abstention_rate(df)
            for r, a in zip(radii, certified_accuracy(df, radii)):
                row[f"{stage}_acc@{rlabel(r)}"] = a
        was = pd.Series(_hits(e.before, [0.0])[:, 0], index=e.before["idx"].to_numpy())
        now = pd.Series(_hits(e.table, [0.0])[:, 0], index=e.table["idx"].to_numpy()).reindex(
            was.index, fill_value=False
        )
        row["lost@0"] = float((was & ~now).mean())  # certified correct before, not after (the claim's number)
        row["gained@0"] = float((~was & now).mean())  # the reverse: an input inside another's region, rightly
        counts = e.table["memory"].value_counts() if "memory" in e.table else pd.Series(dtype=int)
        for action in MEMORY_ACTIONS:
            row[action] = int(counts.get(action, 0))
        rows.append(row)
    return pd.DataFrame(rows)


def objective_table(summ: pd.DataFrame, radius: float | None = None) -> pd.DataFrame:
    """Certified accuracy (ACR and acc at ``radius``) per (norm, σ, objective, sigma_mode) × method."""
    if summ.empty:
        return summ
    values = ["acr"] + ([f"acc@{rlabel(radius)}"] if radius is not None and f"acc@{rlabel(radius)}" in summ else [])
    wide = summ.pivot_table(
        index=["norm", "sigma", "objective", "sigma_mode"], columns="method", values=values, aggfunc="first", sort=False
    )
    wide.columns = [f"{m} {v}" for v, m in wide.columns]
    return wide.reset_index()


def training_table(metrics: dict[str, pd.DataFrame], specs) -> pd.DataFrame:
    """Final-epoch training metrics per model (``metrics``: model id → metrics.tsv frame)."""
    rows = []
    for spec in specs:
        m = metrics.get(spec.id)
        if m is None or m.empty:
            continue
        last = m.iloc[-1]
        rows.append(
            {
                "model_id": spec.id,
                "objective": spec.objective,
                "sigma_mode": spec.sigma_mode,
                "norm": spec.norm,
                "sigma": spec.sigma,
                "epochs": int(last["epoch"]),
                "train_loss": float(last["train_loss"]),
                "train_acc": float(last["train_acc"]),
                "test_clean_acc": float(last["test_clean_acc"]),
                "test_noisy_acc": float(last["test_noisy_acc"]),
                "train_time": float(pd.to_numeric(m["time"], errors="coerce").sum()),
            }
        )
    return pd.DataFrame(rows)


def draws_per_input(df: pd.DataFrame) -> float:
    """Mean noise draws per input, selection (n0) and estimation (n) together (NaN if the table lacks them)."""
    if not {"n0", "n"} <= set(df) or len(df) == 0:
        return float("nan")
    return float((pd.to_numeric(df["n0"], errors="coerce") + pd.to_numeric(df["n"], errors="coerce")).mean())


def experiment_headline(e: Experiment, radii) -> dict:
    """One experiment at a glance: certified accuracy at ``radii``, ACR, abstention, draws per input (NaN left out)."""
    vals = {f"acc@{rlabel(r)}": a for r, a in zip(radii, certified_accuracy(e.table, radii))}
    vals.update(acr=acr(e.table), abstain=abstention_rate(e.table), draws=draws_per_input(e.table))
    return {k: float(v) for k, v in vals.items() if pd.notna(v)}


def run_headline(experiments: list[Experiment], radii_by_norm: dict) -> dict:
    """The run at a glance (``metrics.json``), a few numbers so that ``dvc exp show`` fits a terminal: per norm, the
    best certified accuracy at each of ``radii_by_norm`` over the norm's experiments (the envelope over σ and method
    that the papers quote) and the best ACR; over every experiment, the mean abstention and the mean draws per input
    (inputs weighted alike)."""
    out: dict = {}
    for norm in dict.fromkeys(e.norm for e in experiments):
        runs = [e for e in experiments if e.norm == norm]
        radii = radii_by_norm.get(norm, [])
        best = {
            f"acc@{rlabel(r)}": float(np.nanmax([certified_accuracy(e.table, [r])[0] for e in runs])) for r in radii
        }
        best["acr"] = float(np.nanmax([acr(e.table) for e in runs]))
        out[norm] = {k: v for k, v in best.items() if np.isfinite(v)}
    for key, per_input in (("abstain", abstention_rate), ("draws", draws_per_input)):
        pairs = [(per_input(e.table), len(e.table)) for e in experiments]
        pairs = [(v, m) for v, m in pairs if np.isfinite(v) and m]
        if pairs:
            out[key] = float(sum(v * m for v, m in pairs) / sum(m for _, m in pairs))
    return out


def curve_radii(
    experiments: list[Experiment], radii_by_norm: dict, norm: str, points: int = 801, column: str = "radius"
) -> np.ndarray:
    """A fine radius grid for ``norm``: 0 to the larger of the configured grid and the largest radius seen."""
    top = max(radii_by_norm.get(norm, [0.0]) or [0.0])
    for e in experiments:
        if e.norm == norm and column in e.table and len(e.table):
            top = max(top, float(np.nanmax(e.table[column].to_numpy(dtype=float))))
    return np.linspace(0.0, top if top > 0 else 1.0, points)


def curves(
    experiments: list[Experiment], radii_by_norm: dict, column: str = "radius", points: int = 801
) -> pd.DataFrame:
    """Long table (experiment, method, sigma, norm, radius, certified_accuracy) on a fine grid per norm."""
    parts = []
    for norm in dict.fromkeys(e.norm for e in experiments):
        grid = curve_radii(experiments, radii_by_norm, norm, points, column)
        for e in experiments:
            if e.norm != norm:
                continue
            col = column if column in e.table and e.table[column].notna().all() else "radius"
            parts.append(
                pd.DataFrame(
                    {
                        "experiment": e.key,
                        "method": e.method,
                        "sigma": e.sigma,
                        "norm": norm,
                        "radius": grid,
                        "certified_accuracy": certified_accuracy(e.table, grid, col),
                    }
                )
            )
    cols = ["experiment", "method", "sigma", "norm", "radius", "certified_accuracy"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def markdown(
    df: pd.DataFrame, bold: pd.DataFrame | None = None, digits: int = 3, general: tuple[str, ...] = ("sigma", "radius")
) -> str:
    """A GitHub markdown table; cells flagged in ``bold`` are **bold**; NaN and None → empty; ``general`` columns
    as %g; :data:`COUNTS` as whole numbers (a mean count rounded); a column with a unit (:data:`UNITS`) says it in
    its header."""

    def cell(v, col) -> str:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            if np.isinf(v):
                return "∞" if v > 0 else "-∞"
            if col in general:
                return f"{v:g}"
            if col in COUNTS:
                return f"{v:.0f}"
            if abs(v) >= 1e4 or (abs(v) >= 10 and float(v).is_integer()):
                return f"{v:.0f}"  # counts (evals) and large values
            return f"{v:.{digits}f}"
        return str(v)

    head = "| " + " | ".join(f"{c} ({UNITS[c]})" if c in UNITS else str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" if not pd.api.types.is_numeric_dtype(df[c]) else "---:" for c in df.columns) + "|"
    lines = [head, sep]
    for ix, row in df.iterrows():
        cells = []
        for c in df.columns:
            text = cell(row[c], c)
            if bold is not None and text and bool(bold.loc[ix, c]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    """Drop columns that are NaN in every row (e.g. another norm's radii)."""
    return df.loc[:, [c for c in df.columns if not df[c].isna().all()]]
