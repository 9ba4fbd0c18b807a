"""The memory step as a stage: make the per-input σ/θ certificates of one experiment sound.

A sequential reduce over the certified table in idx order (the geometry is
:mod:`smoothcert.engine.regions`). It is fast and deterministic, so a rerun after a crash simply
recomputes; both outputs are written atomically. Every input is checked first: the table against the
test split (indices, labels, one norm, finite non-negative gaps) and the θ files against the table
(every certified input exactly once, the recorded σ range).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from smoothcert import data as data_mod
from smoothcert.artifacts import atomic_path, load_npz, read_table, write_table
from smoothcert.engine.certificates import certificate
from smoothcert.engine.regions import run_memory
from smoothcert.errors import require
from smoothcert.shards import read_theta

NORMS = ("l2", "l1")  # the norms engine.regions can keep disjoint


def load_thetas(paths: list[str | Path], idx: np.ndarray, dim: int) -> np.ndarray:
    """θ (len(idx), dim) float64 for the inputs ``idx``, gathered from θ shard files
    (:func:`smoothcert.shards.read_theta`: every input once, none missing, none extra)."""
    return read_theta(paths, idx, dim)[0]


def _certified_table(path: str | Path) -> tuple[pd.DataFrame, str]:
    """The merged certify.tsv of a per-input method, checked: rows, unique idx, one norm, finite gaps ≥ 0."""
    table = read_table(path, ["idx", "label", "predict", "gap", "norm"], what="certified table")
    require(len(table) > 0, f"certified table {path} has no rows")
    require(not table["idx"].duplicated().any(), f"certified table {path} lists an input more than once")
    norms = sorted(set(table["norm"].astype(str)))
    require(len(norms) <= 1, f"certified table {path} mixes norms {norms}")
    norm = norms[0]
    require(norm in NORMS, f"certified table {path} has norm {norm!r}; expected one of {list(NORMS)}")
    gaps = table["gap"].to_numpy(dtype=float)
    require(np.isfinite(gaps).all() and (gaps >= 0).all(), f"certified table {path} has NaN or negative gaps")
    return table, norm


def final_table(
    table: pd.DataFrame, centers: np.ndarray, thetas: np.ndarray, norm: str, answer_abstained: bool = False
) -> tuple[pd.DataFrame, dict]:
    """The memory step over a certificate table (rows aligned with ``centers`` and ``thetas``, (n, d)).

    Returns the table sorted by idx with the memory columns (``memory``, ``gap_original``,
    ``predict_original``) added, the certificate (:func:`~smoothcert.engine.certificates.certificate`) and
    ``correct`` of the region answered with (and, for ``inside`` rows, its θ summaries), and the recorded
    regions (:func:`smoothcert.engine.regions.run_memory`).
    """
    require(
        {"idx", "label", "predict", "gap"} <= set(table.columns),
        "certificate table needs columns idx, label, predict and gap",
    )
    answers, regions = run_memory(
        table["idx"].to_numpy(),
        table["predict"].to_numpy(),
        table["gap"].to_numpy(),
        centers,
        thetas,
        norm,
        answer_abstained,
    )
    out = table.iloc[answers["order"]].reset_index(drop=True).copy()
    out["predict_original"] = out["predict"].to_numpy(dtype=np.int64)
    out["gap_original"] = out["gap"].to_numpy(dtype=float)
    out["memory"] = answers["memory"]
    predict = answers["predict"]  # a class, or ABSTAIN
    cert = certificate(predict, answers["gap"], answers["theta"], 1.0, norm)
    out["predict"] = predict
    for col in ("gap", "radius", "proxy_radius", "log_volume"):
        out[col] = cert[col]
    out["correct"] = (predict == out["label"].to_numpy()).astype(int)
    inside = answers["memory"] == "inside"
    if inside.any():
        for col in ("sigma_min", "sigma_gmean", "sigma_max"):
            if col in out.columns:
                out.loc[inside, col] = cert[col][inside]
    return out, regions


def memory_check(
    cfg: dict,
    certified: str | Path,
    theta_files: list[str | Path],
    data_dir: str | Path,
    out_table: str | Path,
    out_memory: str | Path,
) -> tuple[pd.DataFrame, dict]:
    """Run the memory step on ``certified`` with its θ files; write the final table and the recorded regions.

    The test images of ``data_dir`` are the region centres; the result is ``(final table, region arrays)``.
    """
    table, norm = _certified_table(certified)
    x, y = data_mod.load_split(data_dir, "test", cfg["data"]["dataset"])
    idx = np.array(table["idx"], dtype=np.int64)
    require(
        idx.min() >= 0 and idx.max() < len(x), f"certified table {certified} names test inputs outside 0..{len(x) - 1}"
    )
    require(
        np.array_equal(table["label"].to_numpy(dtype=np.int64), y[torch.from_numpy(idx)].numpy()),
        f"certified table {certified} labels differ from the test labels in {data_dir}: wrong data folder?",
    )
    centers = x[torch.from_numpy(idx)].reshape(len(idx), -1).double().numpy()
    thetas = load_thetas(theta_files, idx, centers.shape[1])
    for col, reduce in (("sigma_min", np.min), ("sigma_max", np.max)):
        if col in table.columns:
            ok = np.allclose(table[col].to_numpy(dtype=float), reduce(thetas, axis=1), rtol=1e-4, atol=1e-7)
            require(ok, f"θ files do not match {certified} ({col} differs): θ from another model or method?")
    final, arrays = final_table(table, centers, thetas, norm)
    write_table(out_table, final)
    save_memory(out_memory, arrays)
    return final, arrays


def save_memory(path: str | os.PathLike, arrays: dict) -> None:
    """Atomically write the recorded regions to ``path`` (.npz, no pickles)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{k: np.asarray(v) for k, v in arrays.items()})


def load_memory(path: str | os.PathLike) -> dict:
    """Read a memory .npz written by :func:`save_memory` (``norm`` as a str)."""
    out = load_npz(path, "memory file")
    missing = {"idx", "center", "label", "theta", "gap", "norm"} - set(out)
    require(not missing, f"memory file {path} lacks arrays {sorted(missing)}")
    out["norm"] = str(out["norm"])
    return out
