"""Claims of the seed papers, checked on a run with family-wise error control: paired comparisons over the same inputs.

A claim compares two experiments that certified the same inputs (same model — same dataset, σ and norm; imported
tables: same σ and norm, the method told from the import NAME): per input, the difference of a metric, over the
inputs both define. Each row gets a test and a p-value:

* certified@r (0/1 per input): exact McNemar test — ``scipy.stats.binomtest`` on the discordant pairs;
* ACR contribution, log-volume, proxy radius: paired sign-flip permutation test of the mean difference
  (``scipy.stats.permutation_test``, ``report.claims.resamples`` seeded resamples, exact when fewer flips exist);
* the memory step's cost (inputs certified before and not after): exact one-sided binomial test of a loss rate
  below its bound (1 point).

p-values are Holm-adjusted across every tested row of the page (``statsmodels``' ``multipletests``), so the chance
of any false "reproduced" or "not reproduced" on the page is at most ``report.claims.level`` (the family-wise
level). Verdicts: *reproduced* — the adjusted test rejects at that level in the claimed direction; *not
reproduced* — it rejects in the opposite direction, or the memory step's loss exceeds its bound; *inconclusive*
otherwise; *too few inputs* — fewer than ``report.claims.min_inputs`` paired inputs (no test, not in the family).
The interval shown is a paired bootstrap (BCa, ``scipy.stats.bootstrap``) interval of the mean difference at the
simultaneous level 1 − level/m (Bonferroni over the m tested rows); it describes, the adjusted p decides.
The proxy radius is no certificate; it is compared only where the paper does (ANCER). Names of methods are the
papers' — these rows are about their methods.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats as sps

from smoothcert.reporting.tables import Experiment

CLAIM_COLUMNS = [
    "claim",
    "paper",
    "setting",
    "metric",
    "inputs",
    "difference",
    "ci_low",
    "ci_high",
    "test",
    "p",
    "p_holm",
    "verdict",
]
RADIUS = 0.5  # the radius the papers quote certified accuracy at
MEMORY_BOUND = 0.01  # the memory step's claimed cost: at most 1 point of certified inputs
LOST = "certified@0 lost"
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "too few inputs")


def _per_input(e: Experiment, metric: str) -> pd.Series:
    t = e.table.set_index("idx")
    ok = (t["correct"] > 0) & (t["predict"] >= 0)
    if metric == "acr":
        return t["radius"].where(ok, 0.0)
    if metric == f"certified@{RADIUS:g}":
        return (ok & (t["radius"] >= RADIUS)).astype(float)
    if metric in ("log_volume", "proxy_radius"):
        return t[metric].where(ok & np.isfinite(t[metric]))
    if metric == LOST:
        before = e.before.set_index("idx")
        was = (before["correct"] > 0) & (before["predict"] >= 0)
        return (was & ~ok.reindex(was.index, fill_value=False)).astype(float)
    raise ValueError(f"unknown metric {metric!r}")


def _differences(a: pd.Series, b: pd.Series | None) -> np.ndarray:
    d = (a - b) if b is not None else a
    return d.dropna().to_numpy(dtype=float)


def mcnemar(d: np.ndarray) -> float:
    """Two-sided exact McNemar p-value of paired 0/1 outcomes, from their differences d ∈ {−1, 0, 1}."""
    up, down = int((d > 0).sum()), int((d < 0).sum())
    return float(sps.binomtest(up, up + down, 0.5).pvalue) if up + down else 1.0


def sign_flip(d: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided p-value of the paired permutation (sign-flip) test of mean(d) = 0."""
    if not np.any(d):
        return 1.0
    res = sps.permutation_test(
        (d,),
        np.mean,
        permutation_type="samples",
        vectorized=True,
        n_resamples=resamples,
        rng=np.random.default_rng(seed),
    )
    return float(res.pvalue)


def interval(d: np.ndarray, level: float, resamples: int, seed: int) -> tuple[float, float]:
    """Paired bootstrap BCa interval of mean(d) at ``level`` (percentile where BCa is undefined; a point when
    every difference is the same)."""
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # no spread (up to rounding): no resampling
        return float(d.mean()), float(d.mean())
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ci = sps.bootstrap(
                (d,),
                np.mean,
                confidence_level=level,
                n_resamples=resamples,
                method=method,
                vectorized=True,
                rng=np.random.default_rng(seed),
            ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high)
    return float("nan"), float("nan")


def holm(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-values (``statsmodels.stats.multitest.multipletests``); NaN stays NaN (untested rows)."""
    from statsmodels.stats.multitest import multipletests

    out = np.full(len(p), np.nan)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = multipletests(p[tested], method="holm")[1]
    return out


def row_test(metric: str, d: np.ndarray, resamples: int, seed: int) -> tuple[str, float]:
    if metric == LOST:
        return "binomial (loss < 1 point)", float(
            sps.binomtest(int(d.sum()), len(d), MEMORY_BOUND, alternative="less").pvalue
        )
    if metric.startswith("certified@"):
        return "McNemar (exact)", mcnemar(d)
    return "paired permutation", sign_flip(d, resamples, seed)


def verdict(metric: str, mean: float, p_holm: float, level: float) -> str:
    """The row's verdict from its adjusted p-value (module docstring)."""
    if not np.isfinite(p_holm):
        return "too few inputs"
    if metric == LOST:
        if mean > MEMORY_BOUND:
            return "not reproduced"
        return "reproduced" if p_holm < level else "inconclusive"
    if p_holm < level:
        return "reproduced" if mean > 0 else "not reproduced"
    return "inconclusive"


def decide(rows: pd.DataFrame, level: float) -> pd.DataFrame:
    """``rows`` (with metric, difference, p) completed with Holm's p and the verdict of every row."""
    rows = rows.copy()
    rows["p_holm"] = holm(rows["p"].to_numpy(dtype=float))
    rows["verdict"] = [verdict(m, d, p, level) for m, d, p in zip(rows["metric"], rows["difference"], rows["p_holm"])]
    return rows


def family(e: Experiment) -> str | None:
    """The paper method an experiment is: its method, or the one an import's NAME starts with."""
    from smoothcert.reporting.importers import IMPORTED, method_family

    return method_family(e.method) if e.objective == IMPORTED else e.method


# claims between two methods on the same model (imports: the same σ and norm): (method, compared with, only on
# Gaussian training) → (claim, paper, metrics)
SAME_MODEL = {
    ("ddrs", "cohen", True): (
        "DDRS raises certified accuracy / ACR over Cohen at the same σ",
        "Alfarra et al.: +9 points at r = 0.5 (CIFAR-10)",
        (f"certified@{RADIUS:g}", "acr"),
    ),
    ("ancer", "ddrs", False): (
        "ANCER's certified volume and proxy radius exceed DDRS's",
        "Eiras et al.",
        ("log_volume", "proxy_radius"),
    ),
}


def _named(setting: str, imported: bool, x: Experiment, y: Experiment | None = None) -> str:
    return f"{setting} {x.method}" + (f" vs {y.method}" if imported and y is not None else "")


def _pairs(experiments: list[Experiment]):
    """(claim, paper, setting, metric, a, b or None) for every claim the experiments allow checking."""
    from smoothcert.reporting.importers import IMPORTED

    by_model: dict[str, dict[str, list[Experiment]]] = {}
    for e in experiments:
        by_model.setdefault(e.model_id, {}).setdefault(family(e) or "", []).append(e)
    fixed = {(e.objective, e.sigma_mode, e.norm, e.sigma, e.method): e for e in experiments}
    for e in experiments:
        fam, same = family(e), by_model[e.model_id]
        imported = e.objective == IMPORTED
        setting = f"{e.objective}/{e.sigma_mode} {e.norm} σ={e.sigma:g}" if not imported else f"{e.norm} σ={e.sigma:g}"

        for (first, second, trained), (claim, paper, metrics) in SAME_MODEL.items():
            if fam != first or (trained and e.objective not in ("gaussian", IMPORTED)):
                continue
            for other in same.get(second, []):
                for metric in metrics:
                    yield claim, paper, _named(setting, imported, e, other) if imported else setting, metric, e, other
        if e.before is not None and "correct" in e.before:
            yield (
                "memory-based certification costs few certificates (≤ 1 point)",
                "Alfarra et al.; Eiras et al.",
                _named(setting, imported, e),
                LOST,
                e,
                None,
            )
        if fam is not None and fam.startswith("smooth_reduce"):
            for cohen in same.get("cohen", []):
                yield (
                    "Smooth-Reduce improves over Cohen without retraining",
                    "Joshi et al.",
                    _named(setting, imported, e, cohen),
                    "acr",
                    e,
                    cohen,
                )
        if e.method in ("cohen", "ddrs") and e.objective in ("macer", "smoothadv") and e.sigma_mode == "fixed":
            base = fixed.get(("gaussian", "fixed", e.norm, e.sigma, e.method))
            if base is not None:
                yield (
                    f"{e.objective.upper() if e.objective == 'macer' else 'SmoothAdv'} training raises ACR over Gaussian training",
                    "Zhai et al. 2020" if e.objective == "macer" else "Salman et al. 2019",
                    f"{e.norm} σ={e.sigma:g} under {e.method}",
                    "acr",
                    e,
                    base,
                )


def claims(experiments: list[Experiment], level: float, min_inputs: int, resamples: int, seed: int = 0) -> pd.DataFrame:
    """One row per claim and setting the experiments allow checking, with Holm-controlled verdicts at ``level``."""
    rows = []
    for k, (claim, paper, setting, metric, a, b) in enumerate(_pairs(experiments)):
        d = _differences(_per_input(a, metric), None if b is None else _per_input(b, metric))
        n = len(d)
        mean = float(d.mean()) if n else float("nan")
        test, p = row_test(metric, d, resamples, seed + k) if n >= min_inputs else ("", float("nan"))
        rows.append(
            {
                "claim": claim,
                "paper": paper,
                "setting": setting,
                "metric": metric,
                "inputs": n,
                "d": d,
                "difference": mean,
                "test": test,
                "p": p,
            }
        )
    df = pd.DataFrame(rows, columns=[*CLAIM_COLUMNS, "d"])
    tested = int(df["p"].notna().sum())
    simultaneous = 1 - level / max(tested, 1)
    lows, highs = [], []
    for k, (d, p) in enumerate(zip(df["d"], df["p"])):
        low, high = interval(d, simultaneous, resamples, seed + k) if np.isfinite(p) else (np.nan, np.nan)
        lows.append(low)
        highs.append(high)
    df["ci_low"], df["ci_high"] = lows, highs
    return decide(df.drop(columns=["d"]), level)[CLAIM_COLUMNS]


def counts(checked: pd.DataFrame) -> dict[str, int]:
    """How many rows got each verdict."""
    c = checked["verdict"].value_counts() if len(checked) else pd.Series(dtype=int)
    return {v: int(c.get(v, 0)) for v in VERDICTS}


def explain(checked: pd.DataFrame, level: float, min_inputs: int) -> str:
    """The paragraph that says how the claims table decides (the page's and claims.md's)."""
    m = int(checked["p"].notna().sum()) if len(checked) else 0
    return (
        "Each row pairs two experiments over the same test inputs: difference = first method minus the one it is "
        "compared with, per input (ACR: certified radius counted when correct; certified@r: 0/1; log-volume and proxy "
        "radius over inputs both certify; memory: inputs certified before the step and not after). Tests: exact "
        "McNemar for certified@r, paired permutation for the rest, exact binomial for the memory step's loss "
        f"(< 1 point). p-values are Holm-adjusted over the {m} tested rows, so the **family-wise level is "
        f"{level:g}**: with no true effect anywhere, the chance of any false verdict on this page is at most "
        f"{level:g}. Reproduced: the adjusted test rejects in the claimed direction; not reproduced: it rejects in "
        "the opposite direction (memory step: its loss exceeds 1 point); inconclusive otherwise; too few inputs: "
        f"fewer than {min_inputs} paired inputs (not tested). Intervals: paired bootstrap (BCa) at the simultaneous "
        f"level 1 − {level:g}/{max(m, 1)}.\n"
    )
