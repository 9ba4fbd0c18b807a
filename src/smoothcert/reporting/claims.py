"""Claims of the seed papers, checked on a run: each a paired comparison over the same test inputs.

A claim compares two experiments that certified the same inputs (same dataset, σ and norm): per input, the
difference of a metric (certified radius counted only when correct, as in ACR; certified-at-r; log-volume and
proxy radius over the inputs both certified), its mean and a 95 % t-interval over inputs. A claim that says
"A raises X over B" is *reproduced* when the whole interval is above 0, *not reproduced* when it is at or
below 0, *inconclusive* otherwise. The proxy radius is no certificate; it is compared only where the paper
does (ANCER). Names of methods are the papers' — these rows are about their methods.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from smoothcert.reporting.tables import Experiment

CLAIM_COLUMNS = ["claim", "paper", "setting", "metric", "inputs", "difference", "ci_low", "ci_high", "verdict"]
RADIUS = 0.5  # the radius the papers quote certified accuracy at


def _per_input(e: Experiment, metric: str) -> pd.Series:
    t = e.table.set_index("idx")
    ok = (t["correct"] > 0) & (t["predict"] >= 0)
    if metric == "acr":
        return t["radius"].where(ok, 0.0)
    if metric == f"certified@{RADIUS:g}":
        return (ok & (t["radius"] >= RADIUS)).astype(float)
    if metric in ("log_volume", "proxy_radius"):
        return t[metric].where(ok & np.isfinite(t[metric]))
    if metric == "certified@0 lost":
        before = e.before.set_index("idx")
        was = (before["correct"] > 0) & (before["predict"] >= 0)
        return (was & ~ok.reindex(was.index, fill_value=False)).astype(float)
    raise ValueError(f"unknown metric {metric!r}")


def paired(a: pd.Series, b: pd.Series | None = None, level: float = 0.95) -> tuple[int, float, float, float]:
    """(inputs, mean of a − b, CI low, CI high) over the inputs both define (t-interval of the mean)."""
    d = (a - b) if b is not None else a
    d = d.dropna().to_numpy(dtype=float)
    n = len(d)
    if n == 0:
        return 0, float("nan"), float("nan"), float("nan")
    mean = float(d.mean())
    if n < 2 or d.std(ddof=1) == 0:
        return n, mean, mean, mean
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / np.sqrt(n))
    return n, mean, mean - half, mean + half


def _verdict(low: float, high: float, raises: bool = True) -> str:
    if not np.isfinite(low):
        return "not run"
    if raises:
        return "reproduced" if low > 0 else ("not reproduced" if high <= 0 else "inconclusive")
    return "reproduced" if high <= 0.01 else ("not reproduced" if low > 0.01 else "inconclusive")


def claims(experiments: list[Experiment]) -> pd.DataFrame:
    """One row per claim and setting that the run's experiments allow checking."""
    by = {(e.objective, e.sigma_mode, e.norm, e.sigma, e.method): e for e in experiments}
    rows = []

    def add(claim, paper, setting, metric, a, b=None, raises=True):
        n, mean, low, high = paired(_per_input(a, metric), None if b is None else _per_input(b, metric))
        rows.append([claim, paper, setting, metric, n, mean, low, high, _verdict(low, high, raises)])

    for (obj, mode, norm, sigma, method), e in by.items():
        setting = f"{obj}/{mode} {norm} σ={sigma:g}"
        cohen = by.get((obj, mode, norm, sigma, "cohen"))
        if method == "ddrs" and cohen is not None and obj == "gaussian":
            for metric in ("acr", f"certified@{RADIUS:g}"):
                add(
                    "DDRS raises certified accuracy / ACR over Cohen at the same σ",
                    "Alfarra et al.: +9 points at r = 0.5 (CIFAR-10)",
                    setting,
                    metric,
                    e,
                    cohen,
                )
        if method == "ancer" and (ddrs := by.get((obj, mode, norm, sigma, "ddrs"))) is not None:
            for metric in ("log_volume", "proxy_radius"):
                add("ANCER's certified volume and proxy radius exceed DDRS's", "Eiras et al.", setting, metric, e, ddrs)
        if e.before is not None and "correct" in e.before:
            add(
                "memory-based certification costs few certificates (≤ 1 point)",
                "Alfarra et al.; Eiras et al.",
                f"{setting} {method}",
                "certified@0 lost",
                e,
                raises=False,
            )
        if method.startswith("smooth_reduce") and cohen is not None:
            add(
                "Smooth-Reduce improves over Cohen without retraining",
                "Joshi et al.",
                f"{setting} {method}",
                "acr",
                e,
                cohen,
            )
        if method in ("cohen", "ddrs") and obj in ("macer", "smoothadv") and mode == "fixed":
            base = by.get(("gaussian", "fixed", norm, sigma, method))
            if base is not None:
                add(
                    f"{obj.upper() if obj == 'macer' else 'SmoothAdv'} training raises ACR over Gaussian training",
                    "Zhai et al. 2020" if obj == "macer" else "Salman et al. 2019",
                    f"{norm} σ={sigma:g} under {method}",
                    "acr",
                    e,
                    base,
                )
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
