"""The memory step: make data-dependent (per-input σ/θ) certificates sound.

A sequential reduce over the certified table in idx order (see :mod:`smoothcert.engine.regions`). It is fast and
deterministic, so a rerun after a crash simply recomputes; both outputs are written atomically.
"""
from __future__ import annotations

import numpy as np
import torch

from smoothcert import config as config_mod
from smoothcert import data as data_mod
from smoothcert.commands._common import add_config
from smoothcert.errors import require
from smoothcert.io import load_torch, read_table, write_table
from smoothcert.engine.regions import run_memory, save_memory

HELP = "memory-based certification: process certificates in idx order so data-dependent σ/θ stays sound"


def add_arguments(p):
    add_config(p)
    p.add_argument("--certified", required=True, help="merged certify.tsv of a per-input σ/θ method")
    p.add_argument("--theta", required=True, nargs="+", help="θ shard files from optimize-sigma (all shards)")
    p.add_argument("--data", required=True, help="prepared data folder (test images are the region centres)")
    p.add_argument("--out-table", required=True, help="final TSV: the table after the memory step")
    p.add_argument("--out-memory", required=True, help="recorded regions (.npz)")


def load_thetas(paths: list[str], idx: np.ndarray, dim: int) -> np.ndarray:
    """θ (len(idx), dim) for the table's inputs, gathered from shard files ``{idx, theta, ...}``, checked."""
    parts_idx, parts_theta = [], []
    for path in paths:
        blob = load_torch(path, what="theta file")
        require(isinstance(blob, dict) and all(isinstance(blob.get(k), torch.Tensor) for k in ("idx", "theta")),
                f"theta file {path} needs tensors idx and theta")
        t_idx, theta = blob["idx"].long().numpy().reshape(-1), blob["theta"].double().numpy()
        require(theta.ndim == 2 and theta.shape == (len(t_idx), dim), f"theta file {path} has θ of shape "
                f"{tuple(theta.shape)} for {len(t_idx)} inputs; expected ({len(t_idx)}, {dim})")
        require(np.isfinite(theta).all() and (theta > 0).all(),
                f"theta file {path} holds NaN, inf or non-positive values")
        parts_idx.append(t_idx)
        parts_theta.append(theta)
    all_idx = np.concatenate(parts_idx) if parts_idx else np.zeros(0, np.int64)
    all_theta = np.concatenate(parts_theta) if parts_theta else np.zeros((0, dim))
    uniq, counts = np.unique(all_idx, return_counts=True)
    require((counts == 1).all(), f"θ files list inputs {uniq[counts > 1][:5].tolist()} more than once")
    missing = np.setdiff1d(idx, all_idx)
    require(len(missing) == 0,
            f"θ files lack rows for {len(missing)} certified inputs, e.g. idx {missing[:5].tolist()}")
    extra = np.setdiff1d(all_idx, idx)
    require(len(extra) == 0,
            f"θ files hold {len(extra)} inputs not in the certified table, e.g. idx {extra[:5].tolist()}")
    pos = {int(i): k for k, i in enumerate(all_idx)}
    return all_theta[[pos[int(i)] for i in idx]]


def run(args):
    cfg = config_mod.load(args.config)
    table = read_table(args.certified, ["idx", "label", "predict", "gap", "norm"], what="certified table")
    require(len(table) > 0, f"certified table {args.certified} has no rows")
    require(not table["idx"].duplicated().any(), f"certified table {args.certified} lists an input more than once")
    norms = sorted(set(table["norm"].astype(str)))
    require(len(norms) <= 1, f"certified table {args.certified} mixes norms {norms}")
    norm = norms[0] if norms else "l2"
    require(norm in ("l2", "l1"), f"certified table {args.certified} has norm {norm!r}; expected l2 or l1")
    gaps = table["gap"].to_numpy(dtype=float)
    require(np.isfinite(gaps).all() and (gaps >= 0).all(), f"certified table {args.certified} has NaN or negative gaps")
    x, y = data_mod.load_split(args.data, "test", cfg["data"]["dataset"])
    idx = np.array(table["idx"], dtype=np.int64)
    require(len(idx) == 0 or (idx.min() >= 0 and idx.max() < len(x)),
            f"certified table {args.certified} names test inputs outside 0..{len(x) - 1}")
    require(np.array_equal(table["label"].to_numpy(dtype=np.int64), y[torch.from_numpy(idx)].numpy()),
            f"certified table {args.certified} labels differ from the test labels in {args.data}: wrong data folder?")
    centers = x[torch.from_numpy(idx)].reshape(len(idx), -1).double().numpy()
    thetas = load_thetas(args.theta, idx, centers.shape[1])
    for col, reduce in (("sigma_min", np.min), ("sigma_max", np.max)):
        if col in table.columns and len(idx):
            ok = np.allclose(table[col].to_numpy(dtype=float), reduce(thetas, axis=1), rtol=1e-4, atol=1e-7)
            require(ok, f"θ files do not match {args.certified} ({col} differs): θ from another model or method?")
    final, arrays = run_memory(table, centers, thetas, norm)
    write_table(args.out_table, final)
    save_memory(args.out_memory, arrays)
    counts = final["memory"].value_counts().to_dict()
    print(f"memory-check: {len(final)} inputs, {len(arrays['idx'])} regions recorded; "
          + ", ".join(f"{k} {int(counts.get(k, 0))}" for k in ("none", "inside", "shrunk", "abstained")))
