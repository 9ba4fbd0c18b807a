"""Fashion-MNIST: the strict idx reader on tiny generated fixtures, the search order, and one-line errors.

No network and no dependence on the Debian package; the real-data check runs only where
``apt-get install dataset-fashion-mnist`` has put the files in ``data.readers.FASHION_SYSTEM_DIR``.
"""

import gzip
from pathlib import Path

import numpy as np
import pytest

from smoothcert import data
from smoothcert.data import readers
from smoothcert.errors import SmoothcertError

SYSTEM_DIR = readers.FASHION_SYSTEM_DIR  # captured before any monkeypatching


@pytest.fixture(autouse=True)
def no_system_copy(monkeypatch, tmp_path):
    """Never pick up an installed Debian copy, so results don't depend on the machine."""
    monkeypatch.setattr(readers, "FASHION_SYSTEM_DIR", tmp_path / "no-system-copy")


def _cfg(root, **kw):
    return {
        "dataset": "fashion-mnist",
        "root": str(root),
        "download": False,
        "verify_checksums": False,
        "test_fraction": 0.3,
        "seed": 0,
        **kw,
    }


def _idx(arr: np.ndarray) -> bytes:
    magic = 0x803 if arr.ndim == 3 else 0x801
    return magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape) + arr.tobytes()


def _write_fixture(folder: Path, gz: bool, n_train=30, n_test=10, seed=0):
    """Random idx files in ``folder``; returns the arrays they hold."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        blob = _idx(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return arrays


def _check(out, arrays):
    xtr, xte, ytr, yte = out
    assert xtr.dtype == xte.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int64
    assert xtr.shape == (30, 1, 28, 28) and xte.shape == (10, 1, 28, 28)
    assert np.array_equal(xtr[:, 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(xte[:, 0], arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ytr, arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(yte, arrays["t10k-labels-idx1-ubyte"])


def _one_line_error(cfg, match):
    with pytest.raises(SmoothcertError, match=match) as info:
        readers.fashion_mnist(cfg)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_torchvision_layout(tmp_path, gz):
    arrays = _write_fixture(tmp_path / "raw" / "FashionMNIST" / "raw", gz)
    _check(readers.fashion_mnist(_cfg(tmp_path / "raw")), arrays)


def test_reads_root_itself_and_prefers_the_torchvision_layout(tmp_path):
    flat = _write_fixture(tmp_path / "raw", gz=True, seed=1)
    _check(readers.fashion_mnist(_cfg(tmp_path / "raw")), flat)
    nested = _write_fixture(tmp_path / "raw" / "FashionMNIST" / "raw", gz=False, seed=2)
    _check(readers.fashion_mnist(_cfg(tmp_path / "raw")), nested)


def test_system_dir_is_the_fallback(tmp_path, monkeypatch):
    arrays = _write_fixture(tmp_path / "system", gz=True)
    monkeypatch.setattr(readers, "FASHION_SYSTEM_DIR", tmp_path / "system")
    _check(readers.fashion_mnist(_cfg(tmp_path / "empty-root")), arrays)


def test_prepare_writes_loadable_splits(tmp_path):
    arrays = _write_fixture(tmp_path / "raw", gz=True)
    summary = data.prepare(_cfg(tmp_path / "raw"), tmp_path / "prep")
    assert summary == {"dataset": "fashion-mnist", "train": 30, "test": 10, "num_classes": 10}
    x, y = data.load_split(tmp_path / "prep", "test", "fashion-mnist")
    assert x.shape == (10, 1, 28, 28) and y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_verify_rejects_fixture_by_md5(tmp_path):
    _write_fixture(tmp_path / "raw", gz=True)
    msg = _one_line_error(_cfg(tmp_path / "raw", verify_checksums=True), "md5 of the decompressed content")
    assert "train-images-idx3-ubyte.gz" in msg


def test_verify_requires_full_counts(tmp_path, monkeypatch):
    """With the md5 check satisfied (patched to the fixture's sums), 30/10 images still fail the 60000/10000 check."""
    import hashlib

    arrays = _write_fixture(tmp_path / "raw", gz=False)
    sums = {name: hashlib.md5(_idx(arr)).hexdigest() for name, arr in arrays.items()}
    monkeypatch.setattr(readers, "FASHION_MD5", sums)
    _one_line_error(_cfg(tmp_path / "raw", verify_checksums=True), "train: 30 images, expected 60000")


def test_truncated_plain_file(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=False)
    path = folder / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    msg = _one_line_error(_cfg(folder), "truncated or padded")
    assert str(path) in msg


def test_truncated_gzip(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=True)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    assert str(path) in _one_line_error(_cfg(folder), "truncated gzip stream")


def test_gzip_crc_error(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=True)
    path = folder / "train-labels-idx1-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[-8] ^= 0xFF  # the stored CRC32 of the trailer
    path.write_bytes(bytes(blob))
    assert str(path) in _one_line_error(_cfg(folder), "corrupt gzip data")


def test_garbage_named_gz(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=True)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"<html>not found</html>")
    assert str(path) in _one_line_error(_cfg(folder), "not gzip data")


def test_bad_magic(tmp_path):
    folder = tmp_path / "raw"
    arrays = _write_fixture(folder, gz=True)
    path = folder / "train-labels-idx1-ubyte.gz"  # an images header where labels belong
    path.write_bytes(gzip.compress(_idx(arrays["train-images-idx3-ubyte"])))
    assert str(path) in _one_line_error(_cfg(folder), "magic 0x00000803, expected 0x00000801")


def test_wrong_image_size_and_bad_labels(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=False)
    (folder / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((10, 32, 32), np.uint8)))
    _one_line_error(_cfg(folder), "32x32 images, expected 28x28")
    _write_fixture(folder, gz=False)
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.full(10, 10, np.uint8)))
    _one_line_error(_cfg(folder), "label 10 is outside 0..9")
    (folder / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(9, np.uint8)))
    _one_line_error(_cfg(folder), "10 images but 9 labels")


def test_missing_dataset_names_the_debian_package(tmp_path):
    msg = _one_line_error(_cfg(tmp_path / "nowhere"), "apt-get install dataset-fashion-mnist")
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg and "download: true" in msg


def test_partial_folder_is_reported(tmp_path):
    folder = tmp_path / "raw"
    _write_fixture(folder, gz=True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    msg = _one_line_error(_cfg(folder), "apt-get install dataset-fashion-mnist")
    assert f"{folder} lacks t10k-labels-idx1-ubyte" in msg


@pytest.mark.skipif(
    not (SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="real data absent: apt-get install dataset-fashion-mnist",
)
def test_real_debian_data_verifies(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "FASHION_SYSTEM_DIR", SYSTEM_DIR)
    xtr, xte, ytr, yte = readers.fashion_mnist(_cfg(tmp_path / "empty-root", verify_checksums=True))
    assert xtr.shape == (60000, 1, 28, 28) and xte.shape == (10000, 1, 28, 28)
    assert xtr.dtype == np.uint8 and ytr.dtype == yte.dtype == np.int64
    assert np.bincount(ytr, minlength=10).tolist() == [6000] * 10
    assert np.bincount(yte, minlength=10).tolist() == [1000] * 10
