"""Merge shard tables in index order."""
import pandas as pd

from smoothcert.errors import require
from smoothcert.io import read_table, write_table

HELP = "merge shard TSVs into one table sorted by idx (each row exactly once)"


def add_arguments(p):
    p.add_argument("shards", nargs="+", help="shard TSVs")
    p.add_argument("--out", required=True, help="merged TSV")
    p.add_argument("--key", default="idx", help="row key that must be unique")


def run(args):
    tables = [read_table(s, [args.key], what="shard table") for s in args.shards]
    for path, t in zip(args.shards, tables):
        require(list(t.columns) == list(tables[0].columns),
                f"shard {path} has columns {list(t.columns)}, unlike {args.shards[0]}: shards of different runs?")
    df = pd.concat(tables, ignore_index=True)
    dup = df[args.key][df[args.key].duplicated()]
    require(dup.empty, f"rows {dup.tolist()[:5]} appear in more than one shard")
    write_table(args.out, df.sort_values(args.key, kind="stable").reset_index(drop=True))
