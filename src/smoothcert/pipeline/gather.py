"""The gather stage: merge the shard tables of one experiment into one table in index order.

Guarantees: every row of every shard appears exactly once (a key in two shards is refused), all shards
have the same columns (shards of different runs are refused), rows are sorted by the key (stable), and
the merged table is written atomically. Needs pandas only (no torch).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from smoothcert.artifacts import read_table, write_table
from smoothcert.errors import require


def merge_shards(shards: list[str | Path], out: str | Path, key: str = "idx") -> pd.DataFrame:
    """Concatenate the shard tables ``shards``, check them, sort by ``key``, write ``out``; return the table."""
    tables = [read_table(s, [key], what="shard table") for s in shards]
    for path, t in zip(shards, tables):
        require(
            list(t.columns) == list(tables[0].columns),
            f"shard {path} has columns {list(t.columns)}, unlike {shards[0]}: shards of different runs?",
        )
    df = pd.concat(tables, ignore_index=True)
    dup = df[key][df[key].duplicated()]
    require(dup.empty, f"rows {dup.tolist()[:5]} appear in more than one shard")
    merged = df.sort_values(key, kind="stable").reset_index(drop=True)
    write_table(out, merged)
    return merged
