"""Publish a run's results page (:func:`smoothcert.reporting.page.publish`)."""

HELP = "copy a report's results page (page.md) and the figures it links to OUT.md and OUT/ (e.g. docs/results/)"


def add_arguments(p):
    p.add_argument("--report", required=True, help="report folder written by 'smoothcert report' (holds page.md)")
    p.add_argument("--out", required=True, help="markdown file to write; figures go to the folder of its stem")


def run(args):
    from smoothcert.reporting.page import publish

    headline = publish(args.report, args.out)
    print(f"publish: {args.out}\n{headline}")
