"""Merge shard tables in index order (:mod:`smoothcert.pipeline.gather`)."""

from smoothcert.commands._common import add_config
from smoothcert.pipeline.gather import merge_shards

HELP = "merge shard TSVs into one table sorted by idx (each row exactly once; whole tables only)"


def add_arguments(p):
    add_config(p)
    p.add_argument("shards", nargs="+", help="shard TSVs (i-of-n.tsv: all n of one run)")
    p.add_argument("--out", required=True, help="merged TSV")
    p.add_argument("--key", default="idx", help="row key that must be unique")
    p.add_argument(
        "--data",
        default=None,
        help="prepared data folder: check that each shard holds exactly its block of the configured test inputs",
    )


def run(args):
    cfg = None
    if args.data is not None:
        from smoothcert import config as config_mod

        cfg = config_mod.load(args.config, semantics=False)  # the test selection; no torch
    merge_shards(args.shards, args.out, args.key, cfg=cfg, data=args.data)
