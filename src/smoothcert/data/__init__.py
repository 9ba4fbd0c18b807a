"""Datasets by name, prepared once into ``data/<name>/{train,test}.pt``; the moving-digits clips.

Prepared files hold ``x`` (uint8 pixels, or float32 in [0, 1] for ``digits``)
and ``y`` (int64). ``digits`` and ``mnist5k`` ship inside installed wheels and
need no network; ``fashion-mnist`` is read offline from its idx files (the Debian package
``dataset-fashion-mnist``, or ``data.root``; torchvision only downloads them when allowed);
``cifar10`` uses torchvision (which checks the md5 sums of what it downloads); ``imagenet``
reads an ImageFolder tree from a user path; ``folder`` (``root/test/<class>/*``, optional ``root/train``) and
``npz`` (arrays ``x``, ``y``) are a user's own images, their classes stored beside them. Every failure is a one-line :class:`SmoothcertError`.

This module registers the datasets and prepares and loads them; the readers of the built-in datasets are in
:mod:`.readers`, those of a user's files in :mod:`.files`, and the moving-digits clips (built from ``digits``)
in :mod:`.clips`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothcert.artifacts import load_torch, save_torch
from smoothcert.data.files import FILE_DATASETS, folder, folder_layout, npz
from smoothcert.data.readers import cifar10, digits, fashion_mnist, imagenet, mnist5k, stratified_split
from smoothcert.errors import SmoothcertError, require
from smoothcert.inputs import shard_indices, test_indices

# re-exported: data.stratified_split, data.folder_layout, data.*_indices
__all__ = ["FILE_DATASETS", "folder_layout", "shard_indices", "stratified_split", "test_indices"]


@dataclass(frozen=True)
class DatasetInfo:
    """Shape and normalization of a dataset's inputs."""

    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arch: str


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(1, 8, 10, (0.3,), (0.4,), "digits_cnn"),
    "mnist5k": DatasetInfo(1, 28, 10, (0.1307,), (0.3081,), "mnist_cnn"),
    "fashion-mnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,), "mnist_cnn"),
    "cifar10": DatasetInfo(3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), "cifar_resnet110"),
    "imagenet": DatasetInfo(3, 224, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "resnet50"),
}


def info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered as ``name``."""
    require(name in DATASETS, f"unknown dataset {name!r}; allowed: {sorted(DATASETS)}")
    return DATASETS[name]


LOADERS = {
    "digits": digits,
    "mnist5k": mnist5k,
    "fashion-mnist": fashion_mnist,
    "cifar10": cifar10,
    "imagenet": imagenet,
    "folder": folder,
    "npz": npz,
}


def source_info(cfg: dict) -> tuple[DatasetInfo, list[str] | None]:
    """The :class:`DatasetInfo` of the configured data section and its class names (None for the built-ins),
    without preparing it: a folder's class folders and first image, an npz file's arrays."""
    name = cfg["dataset"]
    if name not in FILE_DATASETS:
        return info(name), None
    if name == "folder":
        classes, channels, (h, w) = folder_layout(cfg)
        require(h == w, f"image folder {cfg['root']}: images are {h}×{w}; set data.image_size to crop them square")
    else:
        _, x, _, _, classes = npz(cfg)
        channels, h = int(x.shape[1]), int(x.shape[2])
    return DatasetInfo(channels, h, len(classes), (), (), ""), classes


def prepare(cfg: dict, out_dir: str | Path) -> dict:
    """Materialize ``cfg['dataset']`` into ``out_dir/{train,test}.pt``; return a summary."""
    name = cfg["dataset"]
    extra = {}
    if name in FILE_DATASETS:
        xtr, xte, ytr, yte, classes = LOADERS[name](cfg)
        meta = DatasetInfo(int(xte.shape[1]), int(xte.shape[2]), len(classes), (), (), "")
        extra = {"classes": list(classes)}
    else:
        meta = info(name)
        xtr, xte, ytr, yte = LOADERS[name](cfg)
    limit = cfg.get("train_limit")  # validated configs always say; callers of this function may leave it out
    if limit is not None and limit < len(xtr):
        from sklearn.model_selection import train_test_split

        xtr, _, ytr, _ = train_test_split(xtr, ytr, train_size=int(limit), stratify=ytr, random_state=cfg["seed"])
    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        require(len(x) > 0 or (split == "train" and extra), f"dataset {name}: the {split} split is empty")
        expected = (meta.channels, meta.size, meta.size)
        require(
            tuple(x.shape[1:]) == expected,
            f"dataset {name}: {split} images have shape {tuple(x.shape[1:])}, expected {expected}",
        )
        save_torch(
            Path(out_dir) / f"{split}.pt",
            {"x": torch.from_numpy(np.ascontiguousarray(x)), "y": torch.from_numpy(y), **extra},
        )
    return {"dataset": name, "train": int(len(xtr)), "test": int(len(xte)), "num_classes": meta.num_classes}


def class_names(data_dir: str | Path, name: str) -> list[str] | None:
    """The class names a prepared folder / npz dataset stores (None for the built-in datasets)."""
    if name not in FILE_DATASETS:
        return None
    return list(load_torch(Path(data_dir) / "test.pt", what=f"{name} test data")["classes"])


def load_split(data_dir: str | Path, split: str, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a prepared split as float32 pixels in [0, 1] and int64 labels, checking shapes (a folder / npz
    dataset's shape and classes are those its prepared files store)."""
    blob = load_torch(Path(data_dir) / f"{split}.pt", what=f"{name} {split} data")
    require(
        isinstance(blob, dict) and "x" in blob and "y" in blob,
        f"{data_dir}/{split}.pt is not a prepared dataset (needs x and y)",
    )
    x, y = blob["x"], blob["y"]
    where = f"{data_dir}/{split}.pt"
    if name in FILE_DATASETS:
        require(
            isinstance(blob.get("classes"), list) and isinstance(x, torch.Tensor) and x.ndim == 4,
            f"{where} is not a prepared {name} dataset (needs x, y and classes)",
        )
        meta = DatasetInfo(int(x.shape[1]), int(x.shape[2]), len(blob["classes"]), (), (), "")
    else:
        meta = info(name)
    require(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), f"{where}: x and y must be tensors")
    expected = (meta.channels, meta.size, meta.size)
    require(
        x.ndim == 4 and tuple(x.shape[1:]) == expected,
        f"{where} holds images of shape {tuple(x.shape[1:])}, expected {expected} for {name}",
    )
    require(y.ndim == 1 and len(x) == len(y) and len(x) > 0, f"{where} is empty or has mismatched x and y")
    require(
        not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool,
        f"{where}: labels y must be integers, got {y.dtype}",
    )
    bad = (y < 0) | (y >= meta.num_classes)
    if bool(bad.any()):
        raise SmoothcertError(f"{where}: label {int(y[bad][0])} is outside 0..{meta.num_classes - 1} for {name}")
    if x.dtype != torch.uint8:  # float pixels: finite and in [0, 1] (noise and radii are in that scale)
        require(x.is_floating_point(), f"{where}: pixels must be uint8 or float, got {x.dtype}")
        require(bool(torch.isfinite(x).all()), f"{where}: pixels hold NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        require(
            lo >= 0.0 and hi <= 1.0,
            f"{where}: float pixels span [{lo:g}, {hi:g}], expected [0, 1] (uint8 0..255 is also accepted)",
        )
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    return x, y.long()
