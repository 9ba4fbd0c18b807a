"""Readers of a user's own images: ``folder`` (``root/test/<class>/*``, optional ``root/train``) and ``npz``
(arrays ``x``, ``y``); their shape and class names come from the files. Failures are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from smoothcert.artifacts import load_npz
from smoothcert.errors import SmoothcertError, one_line, require

# Datasets read from a user's files: their shape and classes come from the files, not from DATASETS.
FILE_DATASETS = ("folder", "npz")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes read as one channel; every other mode as RGB


def _folder_classes(split_dir: Path) -> tuple[list[str], list[list[Path]]]:
    """Sorted class folder names of ``split_dir`` and the image files of each (one line if any is empty)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    require(split_dir.is_dir(), f"image folder {split_dir} does not exist (expected <root>/test/<class>/*.png|jpg)")
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    require(classes, f"image folder {split_dir} has no class folders (expected {split_dir}/<class>/*.png|jpg)")
    files = []
    for name in classes:
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
        require(found, f"image folder {split_dir}: class {name!r} has no images ({', '.join(IMG_EXTENSIONS)})")
        files.append(found)
    return classes, files


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise SmoothcertError(f"image {path} is unreadable: {one_line(exc)}") from exc


def folder_layout(cfg: dict) -> tuple[list[str], int, tuple[int, int]]:
    """(classes, channels, (height, width)) of the ``folder`` dataset at ``cfg['root']``, from its test split's
    class folders and first image, after ``resize`` and the ``image_size`` crop; nothing else is read."""
    classes, files = _folder_classes(Path(cfg["root"]) / "test")
    first = _open_image(files[0][0])
    channels = 1 if first.mode in GRAY_MODES else 3
    size = _folder_transform(cfg, channels)(first).shape[1:]
    return classes, channels, tuple(int(v) for v in size)


def _folder_transform(cfg: dict, channels: int):
    from torchvision import transforms

    steps = [transforms.Lambda(lambda im: im.convert("L" if channels == 1 else "RGB"))]
    if cfg.get("resize"):
        steps.append(transforms.Resize(int(cfg["resize"])))
    if cfg.get("image_size"):
        steps.append(transforms.CenterCrop(int(cfg["image_size"])))
    return transforms.Compose([*steps, transforms.PILToTensor()])


def folder(cfg: dict):
    """An ImageFolder tree ``root/test/<class>/*`` (and optional ``root/train/``, same classes), classes sorted by
    name; images converted to the first test image's channel count, resized and centre-cropped as configured."""
    root = Path(cfg["root"])
    classes, channels, shape = folder_layout(cfg)
    tf = _folder_transform(cfg, channels)
    out = []
    for split in ("train", "test"):
        if split == "train" and not (root / "train").is_dir():
            out.append((np.zeros((0, channels, *shape), np.uint8), np.zeros(0, np.int64)))
            continue
        names, files = _folder_classes(root / split)
        require(names == classes, f"image folder {root}: train and test name different classes")
        xs, ys = [], []
        for label, paths in enumerate(files):
            for path in paths:
                img = tf(_open_image(path))
                require(
                    tuple(img.shape) == (channels, *shape),
                    f"image {path} is {tuple(img.shape[1:])} after resize / crop, the first is {shape}; "
                    f"set data.image_size to crop all alike",
                )
                xs.append(img.numpy())
                ys.append(label)
        out.append((np.stack(xs), np.asarray(ys, dtype=np.int64)))
    return out[0][0], out[1][0], out[0][1], out[1][1], classes


def _npz_images(x: np.ndarray, where: str) -> np.ndarray:
    """N×C×H×W from N×C×H×W, N×H×W×C (C = 1 or 3) or N×H×W; uint8, or float in [0, 1] as float32."""
    require(x.ndim in (3, 4), f"{where}: x has shape {x.shape}; expected N×C×H×W, N×H×W×C or N×H×W")
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    require(x.shape[1] in (1, 3), f"{where}: images of shape {x.shape[1:]} have no 1- or 3-channel axis")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    require(np.issubdtype(x.dtype, np.floating), f"{where}: pixels must be uint8 or float in [0, 1], got {x.dtype}")
    require(bool(np.isfinite(x).all()), f"{where}: pixels hold NaN or inf")
    require(
        x.size == 0 or (x.min() >= 0 and x.max() <= 1),
        f"{where}: float pixels span [{x.min():g}, {x.max():g}], expected [0, 1]",
    )
    return np.ascontiguousarray(x, dtype=np.float32)


def npz(cfg: dict):
    """One ``.npz`` file at ``root``: ``x``, ``y`` (the test split), optional ``x_train``, ``y_train`` and
    ``classes`` (names); read without pickles."""
    path = Path(cfg["root"])
    arrays = load_npz(path, "npz file")
    require("x" in arrays and "y" in arrays, f"npz file {path} needs arrays x and y; it has {sorted(arrays)}")
    splits = {}
    for split, (kx, ky) in {"test": ("x", "y"), "train": ("x_train", "y_train")}.items():
        if kx not in arrays:
            continue
        x, y = _npz_images(arrays[kx], f"{path}: {kx}"), np.asarray(arrays.get(ky, np.zeros(0)))
        require(
            y.ndim == 1 and len(y) == len(x) and np.issubdtype(y.dtype, np.integer),
            f"{path}: {ky} must hold one integer label per image of {kx} ({len(x)})",
        )
        splits[split] = (x, y.astype(np.int64))
    xte, yte = splits["test"]
    require(len(xte) > 0, f"npz file {path}: x holds no images")
    xtr, ytr = splits.get("train", (np.zeros((0, *xte.shape[1:]), xte.dtype), np.zeros(0, np.int64)))
    require(xtr.shape[1:] == xte.shape[1:], f"{path}: x_train images are {xtr.shape[1:]}, x images {xte.shape[1:]}")
    k = int(max(yte.max(), ytr.max() if len(ytr) else 0)) + 1
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(k)]
    require(
        min(yte.min(), ytr.min() if len(ytr) else 0) >= 0 and k <= len(classes),
        f"{path}: labels outside 0..{len(classes) - 1}",
    )
    return xtr, xte, ytr, yte, classes
