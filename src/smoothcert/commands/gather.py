"""Merge shard tables in index order (:mod:`smoothcert.pipeline.gather`)."""

from smoothcert.pipeline.gather import merge_shards

HELP = "merge shard TSVs into one table sorted by idx (each row exactly once)"


def add_arguments(p):
    p.add_argument("shards", nargs="+", help="shard TSVs")
    p.add_argument("--out", required=True, help="merged TSV")
    p.add_argument("--key", default="idx", help="row key that must be unique")


def run(args):
    merge_shards(args.shards, args.out, args.key)
