"""Published numbers to reproduce, and the comparison of a report summary against them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import atomic_path, write_text
from smoothcert.errors import SmoothcertError, require
from smoothcert.reporting.tables import markdown, rlabel

METHOD = "cohen"  # the published table is Cohen et al.'s: by default their method's rows are compared with it
PAPER_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
# Cohen, Rosenfeld & Kolter (ICML 2019): approximate certified accuracy of the smoothed ResNet-110 on CIFAR-10
# (500 test images, n = 100,000, n0 = 100, alpha = 0.001); 0 beyond the largest radius each σ can certify.
COHEN_CIFAR10 = {
    0.12: (0.81, 0.59, 0.00, 0.00, 0.00, 0.00, 0.00),
    0.25: (0.75, 0.60, 0.43, 0.27, 0.00, 0.00, 0.00),
    0.50: (0.65, 0.55, 0.41, 0.32, 0.23, 0.15, 0.09),
    1.00: (0.47, 0.39, 0.34, 0.28, 0.22, 0.17, 0.14),
}


def compare(
    summary: pd.DataFrame, method: str = METHOD, published: dict = COHEN_CIFAR10, radii=PAPER_RADII
) -> pd.DataFrame:
    """Long table (sigma, radius, paper, ours, diff, se, within_2se) for ``method``'s ℓ2 rows of ``summary``.

    ``se`` is the binomial standard error sqrt(p(1-p)/m) of our estimate over m test inputs; rows for
    σ not in the summary have NaN for ours.
    """
    need = ["method", "norm", "sigma"]
    missing = [c for c in need if c not in summary]
    require(not missing, f"summary lacks columns {missing}")
    rows = summary[(summary["method"] == method) & (summary["norm"] == "l2")]
    if "objective" in rows and (rows["objective"] == "gaussian").any():
        rows = rows[(rows["objective"] == "gaussian") & (rows.get("sigma_mode", "fixed") == "fixed")]
    require(
        len(rows) > 0,
        f"summary has no l2 rows of method {method!r} (methods there: {sorted(summary['method'].unique())})",
    )
    out = []
    for sigma, values in published.items():
        match = rows[np.isclose(rows["sigma"].astype(float), sigma)]
        ours = match.iloc[0] if len(match) else None
        m = float(ours["inputs"]) if ours is not None and "inputs" in ours else np.nan
        for r, paper in zip(radii, values):
            col = f"acc@{rlabel(r)}"
            v = float(ours[col]) if ours is not None and col in ours and pd.notna(ours[col]) else np.nan
            se = np.sqrt(max(v * (1 - v), 1e-12) / m) if np.isfinite(v) and m > 0 else np.nan
            diff = v - paper
            out.append(
                {
                    "sigma": sigma,
                    "radius": r,
                    "paper": paper,
                    "ours": v,
                    "diff": diff,
                    "se": se,
                    "within_2se": bool(abs(diff) <= 2 * se + 1e-9) if np.isfinite(diff) else None,
                }
            )
    return pd.DataFrame(out)


def report_markdown(table: pd.DataFrame, method: str = METHOD) -> str:
    """The comparison as markdown: a wide σ × radius table of ours (diff), and the long table."""
    lines = [
        "# Comparison with Cohen et al. (2019), CIFAR-10\n",
        f"Certified accuracy of our `{method}` runs against the published numbers "
        "(ResNet-110, n = 100,000, alpha = 0.001, 500 test images). Cells: ours (ours - paper).\n",
    ]
    wide = {}
    for (sigma, r), row in table.set_index(["sigma", "radius"]).iterrows():
        cell = "not run" if pd.isna(row["ours"]) else f"{row['ours']:.3f} ({row['diff']:+.3f})"
        wide.setdefault(f"σ = {sigma:g}", {})[f"r = {rlabel(r)}"] = cell
    w = pd.DataFrame(wide).T.reset_index().rename(columns={"index": "σ"})
    lines.append(markdown(w))
    done = table.dropna(subset=["ours"])
    if len(done):
        mad = float(done["diff"].abs().mean())
        share = float(done["within_2se"].astype(bool).mean())
        lines.append(
            f"Mean absolute difference {mad:.3f} over {len(done)} (σ, r) cells; "
            f"{share:.0%} lie within two binomial standard errors of the published value.\n"
        )
    lines.append("## All cells\n")
    lines.append(markdown(table, digits=3))
    return "\n".join(lines)


def compare_file(summary: str | Path, out: str | Path, method: str = METHOD) -> pd.DataFrame:
    """Compare the report's ``summary.csv`` with the published table; write ``out`` (markdown) and its ``.csv``."""
    path = Path(summary)
    require(path.is_file(), f"summary not found: {path}")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise SmoothcertError(f"cannot read summary {path}: {exc}") from exc
    table = compare(frame, method)
    write_text(out, report_markdown(table, method))
    with atomic_path(Path(out).with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    return table
