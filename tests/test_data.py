"""Datasets: the embedded split, the CIFAR-10 path on a local fixture, and clear errors."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smoothcert import data
from smoothcert.errors import SmoothcertError
from smoothcert.training.models import build_model


def _cfg(name, root, **kw):
    return {
        "dataset": name,
        "root": str(root),
        "download": False,
        "verify_checksums": True,
        "test_fraction": 0.3,
        "seed": 0,
        **kw,
    }


def test_digits_split_is_seeded_and_stratified(tmp_path):
    a = data.prepare(_cfg("digits", tmp_path), tmp_path / "a")
    data.prepare(_cfg("digits", tmp_path), tmp_path / "b")
    assert a["train"] + a["test"] == 1797
    xa, ya = data.load_split(tmp_path / "a", "test", "digits")
    xb, yb = data.load_split(tmp_path / "b", "test", "digits")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert 0.0 <= xa.min() and xa.max() <= 1.0 and xa.shape[1:] == (1, 8, 8)
    counts = np.bincount(ya.numpy(), minlength=10)
    assert counts.min() >= 50 and counts.max() - counts.min() <= 4  # classes hold 174-183 images


def _foolbox_cifar():
    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        pytest.skip("foolbox (the CIFAR-10 fixture images) is not installed: pip install --no-deps foolbox")
    folder = Path(spec.origin).parent / "data"
    files = sorted(folder.glob("cifar10_*.png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    y = [int(f.stem.split("_")[-1]) for f in files]
    return x, y


def _write_cifar_fixture(root: Path):
    x, y = _foolbox_cifar()
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    flat = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": flat, "labels": y}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)
    return x, y


def test_cifar10_fixture_prepares_and_runs_through_a_resnet(tmp_path):
    x, y = _write_cifar_fixture(tmp_path / "raw")
    summary = data.prepare(_cfg("cifar10", tmp_path / "raw", verify_checksums=False), tmp_path / "prep")
    assert summary == {"dataset": "cifar10", "train": 5 * len(x), "test": len(x), "num_classes": 10}
    xt, yt = data.load_split(tmp_path / "prep", "test", "cifar10")
    assert xt.shape == (len(x), 3, 32, 32) and yt.tolist() == y
    assert torch.allclose(xt[0].permute(1, 2, 0) * 255, torch.from_numpy(x[0]).float())
    meta = data.info("cifar10")
    model = build_model("cifar_resnet20", 3, 10, 32, list(meta.mean), list(meta.std)).eval()
    assert model(xt[:2]).shape == (2, 10)


def test_cifar10_checksums_refuse_unverified_fixture(tmp_path):
    _write_cifar_fixture(tmp_path / "raw")
    with pytest.raises(SmoothcertError, match="cifar10 not found or corrupt"):
        data.prepare(_cfg("cifar10", tmp_path / "raw"), tmp_path / "prep")


def test_cifar10_offline_names_the_folder(tmp_path):
    with pytest.raises(SmoothcertError, match=str(tmp_path / "nowhere")):
        data.prepare(_cfg("cifar10", tmp_path / "nowhere"), tmp_path / "prep")


def test_imagenet_folder_path(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("n01", "n02"):
            d = tmp_path / "inet" / split / cls
            d.mkdir(parents=True)
            for k in range(2):
                Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(d / f"{k}.JPEG")
    out = data.LOADERS["imagenet"](_cfg("imagenet", tmp_path / "inet", image_size=32))
    assert out[1].shape == (4, 3, 32, 32) and out[3].tolist() == [0, 0, 1, 1]
    with pytest.raises(SmoothcertError, match="imagenet folder missing"):
        data.LOADERS["imagenet"](_cfg("imagenet", tmp_path / "missing"))


def test_load_split_rejects_wrong_shape(tmp_path):
    torch.save({"x": torch.zeros(3, 1, 5, 5), "y": torch.zeros(3, dtype=torch.long)}, tmp_path / "test.pt")
    with pytest.raises(SmoothcertError, match="expected"):
        data.load_split(tmp_path, "test", "digits")


def test_unknown_dataset():
    with pytest.raises(SmoothcertError, match="unknown dataset"):
        data.info("svhn")


def test_test_indices():
    assert data.test_indices(100, 0, 20, None).tolist() == [0, 20, 40, 60, 80]
    assert data.test_indices(100, 5, 10, 3).tolist() == [5, 15, 25]
