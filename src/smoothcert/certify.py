"""Certify one shard of the test set, writing rows incrementally and resumably.

Every method lands in one row format (``COLUMNS``): Cohen's columns
``idx label predict radius correct time`` plus the method, norm, noise level(s),
p̲A, the certified gap, proxy radius and log-volume of the certified region.
For per-input σ/θ methods these are the *per-input* certificates; they become
sound for the data-dependent classifier only after the memory step.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from smoothcert import core, stats
from smoothcert.config import ModelSpec
from smoothcert.errors import require
from smoothcert.io import ShardWriter, load_torch
from smoothcert.methods import get as get_method, load_wrapper
from smoothcert.noise import stream_seed

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "method", "norm", "sigma", "pA_lower", "count",
           "n0", "n", "alpha", "gap", "proxy_radius", "log_volume", "sigma_min", "sigma_gmean", "sigma_max",
           "evals", "opt_time", "opt_evals"]


@dataclass
class Certified:
    """The classifier actually smoothed, in the space its radius holds in."""

    classifier: torch.nn.Module
    to_space: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    radius_factor: float = 1.0
    evals_per_draw: int = 1


def shard_indices(indices: np.ndarray, shard: int, shards: int) -> np.ndarray:
    """Contiguous block ``shard`` of ``shards`` of the certified test indices."""
    return np.array_split(np.asarray(indices), shards)[shard]


def load_theta(path: str | Path, idx: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a θ shard file ``{idx, theta, time, evals}``, check it matches these inputs; return (θ, time, evals)."""
    blob = load_torch(path, what="theta file")
    require(isinstance(blob, dict) and {"idx", "theta"} <= set(blob), f"theta file {path} needs idx and theta")
    n = len(idx)
    for key in ("idx", "theta", "time", "evals"):
        require(key not in blob or isinstance(blob[key], torch.Tensor), f"theta file {path}: {key} is not a tensor")
    t_idx, theta = blob["idx"].reshape(-1).numpy(), blob["theta"].double().numpy()
    require(theta.ndim == 2 and theta.shape == (n, dim),
            f"theta file {path} has θ of shape {tuple(theta.shape)}, expected ({n}, {dim}) for this shard's inputs")
    require(np.array_equal(t_idx, idx), f"theta file {path} is for test inputs {t_idx[:3].tolist()}..., "
                                        f"this shard certifies {idx[:3].tolist()}... (another shard or config?)")
    require(np.isfinite(theta).all() and (theta > 0).all(), f"theta file {path} holds NaN, inf or non-positive values")
    for key in ("time", "evals"):
        require(key not in blob or tuple(blob[key].shape) == (n,),
                f"theta file {path}: {key} has shape {tuple(blob[key].shape) if key in blob else ()}, expected ({n},)")
    t = blob["time"].double().numpy() if "time" in blob else np.zeros(n)
    e = blob["evals"].long().numpy() if "evals" in blob else np.zeros(n, dtype=np.int64)
    return theta, t, e


def certify_shard(cfg: dict, spec: ModelSpec, method_name: str, model: torch.nn.Module, x: torch.Tensor,
                  y: torch.Tensor, idx: np.ndarray, out_path: str | Path, device, theta=None, progress: bool = True):
    """Certify inputs ``x`` (test indices ``idx``) and write ``out_path``; skip rows already written.

    ``theta``: for per-input methods, the (θ, opt_time, opt_evals) triple from :func:`load_theta`.
    """
    theta, opt_time, opt_evals = theta if theta is not None else (None, np.zeros(len(idx)), np.zeros(len(idx), int))
    method = get_method(method_name)
    cc = cfg["certify"]
    with torch.no_grad():
        num_classes = int(model(x[:1].to(device)).shape[1]) if len(x) else 0
    wrapper = load_wrapper(method)
    target = wrapper(model, cfg, method_name, tuple(x.shape[1:])) if wrapper else Certified(model)
    writer = ShardWriter(out_path, COLUMNS)
    todo = [i for i in range(len(idx)) if int(idx[i]) not in writer.done]
    # batch_size counts base-classifier rows: a patch classifier evaluates evals_per_draw rows per draw
    rows_per_batch = max(1, cc["batch_size"] // target.evals_per_draw)
    sampling = core.Sampling(kind=spec.noise, batch_size=rows_per_batch, chunk=cc["chunk"], device=device, amp=cc["amp"])
    group = max(1, rows_per_batch // min(cc["chunk"], cc["n"]))
    d_input = int(np.prod(x.shape[1:]))  # regions are reported in the original input space
    bar = tqdm(total=len(idx), initial=len(idx) - len(todo), desc=f"certify {spec.id} {method_name}", disable=not progress)
    for g in range(0, len(todo), group):
        pos = todo[g:g + group]
        t0 = time.time()
        xs = target.to_space(x[pos].to(device))
        th = theta[pos] if theta is not None else np.full((len(pos), d_input), spec.sigma)
        scale = torch.as_tensor(th, dtype=torch.float32) if theta is not None else spec.sigma
        out = core.certify_batch(target.classifier, xs, scale, num_classes, cc["n0"], cc["n"], cc["alpha"], spec.norm,
                                 [stream_seed(cfg["seed"], idx[p], "select") for p in pos],
                                 [stream_seed(cfg["seed"], idx[p], "estimate") for p in pos], sampling)
        elapsed = (time.time() - t0) / len(pos)
        new = rows(out, th, idx[pos], y[pos].numpy(), method_name, spec, cfg, target.radius_factor, elapsed)
        for r, p in zip(new, pos):
            r.update(evals=(cc["n0"] + cc["n"]) * target.evals_per_draw, opt_time=float(opt_time[p]),
                     opt_evals=int(opt_evals[p]))
        writer.append(new)
        bar.update(len(pos))
    bar.close()
    return writer.finish()


def rows(out: dict, theta: np.ndarray, idx: np.ndarray, labels: np.ndarray, method: str, spec: ModelSpec, cfg: dict,
         radius_factor: float, elapsed: float) -> list[dict]:
    """Certificate rows from ``core.certify_batch`` output and the per-input θ (B, d)."""
    cc = cfg["certify"]
    theta_min, theta_max = theta.min(1), theta.max(1)
    gmean = np.exp(np.log(theta).mean(1))
    ok = out["predict"] != core.ABSTAIN
    gap = np.where(ok, out["gap"], 0.0)
    radius = np.where(ok, theta_min * gap * radius_factor, 0.0)
    proxy = np.where(ok, gmean * gap * radius_factor, 0.0)
    logvol = stats.region_log_volume(theta * radius_factor, gap, spec.norm)
    result = []
    for i in range(len(idx)):
        result.append({
            "idx": int(idx[i]), "label": int(labels[i]), "predict": int(out["predict"][i]), "radius": float(radius[i]),
            "correct": int(out["predict"][i] == labels[i]), "time": float(elapsed), "method": method, "norm": spec.norm,
            "sigma": spec.sigma,
            "pA_lower": float(out["pA_lower"][i]), "count": int(out["count"][i]), "n0": cc["n0"], "n": cc["n"],
            "alpha": cc["alpha"], "gap": float(gap[i]), "proxy_radius": float(proxy[i]), "log_volume": float(logvol[i]),
            "sigma_min": float(theta_min[i]), "sigma_gmean": float(gmean[i]), "sigma_max": float(theta_max[i]),
        })
    return result
