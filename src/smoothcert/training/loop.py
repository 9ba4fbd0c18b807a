"""Noise-augmented training with per-epoch checkpoints and resume.

A checkpoint ``{epoch, arch, state_dict, optimizer, scheduler, config, fingerprint, ...}``
is written atomically after every epoch; a restarted job resumes from it (loaded
with ``weights_only=True``), so no finished epoch is redone — if its fingerprint
(:func:`training_fingerprint`) is the one this run would write. Otherwise the model
is trained from scratch, with one line on stderr saying what changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from smoothcert import data as data_mod
from smoothcert.artifacts import fingerprint, load_torch, log, resume_conflict, save_torch, sha256_tensors, write_table
from smoothcert.config import OBJECTIVE_SECTIONS, SIGMA_MODE_SECTIONS, ModelSpec
from smoothcert.engine.noise import make_generator, noisy_copies, stream_seed
from smoothcert.errors import require
from smoothcert.training.models import make_model
from smoothcert.training.objectives import OBJECTIVES, SIGMA_UPDATERS, TrainContext

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc", "time"]


def _accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float, kind: str, device, seed: int
) -> tuple[float, float]:
    gen = make_generator(seed, device)
    model.eval()
    clean = noisy_ok = 0
    with torch.inference_mode():
        for i in range(0, len(x), 512):
            xb, yb = x[i : i + 512].to(device), y[i : i + 512].to(device)
            clean += (model(xb).argmax(1) == yb).sum().item()
            noisy_ok += (
                (model(noisy_copies(xb, torch.tensor(sigma, device=device), 1, kind, gen)).argmax(1) == yb).sum().item()
            )
    return clean / len(x), noisy_ok / len(x)


# train settings that change nothing in a finished epoch: train.epochs only says when to stop (a longer run
# resumes a shorter one's checkpoint exactly), workers only how data is fed.
NOT_FINGERPRINTED = ("epochs", "workers")


def training_fingerprint(
    cfg: dict, spec: ModelSpec, train_split: tuple, test_split: tuple, code: str | None = None
) -> dict:
    """:func:`smoothcert.artifacts.fingerprint` of everything a training checkpoint depends on.

    The experiment (objective, σ mode, norm, σ), the ``model`` section (arch), the ``train``
    section but ``epochs`` and ``workers``, the objective's section (``macer`` / ``smoothadv``,
    defaults filled in), for data-dependent σ the ``data_dependent`` section and
    ``ddrs.sigma_min``, ``seed``, the data section but where it is stored, and sha256 of the
    content of the prepared train and test splits, ``(x, y)`` each (the test split feeds the
    per-epoch metrics), and ``code``: the digest of the training code
    (:func:`smoothcert.pipeline.stages.code_fingerprint`, passed in by the caller), so a checkpoint of
    other code is trained again rather than continued.
    """
    parts = {
        "spec": {"objective": spec.objective, "sigma_mode": spec.sigma_mode, "norm": spec.norm, "sigma": spec.sigma},
        "model": cfg["model"],
        "train": {k: v for k, v in cfg["train"].items() if k not in NOT_FINGERPRINTED},
        "seed": cfg["seed"],
        "data": {k: v for k, v in cfg["data"].items() if k not in ("root", "download", "verify_checksums")},
        "train_data": sha256_tensors(*train_split),
        "test_data": sha256_tensors(*test_split),
    }
    if code is not None:
        parts["code"] = code
    for section in OBJECTIVE_SECTIONS[spec.objective]:
        parts[section] = cfg[section]
    for section in SIGMA_MODE_SECTIONS[spec.sigma_mode]:
        parts[section] = cfg[section]
    return fingerprint(**parts)


def _resumable(blob, ckpt_path: Path, stamp: dict, epochs: int) -> str | None:
    """None if ``blob`` (a loaded checkpoint) may be resumed by a run with fingerprint ``stamp``, else why not."""
    stored = blob.get("fingerprint") if isinstance(blob, dict) else None
    why = resume_conflict(ckpt_path, stored, stamp, "trained", "training from scratch")
    if why is None and int(blob.get("epoch", 0)) > epochs:
        why = (
            f"resume: {ckpt_path} is at epoch {int(blob['epoch'])}, past train.epochs = {epochs}; training from scratch"
        )
    return why


def train(
    cfg: dict,
    spec: ModelSpec,
    data_dir: str | Path,
    out_dir: str | Path,
    device,
    progress: bool = True,
    code: str | None = None,
) -> pd.DataFrame:
    """Train ``spec``'s base model; write ``checkpoint.pt`` each epoch, then ``model.pt`` and ``metrics.tsv``.

    ``code`` (the training code's digest) joins the checkpoint's fingerprint. ``model.pt`` holds no
    wall-clock time and is saved byte-identically (:func:`smoothcert.artifacts.save_torch`): the same
    settings, data and code give the same bytes.
    """
    out_dir = Path(out_dir)
    tc = cfg["train"]
    require(
        spec.objective in OBJECTIVES,
        f"training objective {spec.objective!r} is not available; have {sorted(OBJECTIVES)}",
    )
    require(
        spec.sigma_mode == "fixed" or spec.sigma_mode in SIGMA_UPDATERS,
        f"sigma_mode {spec.sigma_mode!r} is not available; have {['fixed', *sorted(SIGMA_UPDATERS)]}",
    )
    name = cfg["data"]["dataset"]
    xtr, ytr = data_mod.load_split(data_dir, "train", name)
    xte, yte = data_mod.load_split(data_dir, "test", name)
    torch.manual_seed(cfg["seed"])
    model = make_model(cfg).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=tc["lr"], momentum=tc["momentum"], weight_decay=tc["weight_decay"])
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=tc["lr_step"], gamma=tc["lr_gamma"])
    sigma_buffer = torch.full((len(xtr),), spec.sigma)
    history: list[dict] = []
    start = 0
    ckpt_path = out_dir / "checkpoint.pt"
    stamp = training_fingerprint(cfg, spec, (xtr, ytr), (xte, yte), code=code)
    blob = load_torch(ckpt_path, what="checkpoint") if ckpt_path.exists() else None
    why = _resumable(blob, ckpt_path, stamp, tc["epochs"]) if blob is not None else None
    if why is not None:
        log(why)
    elif blob is not None:
        require(
            blob.get("arch") == cfg["model"]["arch"],
            f"checkpoint {ckpt_path} is for another arch; delete it to retrain",
        )
        model.load_state_dict(blob["state_dict"])
        opt.load_state_dict(blob["optimizer"])
        sched.load_state_dict(blob["scheduler"])
        sigma_buffer = blob.get("sigma_buffer", sigma_buffer)
        history = blob.get("history", [])
        start = int(blob["epoch"])
    for epoch in range(start, tc["epochs"]):
        t0 = time.time()
        gen = make_generator(stream_seed(cfg["seed"], epoch, "train"), device)
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
        ctx = TrainContext(cfg=cfg, epoch=epoch, generator=gen)
        model.train()
        total_loss = correct = seen = 0
        bar = tqdm(
            range(0, len(xtr), tc["batch_size"]),
            desc=f"{spec.id} epoch {epoch + 1}/{tc['epochs']}",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            ids = order[i : i + tc["batch_size"]]
            xb, yb = xtr[ids].to(device), ytr[ids].to(device)
            sig = sigma_buffer[ids].to(device)
            if spec.sigma_mode != "fixed":
                sig = SIGMA_UPDATERS[spec.sigma_mode](model, xb, yb, sig, spec.noise, ctx).detach()
                sigma_buffer[ids] = sig.cpu()
            loss, logits = OBJECTIVES[spec.objective](model, xb, yb, sig, spec.noise, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(ids)
            correct += (logits.detach().reshape(len(ids), -1, logits.shape[-1])[:, 0].argmax(1) == yb).sum().item()
            seen += len(ids)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        clean, noisy = _accuracy(
            model, xte, yte, spec.sigma, spec.noise, device, stream_seed(cfg["seed"], epoch, "predict")
        )
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train_loss": total_loss / seen,
                "train_acc": correct / seen,
                "test_clean_acc": clean,
                "test_noisy_acc": noisy,
                "time": time.time() - t0,
            }
        )
        save_torch(
            ckpt_path,
            {
                "epoch": epoch + 1,
                "arch": cfg["model"]["arch"],
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "config": _plain(cfg),
                "spec": spec.id,
                "sigma_buffer": sigma_buffer,
                "history": history,
                "num_classes": data_mod.info(name).num_classes,
                "fingerprint": stamp,
            },
        )
    final = load_torch(ckpt_path, what="checkpoint")
    save_torch(
        out_dir / "model.pt",
        {k: final[k] for k in ("epoch", "arch", "state_dict", "config", "spec", "num_classes", "sigma_buffer")},
    )
    metrics = pd.DataFrame(history, columns=METRIC_COLUMNS)
    write_table(out_dir / "metrics.tsv", metrics)
    return metrics


def _plain(obj):
    """Config as plain builtins (weights_only-loadable)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
