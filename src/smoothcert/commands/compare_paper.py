"""Compare a report summary with Cohen et al.'s published CIFAR-10 certified accuracies."""
from pathlib import Path

import pandas as pd

from smoothcert.reporting import paper
from smoothcert.errors import SmoothcertError, require
from smoothcert.io import atomic_path, write_text

HELP = "compare report/<dataset>/summary.csv with Cohen et al. (2019)'s CIFAR-10 table; write markdown (+ csv)"


def add_arguments(p):
    p.add_argument("--summary", required=True, help="summary.csv written by 'smoothcert report'")
    p.add_argument("--out", required=True, help="markdown file to write (a .csv with the same stem is written too)")
    p.add_argument("--method", default="cohen", help="which method's rows to compare")


def run(args):
    path = Path(args.summary)
    require(path.is_file(), f"summary not found: {path}")
    try:
        summary = pd.read_csv(path)
    except Exception as exc:
        raise SmoothcertError(f"cannot read summary {path}: {exc}") from exc
    table = paper.compare(summary, args.method)
    write_text(args.out, paper.report_markdown(table, args.method))
    with atomic_path(Path(args.out).with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    print(f"compare-paper: {int(table['ours'].notna().sum())} of {len(table)} cells compared -> {args.out}")
