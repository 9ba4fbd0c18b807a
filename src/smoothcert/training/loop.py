"""Noise-augmented training with per-epoch checkpoints and resume: the one train loop, images and clips alike.

A checkpoint ``{epoch, arch, state_dict, optimizer, scheduler, config, fingerprint, ...}``
is written atomically after every epoch; a restarted job resumes from it (loaded
with ``weights_only=True``), so no finished epoch is redone — if its fingerprint
(:func:`training_fingerprint` for images) is the one this run would write. Otherwise the model
is trained from scratch, with one line on stderr saying what changed.

What differs between images and clips (data, model, optimizer, objective, settings, what the fingerprint
holds) is a :class:`Recipe`: :func:`train` makes the images' one and runs :func:`fit`;
:mod:`smoothcert.pipeline.clips` makes the clips' one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
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
    return _stamp(cfg, spec, _image_parts(cfg, spec), train_split, test_split, code)


def _image_parts(cfg: dict, spec: ModelSpec) -> dict:
    """The settings an image model's training reads (see :func:`training_fingerprint`)."""
    parts = {
        "model": cfg["model"],
        "train": {k: v for k, v in cfg["train"].items() if k not in NOT_FINGERPRINTED},
        "data": {k: v for k, v in cfg["data"].items() if k not in ("root", "download", "verify_checksums")},
    }
    for section in (*OBJECTIVE_SECTIONS[spec.objective], *SIGMA_MODE_SECTIONS[spec.sigma_mode]):
        parts[section] = cfg[section]
    return parts


def _stamp(cfg: dict, spec: ModelSpec, settings: dict, train_split, test_split, code: str | None) -> dict:
    """The fingerprint of a checkpoint: the experiment, ``seed``, ``settings``, the data's content, the code."""
    parts = {
        "spec": {"objective": spec.objective, "sigma_mode": spec.sigma_mode, "norm": spec.norm, "sigma": spec.sigma},
        "seed": cfg["seed"],
        **settings,
        "train_data": sha256_tensors(*train_split),
        "test_data": sha256_tensors(*test_split),
    }
    if code is not None:
        parts["code"] = code
    return fingerprint(**parts)


@dataclass(frozen=True)
class Recipe:
    """What one training run is made of, besides the experiment (``spec``) and ``seed``.

    ``splits`` (x_train, y_train, x_test, y_test); ``model()`` builds the untrained model (called right after
    ``torch.manual_seed(seed)``); ``optimizer(params)`` → (optimizer, scheduler stepped once per epoch, or None);
    ``objective(model, x, y, sigma, kind, ctx)`` → (loss, logits) as in :mod:`smoothcert.training.objectives`;
    ``epochs`` and ``batch_size``; ``settings``: the parts of params.yaml the result depends on (they join the
    checkpoint's fingerprint); ``arch`` and ``num_classes`` are stored with the model.
    """

    arch: str
    splits: tuple
    model: Callable[[], nn.Module]
    optimizer: Callable
    objective: Callable
    epochs: int
    batch_size: int
    settings: dict
    num_classes: int


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
    """Train ``spec``'s base model on the prepared data in ``data_dir`` (:func:`fit`, settings of ``train``).

    SGD with momentum and weight decay, the learning rate stepped every ``train.lr_step`` epochs; the
    objective of ``spec.objective``, for data-dependent σ its σ updater first.
    """
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

    def optimizer(params):
        opt = torch.optim.SGD(params, lr=tc["lr"], momentum=tc["momentum"], weight_decay=tc["weight_decay"])
        return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=tc["lr_step"], gamma=tc["lr_gamma"])

    recipe = Recipe(
        arch=cfg["model"]["arch"],
        splits=(*data_mod.load_split(data_dir, "train", name), *data_mod.load_split(data_dir, "test", name)),
        model=lambda: make_model(cfg),
        optimizer=optimizer,
        objective=OBJECTIVES[spec.objective],
        epochs=tc["epochs"],
        batch_size=tc["batch_size"],
        settings=_image_parts(cfg, spec),
        num_classes=data_mod.info(name).num_classes,
    )
    return fit(cfg, spec, recipe, out_dir, device, progress=progress, code=code)


def fit(
    cfg: dict,
    spec: ModelSpec,
    recipe: Recipe,
    out_dir: str | Path,
    device,
    progress: bool = True,
    code: str | None = None,
) -> pd.DataFrame:
    """Train ``recipe``'s model for ``spec``; write ``checkpoint.pt`` each epoch, then ``model.pt`` and ``metrics.tsv``.

    ``code`` (the training code's digest) joins the checkpoint's fingerprint. ``model.pt`` holds no
    wall-clock time and is saved byte-identically (:func:`smoothcert.artifacts.save_torch`): the same
    settings, data and code give the same bytes.
    """
    out_dir = Path(out_dir)
    xtr, ytr, xte, yte = recipe.splits
    torch.manual_seed(cfg["seed"])
    model = recipe.model().to(device)
    opt, sched = recipe.optimizer(model.parameters())
    sigma_buffer = torch.full((len(xtr),), spec.sigma)
    history: list[dict] = []
    start = 0
    ckpt_path = out_dir / "checkpoint.pt"
    stamp = _stamp(cfg, spec, recipe.settings, (xtr, ytr), (xte, yte), code)
    blob = load_torch(ckpt_path, what="checkpoint") if ckpt_path.exists() else None
    why = _resumable(blob, ckpt_path, stamp, recipe.epochs) if blob is not None else None
    if why is not None:
        log(why)
    elif blob is not None:
        require(blob.get("arch") == recipe.arch, f"checkpoint {ckpt_path} is for another arch; delete it to retrain")
        model.load_state_dict(blob["state_dict"])
        opt.load_state_dict(blob["optimizer"])
        if sched is not None:
            sched.load_state_dict(blob["scheduler"])
        sigma_buffer = blob.get("sigma_buffer", sigma_buffer)
        history = blob.get("history", [])
        start = int(blob["epoch"])
    for epoch in range(start, recipe.epochs):
        t0 = time.time()
        gen = make_generator(stream_seed(cfg["seed"], epoch, "train"), device)
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
        ctx = TrainContext(cfg=cfg, epoch=epoch, generator=gen)
        model.train()
        total_loss = correct = seen = 0
        bar = tqdm(
            range(0, len(xtr), recipe.batch_size),
            desc=f"{spec.id} epoch {epoch + 1}/{recipe.epochs}",
            disable=not progress,
            leave=False,
        )
        for i in bar:
            ids = order[i : i + recipe.batch_size]
            xb, yb = xtr[ids].to(device), ytr[ids].to(device)
            sig = sigma_buffer[ids].to(device)
            if spec.sigma_mode != "fixed":
                sig = SIGMA_UPDATERS[spec.sigma_mode](model, xb, yb, sig, spec.noise, ctx).detach()
                sigma_buffer[ids] = sig.cpu()
            loss, logits = recipe.objective(model, xb, yb, sig, spec.noise, ctx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total_loss += loss.item() * len(ids)
            correct += (logits.detach().reshape(len(ids), -1, logits.shape[-1])[:, 0].argmax(1) == yb).sum().item()
            seen += len(ids)
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
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
                "arch": recipe.arch,
                "state_dict": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "config": _plain(cfg),
                "spec": spec.id,
                "sigma_buffer": sigma_buffer,
                "history": history,
                "num_classes": recipe.num_classes,
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
