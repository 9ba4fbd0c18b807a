"""Compare a report summary with Cohen et al.'s published CIFAR-10 certified accuracies (:mod:`smoothcert.reporting.paper`)."""

from smoothcert.reporting import paper

HELP = "compare a report's summary.csv (report/summary.csv) with Cohen et al. (2019)'s CIFAR-10 table; write markdown (+ csv)"


def add_arguments(p):
    p.add_argument("--summary", required=True, help="summary.csv written by 'smoothcert report'")
    p.add_argument("--out", required=True, help="markdown file to write (a .csv with the same stem is written too)")
    p.add_argument("--method", default=paper.METHOD, help="which method's rows to compare")


def run(args):
    table = paper.compare_file(args.summary, args.out, args.method)
    print(f"compare-paper: {int(table['ours'].notna().sum())} of {len(table)} cells compared -> {args.out}")
