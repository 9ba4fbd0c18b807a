"""The gather stage: merge the shard tables of one experiment into one table in index order.

Guarantees: every shard table is whole (:func:`smoothcert.shards.check_rows`: no cut last row, every
cell valid, each key once); all shards have the same columns (shards of different runs are refused); no
key is in two shards; rows are sorted by the key (stable), and the merged table is written atomically.
Given the config and the prepared data, each shard must hold exactly its block of the configured test
inputs (:func:`expected_shards`): a shard cut short or damaged after it was written is refused in one line
naming the file and the first missing or damaged idx, never merged. Needs pandas only (torch only to
count the test inputs, when the shards do not already match ``test.limit``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from smoothcert.artifacts import read_table, write_table
from smoothcert.errors import require
from smoothcert.inputs import configured_indices, shard_indices
from smoothcert.shards import check_rows


def _shard_labels(shards: list[str | Path]) -> list[int]:
    """Which shard each file is: ``i`` from names ``i-of-n.tsv`` (all n shards of one run), else the order given."""
    found = [re.fullmatch(r"(\d+)-of-(\d+)", Path(s).name.split(".")[0]) for s in shards]
    if not all(found):
        return list(range(len(shards)))
    labels, totals = [int(m.group(1)) for m in found], {int(m.group(2)) for m in found}
    require(
        totals == {len(shards)} and sorted(labels) == list(range(len(shards))),
        f"gather needs all {len(shards)} shard tables i-of-{len(shards)} of one run, each once; got "
        f"{[Path(s).name for s in shards]}",
    )
    return labels


def expected_shards(cfg: dict, data: str | Path, n_shards: int, found: np.ndarray) -> list[np.ndarray]:
    """The test indices each of ``n_shards`` shards must hold: blocks of the configured test inputs.

    The configured inputs are ``test.start/step/limit`` over the prepared test split of ``data``; when
    ``found`` (every key of the shards) is already exactly the first ``test.limit`` of them, the split is not
    loaded (its size could only matter if it held fewer inputs).
    """
    t = cfg["test"]
    every = None
    if t["limit"] is not None:
        candidate = np.arange(t["start"], t["start"] + t["step"] * t["limit"], t["step"])
        if len(found) == len(candidate) and np.array_equal(np.sort(found), candidate):
            every = candidate
    if every is None:
        from smoothcert import data as data_mod  # torch: only when the shards do not match test.limit

        every = configured_indices(cfg, len(data_mod.load_split(data, "test", cfg["data"]["dataset"])[1]))
    return [shard_indices(every, i, n_shards) for i in range(n_shards)]


def merge_shards(
    shards: list[str | Path], out: str | Path, key: str = "idx", cfg: dict | None = None, data: str | Path | None = None
) -> pd.DataFrame:
    """Check the shard tables ``shards``, concatenate them, sort by ``key``, write ``out``; return the table.

    With ``cfg`` and ``data``, each shard is checked against its block of the configured test inputs.
    """
    tables = [read_table(s, [key], what="shard table") for s in shards]
    for path, t in zip(shards, tables):
        require(
            list(t.columns) == list(tables[0].columns),
            f"shard {path} has columns {list(t.columns)}, unlike {shards[0]}: shards of different runs?",
        )
    expected: list = [None] * len(shards)
    if cfg is not None and data is not None:
        found = np.concatenate([pd.to_numeric(t[key], errors="coerce").to_numpy(dtype=float) for t in tables])
        blocks = expected_shards(cfg, data, len(shards), found[np.isfinite(found)].astype(np.int64))
        expected = [blocks[i] for i in _shard_labels(shards)]
    for path, t, want in zip(shards, tables, expected):
        check_rows(path, t, want, key=key, what="shard table")
    df = pd.concat(tables, ignore_index=True)
    dup = df[key][df[key].duplicated()]
    require(dup.empty, f"rows {dup.tolist()[:5]} appear in more than one shard")
    merged = df.sort_values(key, kind="stable").reset_index(drop=True)
    write_table(out, merged)
    return merged
