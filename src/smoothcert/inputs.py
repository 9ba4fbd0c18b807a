"""Which test inputs a run certifies: the configured indices and each shard's block of them (numpy only).

One definition for every stage that needs it: ``certify`` and ``optimize-sigma`` pick a shard's inputs with
it, ``gather`` and ``report`` check that the tables hold exactly those inputs.
"""

from __future__ import annotations

import numpy as np


def test_indices(n_test: int, start: int, step: int, limit: int | None) -> np.ndarray:
    """Indices of the test inputs to certify: every ``step``-th from ``start``, at most ``limit``."""
    idx = np.arange(start, n_test, step)
    return idx if limit is None else idx[:limit]


def configured_indices(cfg: dict, n_test: int) -> np.ndarray:
    """The test indices ``cfg['test']`` selects from a test split of ``n_test`` inputs."""
    t = cfg["test"]
    return test_indices(n_test, t["start"], t["step"], t["limit"])


def shard_indices(indices: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """Contiguous block ``shard`` of ``shards`` of the certified test indices."""
    return np.array_split(np.asarray(indices), shards)[shard]
