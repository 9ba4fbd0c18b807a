"""Certify one shard of the test set, writing rows incrementally and resumably.

Every method lands in one row format (:data:`smoothcert.engine.certificates.COLUMNS`): Cohen's columns
``idx label predict radius correct time`` plus the method, norm, noise level(s),
p̲A, the certified gap, proxy radius and log-volume of the certified region
(:func:`smoothcert.engine.certificates.certificate`).
For per-input σ/θ methods these are the *per-input* certificates; they become
sound for the data-dependent classifier only after the memory step.

The shard's ``.part`` file is stamped with :func:`shard_fingerprint`, everything a row
depends on; a rerun resumes its rows only if that is unchanged, else starts the shard over.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from smoothcert import data as data_mod
from smoothcert import methods
from smoothcert.artifacts import fingerprint, sha256_file, sha256_tensors
from smoothcert.config import ModelSpec
from smoothcert.engine.certificates import COLUMNS, certificate
from smoothcert.engine.certify import Certified, Draws, SequentialPlan, certify
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling
from smoothcert.errors import require
from smoothcert.methods import Method
from smoothcert.pipeline import stages
from smoothcert.shards import ShardWriter, read_theta


def load_theta(path: str | Path, idx: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """θ, seconds and evals of the inputs ``idx`` from one θ shard file (:func:`smoothcert.shards.read_theta`)."""
    return read_theta(path, idx, dim)


# certify settings that change no number in a row: batch_size only groups the draws (the noise is fixed per
# chunk), so it is left out of the fingerprint, like the number of shards (the shard's inputs are in it).
NOT_FINGERPRINTED = {"certify": ("batch_size",), "data": ("root", "download", "verify_checksums")}


def shard_fingerprint(
    cfg: dict,
    spec: ModelSpec,
    method: Method | str,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: np.ndarray,
    model: torch.nn.Module | None = None,
    checkpoint: str | Path | None = None,
    theta=None,
    theta_file: str | Path | None = None,
) -> dict:
    """:func:`smoothcert.artifacts.fingerprint` of everything a certificate row of this shard depends on.

    The base classifier (sha256 of the ``checkpoint`` file's bytes, or of ``model``'s state dict
    when certifying a model held in memory), θ (sha256 of ``theta_file``, or of the ``theta``
    triple), for a checkpoint entry how its file is read (``ModelSpec.loading``), the method and its
    settings (Smooth-Reduce's ``smooth_reduce`` section; for clips the ``video.window``), the experiment (objective, σ mode, norm, σ), ``seed``, ``channels_last``,
    the ``certify`` section but ``batch_size``, the data section but where it is stored
    (``root``, ``download``, ``verify_checksums``), the test selection (``test.start/step/limit``)
    and a hash of this shard's test indices, inputs and labels. Not device, threads, batch size
    or the number of shards: rows are identical for any of those.
    """
    require(model is not None or checkpoint is not None, "shard_fingerprint needs the model or its checkpoint")
    method = methods.get(method)
    parts = {
        "method": method.name,
        "spec": {"objective": spec.objective, "sigma_mode": spec.sigma_mode, "norm": spec.norm, "sigma": spec.sigma},
        **({"loading": spec.loading} if spec.pretrained else {}),
        "seed": cfg["seed"],
        "channels_last": cfg.get("channels_last"),
        "test": {k: (cfg.get("test") or {}).get(k) for k in ("start", "step", "limit")},
        "inputs": sha256_tensors(np.asarray(idx, dtype=np.int64), x, y),
    }
    for section, skip in NOT_FINGERPRINTED.items():
        parts[section] = {k: v for k, v in (cfg.get(section) or {}).items() if k not in skip}
    if checkpoint is not None:
        parts["checkpoint"] = sha256_file(checkpoint)
    else:
        parts["weights"] = sha256_tensors(model)
    if theta_file is not None:
        parts["theta"] = sha256_file(theta_file)
    elif theta is not None:
        parts["theta"] = sha256_tensors(list(theta))
    if method.section is not None and not method.per_input_sigma:  # a search's settings are in θ's hash
        parts[method.section] = cfg[method.section]
    if method.wrap is not None and x.ndim == 5:  # a wrapper cuts clips into windows
        parts["video"] = {"window": cfg["video"]["window"]}
    return fingerprint(**parts)


def certify_shard(
    cfg: dict,
    spec: ModelSpec,
    method: Method | str,
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: np.ndarray,
    out_path: str | Path,
    device,
    theta=None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    theta_file: str | Path | None = None,
    stage: str = "certify",
    num_classes: int | None = None,
):
    """Certify inputs ``x`` (test indices ``idx``) by ``method`` (a registered :class:`Method`, or its name) and
    write ``out_path``; skip rows already written.

    ``theta``: for per-input methods, the (θ, opt_time, opt_evals) triple from :func:`load_theta`.
    ``checkpoint`` / ``theta_file``: the files ``model`` and ``theta`` were read from, whose hashes
    stamp the ``.part`` file (:func:`shard_fingerprint`); without them the model's state dict and
    the θ arrays are hashed, and so is the code of pipeline ``stage`` (the stage map's closure for this
    method). Rows of a ``.part`` file with another fingerprint are not resumed. One process at a time writes
    a shard (:class:`smoothcert.shards.ShardWriter`'s lock): a second one is refused in one line.
    ``num_classes``: the model's classes (default: those the config's dataset records).
    """
    method = methods.get(method)
    stamp = shard_fingerprint(
        cfg, spec, method, x, y, idx, model=model, checkpoint=checkpoint, theta=theta, theta_file=theta_file
    )
    theta, opt_time, opt_evals = theta if theta is not None else (None, np.zeros(len(idx)), np.zeros(len(idx), int))
    cc = cfg["certify"]
    num_classes = num_classes or data_mod.info(cfg["data"]["dataset"]).num_classes
    wrap = methods.function(method.wrap)
    target = wrap(model, cfg, method.name, tuple(x.shape[1:]), norm=spec.norm) if wrap else Certified(model)
    stamp["radius_factor"] = repr(float(target.radius_factor))  # the certificate's space, as the code computes it
    stamp["code"] = stages.code_fingerprint(stage, method=method.name)  # rows of other code are not resumed
    writer = ShardWriter(out_path, COLUMNS, fingerprint=stamp, verb="certified")  # one writer per shard
    todo = [i for i in range(len(idx)) if int(idx[i]) not in writer.done]
    # batch_size counts base-classifier rows: a patch classifier evaluates evals_per_draw rows per draw
    rows_per_batch = max(1, cc["batch_size"] // target.evals_per_draw)
    sampling = Sampling(kind=spec.noise, batch_size=rows_per_batch, chunk=cc["chunk"], device=device, amp=cc["amp"])
    plan = sequential_plan(cc) if cc["mode"] == "sequential" else None
    draws = Draws(cc["n0"], cc["alpha"], spec.norm, sampling, n=cc["n"], plan=plan)
    group = cc["sequential"]["in_flight"] if plan else max(1, rows_per_batch // min(cc["chunk"], cc["n"]))
    d_input = int(np.prod(x.shape[1:]))  # regions are reported in the original input space
    bar = tqdm(
        total=len(idx), initial=len(idx) - len(todo), desc=f"certify {spec.id} {method.name}", disable=not progress
    )
    for g in range(0, len(todo), group):
        pos = todo[g : g + group]
        t0 = time.time()
        xs = target.to_space(x[pos].to(device))
        th = theta[pos] if theta is not None else np.full((len(pos), d_input), spec.sigma)
        scale = torch.as_tensor(th, dtype=torch.float32) if theta is not None else spec.sigma
        seeds = (
            [stream_seed(cfg["seed"], idx[p], "select") for p in pos],
            [stream_seed(cfg["seed"], idx[p], "estimate") for p in pos],
        )
        # sequential: the draws a target radius needs depend on the ball's radius per unit gap, min θ × factor
        out = certify(target.classifier, xs, scale, num_classes, seeds, draws, th.min(1) * target.radius_factor)
        elapsed = (time.time() - t0) / len(pos)
        new = rows(
            out, th, idx[pos], y[pos].numpy(), method.name, spec, cc["n0"], cc["alpha"], target.radius_factor, elapsed
        )
        for r, p, n in zip(new, pos, out["n"]):
            r.update(
                n=int(n),
                evals=(cc["n0"] + int(n)) * target.evals_per_draw,
                opt_time=float(opt_time[p]),
                opt_evals=int(opt_evals[p]),
            )
        writer.append(new)
        bar.update(len(pos))
    bar.close()
    return writer.finish()


def sequential_plan(cc: dict) -> SequentialPlan:
    """The :class:`~smoothcert.engine.certify.SequentialPlan` of ``certify.sequential``: checkpoints n_min·ratio^k
    up to n_max (draws; independent of the chunk and the batch size), and the confidence sequence named by
    ``bound``, valid over all of them."""
    from smoothcert.engine import sequential

    sq = cc["sequential"]
    require(
        sq["n_min"] <= sq["n_max"],
        f"certify.sequential: n_min = {sq['n_min']} and n_max = {sq['n_max']} are not allowed; expected n_min <= n_max",
    )
    cks = tuple(int(k) for k in sequential.schedule(sq["n_min"], sq["n_max"], sq["ratio"]))
    cs = sequential.UnionCP(cks) if sq["bound"] == "union_cp" else sequential.BetaMixture()
    radii = tuple(float(r) for r in sq["radii"]) if sq["target"] == "decide" else None
    return SequentialPlan(cks, cs, radii, float(sq["precision"]))


def rows(
    out: dict,
    theta: np.ndarray,
    idx: np.ndarray,
    labels: np.ndarray,
    method: str,
    spec: ModelSpec,
    n0: int,
    alpha: float,
    radius_factor: float,
    elapsed: float,
) -> list[dict]:
    """Certificate rows from :func:`~smoothcert.engine.certify.certify` output and the per-input θ (B, d)
    (the certificate by :func:`~smoothcert.engine.certificates.certificate`)."""
    cert = certificate(out["predict"], out["gap"], theta, radius_factor, spec.norm)
    result = []
    for i in range(len(idx)):
        result.append(
            {
                "idx": int(idx[i]),
                "label": int(labels[i]),
                "predict": int(out["predict"][i]),
                "correct": int(out["predict"][i] == labels[i]),
                "time": float(elapsed),
                "method": method,
                "norm": spec.norm,
                "sigma": spec.sigma,
                "pA_lower": float(out["pA_lower"][i]),
                "count": int(out["count"][i]),
                "n0": n0,
                "n": int(out["n"][i]),
                "alpha": alpha,
                **{k: float(v[i]) for k, v in cert.items()},
            }
        )
    return result
