"""The comparison report: tables, DVC metrics/plot data and figures (:mod:`smoothcert.reporting.build`)."""

from __future__ import annotations

from smoothcert import config as config_mod
from smoothcert.commands._common import add_config

HELP = "build the comparison report (summary/memory/training tables, metrics.json, curves, PNGs) from the results"


def add_arguments(p):
    add_config(p)
    p.add_argument(
        "--results",
        default=None,
        help="results/<dataset> folder (<model>/<method>/certify.tsv, final.tsv); leave out to report on "
        "--import tables alone",
    )
    p.add_argument(
        "--models", default=None, help="models/<dataset> folder (<model>/metrics.tsv) for the training tables"
    )
    p.add_argument("--data", default=None, help="prepared data folder (test.pt) for the per-pixel θ figures")
    p.add_argument("--out", required=True, help="report folder to write")
    p.add_argument(
        "--import",
        dest="imports",
        action="extend",
        nargs="+",
        default=[],
        metavar="NAME[:NORM][:FORMAT][@SIGMA]=PATH",
        help="add certify tables (one or more; the option may repeat), each as method NAME at its σ and norm: "
        "smoothcert's own certify.tsv (σ and norm from its columns), locuslab/smoothing (idx label predict radius "
        "correct time), the DDRS reference code (… correct sigma time: per-input σ) or the ANCER reference code "
        "(… radius radius_proxy correct min_sigma time), told from the header (FORMAT forces a layout: the names "
        "in smoothcert.reporting.importers.FORMATS); NORM l1 or l2 (default l2; seed tables do not record it); σ "
        "from @SIGMA, the table's sigma column or a noise_<σ>/sigma_<σ> part of PATH, else refused. Every row is "
        "checked; a bad one is refused naming file, row and column",
    )
    p.add_argument(
        "--video",
        default=None,
        help="video results folder (sigma-<σ>/<method>/certify.tsv): adds video.csv/.md and metrics",
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="folder for metrics.json and curves*.csv (DVC metrics/plots); default: the --out folder",
    )
    p.add_argument(
        "--capped",
        default=None,
        metavar="RUN",
        help="folder of a run of this config with a σ cap (its params.yaml differs only in models and "
        "<method>.sigma_max; results/<dataset>/ under it): the page shows each of its experiments beside the uncapped "
        "one (workflow/scripts/experiment.sh with CAP= makes it)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="without --results: the data the --import tables certify, named in the page's and figures' titles "
        "(the tables do not record it; default 'imported tables')",
    )
    p.add_argument("--no-plots", action="store_true", help="write the tables only")


def run(args):
    from smoothcert.reporting.build import build_report

    head = build_report(
        config_mod.load(args.config),
        args.results,
        args.out,
        models=args.models,
        data=args.data,
        imports=args.imports,
        plot=not args.no_plots,
        video=args.video,
        metrics_dir=args.metrics,
        capped=args.capped,
        dataset=args.dataset,
    )
    print(f"report: {', '.join(f'{norm}: {len(runs)} experiments' for norm, runs in head.items())} -> {args.out}")
