"""Models someone already has (issue #21): every format loads into the function its authors built, bad files are
one line, a folder / npz of images is a dataset, and a checkpoint entry is certified through Snakemake with no
train job. Fixtures are made here (no downloads): locuslab-layout checkpoints by an independent module
(tests/locuslab_fixture.py), exports of a small CNN, PNG folders, the CIFAR-10 images of the foolbox wheel.
"""

from __future__ import annotations

import argparse
import collections
import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from locuslab_fixture import locuslab_model, write_locuslab_checkpoint
from smoothcert import config as config_mod
from smoothcert import data as data_mod
from smoothcert.engine.certify import certify_batch
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling
from smoothcert.errors import SmoothcertError
from smoothcert.training.model_check import check_config, check_model
from smoothcert.training.pretrained import load_model_file

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def small_cnn(seed: int = 0, channels: int = 3, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    ).eval()


def export_onnx(model: nn.Module, path: Path, shape=(3, 32, 32)) -> Path:
    pytest.importorskip("onnx")
    torch.onnx.export(
        model,
        torch.zeros(1, *shape),
        str(path),
        dynamo=False,
        opset_version=17,  # onnx2torch converts AveragePool up to opset 18
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def export_torchscript(model: nn.Module, path: Path, shape=(3, 32, 32)) -> Path:
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, *shape)), str(path))
    return path


def foolbox_images() -> list[tuple[Path, int]]:
    """The 20 CIFAR-10 test images of the foolbox wheel (found without importing foolbox) and their labels."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox is not installed (make setup: pip install --no-deps foolbox)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    found = sorted(folder.glob("cifar10_*_*.png"))
    assert len(found) == 20
    return [(p, int(p.stem.rsplit("_", 1)[1])) for p in found]


def cifar_folder(root: Path) -> Path:
    """An ImageFolder tree root/test/<CIFAR-10 class>/*.png of the foolbox images."""
    for path, label in foolbox_images():
        dest = root / "test" / CIFAR10[label] / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    return root


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("arch", ["cifar_resnet20", pytest.param("cifar_resnet110", marks=pytest.mark.slow)])
def test_locuslab_layout_loads_the_same_function(tmp_path, arch):
    ref = write_locuslab_checkpoint(tmp_path / "checkpoint.pth.tar", arch, seed=3)
    loaded = load_model_file(tmp_path / "checkpoint.pth.tar", size=32)
    assert (loaded.format, loaded.arch) == ("locuslab", arch)
    assert loaded.normalize == ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = ref(x), loaded.module(x)
    assert want.std() > 0.1  # a real spread of logits, not a degenerate net
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert loaded.parameters == sum(p.numel() for p in ref.parameters())


def test_locuslab_layout_mixup_is_caught(tmp_path):
    """Swapping two blocks' weights keeps every key and shape: only the logits tell, and they do."""
    ref = locuslab_model("cifar_resnet20", seed=0)
    state = ref.state_dict()
    for key in [k for k in state if k.startswith("1.layer1.0.")]:
        other = key.replace("1.layer1.0.", "1.layer1.1.")
        state[key], state[other] = state[other].clone(), state[key].clone()
    torch.save({"arch": "cifar_resnet20", "state_dict": state, "epoch": 1}, tmp_path / "swapped.pth.tar")
    loaded = load_model_file(tmp_path / "swapped.pth.tar")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(loaded.module(x), ref(x), atol=1e-3)


@pytest.mark.slow
def test_resnet50_under_dataparallel_prefix(tmp_path):
    ref = write_locuslab_checkpoint(tmp_path / "imagenet.pth.tar", "resnet50", num_classes=10, seed=2)
    assert all(k.startswith("1.module.") for k in torch.load(tmp_path / "imagenet.pth.tar")["state_dict"])
    loaded = load_model_file(tmp_path / "imagenet.pth.tar")
    assert (loaded.format, loaded.arch) == ("locuslab", "resnet50")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), ref(x), rtol=1e-5, atol=1e-5)


def _certificates(model, x, seed=0):
    sampling = Sampling(kind="gaussian", batch_size=600, chunk=150, device="cpu")
    seeds = ([seed + i for i in range(len(x))], [seed + 100 + i for i in range(len(x))])
    return certify_batch(model, x, 0.25, 10, 50, 300, 0.001, "l2", *seeds, sampling)


def test_torchscript_and_onnx_exports_match_the_original(tmp_path):
    model = small_cnn(seed=5)
    ts = load_model_file(export_torchscript(model, tmp_path / "cnn.pt"))
    ox = load_model_file(export_onnx(model, tmp_path / "cnn.onnx"))
    assert (ts.format, ox.format) == ("torchscript", "onnx")
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(x)
        for loaded in (ts, ox):
            assert (loaded.module(x) - want).abs().max() <= 1e-5
    ref = _certificates(model, x)
    ort = load_model_file(tmp_path / "cnn.onnx", onnx_route="onnxruntime")  # certify's route on the CPU
    for loaded in (ts, ox, ort):
        got = _certificates(loaded.module, x)
        for key in ("predict", "count", "pA_lower", "gap"):
            np.testing.assert_array_equal(got[key], ref[key])


def test_onnxruntime_route_gives_the_same_logits(tmp_path):
    pytest.importorskip("onnxruntime")
    model = small_cnn(seed=6)
    path = export_onnx(model, tmp_path / "cnn.onnx")
    ort = load_model_file(path, onnx_route="onnxruntime")
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        assert (ort.module(x) - model(x)).abs().max() <= 1e-5


def test_state_dict_for_builtin_torchvision_and_python_archs(tmp_path):
    net = small_cnn(seed=1)
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    x = torch.rand(3, 3, 32, 32)
    arch = "python:test_pretrained:small_cnn"
    loaded = load_model_file(tmp_path / "plain.pt", arch=arch, kwargs={"seed": 9})
    normalized = load_model_file(
        tmp_path / "plain.pt", arch=arch, normalize={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    )
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), net(x))
        torch.testing.assert_close(normalized.module(x), net((x - 0.5) / 0.25))
    tv = load_model_file(
        _save(tmp_path / "tv.pt", _torchvision("resnet18", 10).state_dict()),
        arch="torchvision:resnet18",
        kwargs={"num_classes": 10},
    )
    with torch.no_grad():
        torch.testing.assert_close(tv.module(x), _torchvision("resnet18", 10)(x))
    builtin = load_model_file(
        _save(tmp_path / "b.pt", _builtin()[1].state_dict()), arch="digits_cnn", in_channels=1, num_classes=10, size=8
    )
    check_model(builtin.module, (1, 8, 8), 10, "digits_cnn")


def _torchvision(name, k):
    import torchvision

    torch.manual_seed(4)
    return torchvision.models.get_model(name, weights=None, num_classes=k).eval()


def _builtin():
    from smoothcert.training.models import build_model

    torch.manual_seed(0)
    return build_model("digits_cnn", 1, 10, 8, [0.3], [0.4])


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_probabilities_become_log_probabilities(tmp_path):
    model = nn.Sequential(small_cnn(seed=2), nn.Softmax(dim=1)).eval()
    loaded = load_model_file(export_torchscript(model, tmp_path / "p.pt"), outputs="probabilities")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x).softmax(1), model(x), rtol=1e-5, atol=1e-6)


def test_smoothcert_model_pt_records_sigma(tmp_path):
    model = _builtin()
    torch.save(
        {"epoch": 1, "arch": "digits_cnn", "state_dict": model.state_dict(), "spec": "gaussian-fixed-l2-0.5"},
        tmp_path / "model.pt",
    )
    loaded = load_model_file(tmp_path / "model.pt", in_channels=1, num_classes=10, size=8)
    assert (loaded.format, loaded.sigma) == ("smoothcert", 0.5)
    assert loaded.normalize == (pytest.approx([0.3]), pytest.approx([0.4]))
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


# ---------------------------------------------------------------- bad input: one line each


def _one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_keys_that_do_not_fit_name_the_first_missing_and_unexpected(tmp_path):
    state = locuslab_model("cifar_resnet20").state_dict()
    state["1.extra.weight"] = state.pop("1.fc.weight")
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, tmp_path / "bad.pth.tar")
    with pytest.raises(SmoothcertError) as e:
        load_model_file(tmp_path / "bad.pth.tar")
    msg = _one_line(e)
    assert "missing keys ['1.fc.weight']" in msg and "unexpected keys ['1.extra.weight']" in msg


def test_not_a_model_and_code_running_pickles_are_refused(tmp_path):
    (tmp_path / "notes.pt").write_text("these are not weights")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save(argparse.Namespace(weights=1), tmp_path / "pickle.pt")
    with pytest.raises(SmoothcertError, match="not a torch file"):
        load_model_file(tmp_path / "notes.pt")
    with pytest.raises(SmoothcertError, match="is not a model"):
        load_model_file(tmp_path / "list.pt")
    with pytest.raises(SmoothcertError, match="argparse.Namespace.*refused") as e:
        load_model_file(tmp_path / "pickle.pt")
    _one_line(e)


def test_onnx_graph_with_an_unsupported_operator(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("FrobnicateImage", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "odd.onnx")
    with pytest.raises(SmoothcertError, match="operator FrobnicateImage .*onnx2torch cannot convert") as e:
        load_model_file(tmp_path / "odd.onnx")
    _one_line(e)


def test_input_shape_and_output_size_are_checked(tmp_path):
    path = export_torchscript(small_cnn(seed=0), tmp_path / "cnn.pt")
    module = load_model_file(path).module
    with pytest.raises(SmoothcertError, match=r"does not take the data's images of shape \(1, 28, 28\)") as e:
        check_model(module, (1, 28, 28), 10, "cnn")
    _one_line(e)
    with pytest.raises(SmoothcertError, match="outputs 10 scores per image; the data has 5 classes"):
        check_model(module, (3, 32, 32), 5, "cnn")
    with pytest.raises(SmoothcertError, match="takes 32×32 images, the data's are 28×28"):
        load_model_file(write_locuslab_path(tmp_path), size=28)


def write_locuslab_path(tmp_path: Path) -> Path:
    path = tmp_path / "l.pth.tar"
    write_locuslab_checkpoint(path, "cifar_resnet20")
    return path


def test_checkpoint_entry_with_training_settings_is_refused(params):
    cfg = copy.deepcopy(params)
    cfg["models"] = [{"checkpoint": "m.pt", "sigma": 0.25, "norm": "l2", "methods": ["cohen"], "objective": "gaussian"}]
    with pytest.raises(
        SmoothcertError, match=r"models.0 has checkpoint 'm.pt' and the training settings \['objective'\]"
    ):
        config_mod.validate(cfg, "test")
    cfg["models"] = [{"checkpoint": "m.pt", "sigma": 0.25, "norm": "l2", "methods": ["cohen"], "format": "pickle"}]
    with pytest.raises(SmoothcertError, match="models.0.format"):
        config_mod.validate(cfg, "test")


def test_folder_without_images_or_with_an_empty_class(tmp_path):
    (tmp_path / "empty" / "test").mkdir(parents=True)
    with pytest.raises(SmoothcertError, match="has no class folders"):
        data_mod.folder_layout({"root": str(tmp_path / "empty"), "image_size": None, "resize": None})
    root = _png_folder(tmp_path / "f", classes=("a", "b"), per_class=1)
    (root / "test" / "c").mkdir()
    (root / "test" / "c" / "readme.txt").write_text("no image")
    with pytest.raises(SmoothcertError, match="class 'c' has no images") as e:
        data_mod.folder_layout({"root": str(root), "image_size": None, "resize": None})
    _one_line(e)


def test_bad_model_files_fail_the_cli_in_one_line(tmp_path, params):
    """Through ``smoothcert inspect-model`` and ``certify``: exit 2, one line, no output left (docs/bad_inputs.md)."""
    from test_bad_inputs import fails

    cfg = copy.deepcopy(params)
    cfg["data"].update(dataset="npz", root=str(cifar_npz(tmp_path / "c.npz")), download=False)
    cfg["models"] = [{"checkpoint": str(tmp_path / "five.pt"), "sigma": 0.25, "norm": "l2", "methods": ["cohen"]}]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    export_torchscript(small_cnn(classes=5), tmp_path / "five.pt")
    export_torchscript(small_cnn(channels=1), tmp_path / "gray.pt", shape=(1, 32, 32))
    (tmp_path / "notes.pt").write_text("these are not weights")
    torch.save(argparse.Namespace(weights=1), tmp_path / "pickle.pt")
    state = locuslab_model("cifar_resnet20").state_dict()
    state.pop("1.fc.bias")
    torch.save({"arch": "cifar_resnet20", "state_dict": state}, tmp_path / "keys.pth.tar")
    cases = {
        "notes.pt": "not a torch file",
        "pickle.pt": "argparse.Namespace, which would run code",
        "keys.pth.tar": r"keys do not fit locuslab cifar_resnet20: missing keys \['1.fc.bias'\]",
        "gray.pt": r"does not take the data's images of shape \(3, 32, 32\)",
        "five.pt": "outputs 5 scores per image; the data has 10 classes",
    }
    for name, match in cases.items():
        fails("--config", tmp_path / "p.yaml", "inspect-model", tmp_path / name, match=match)
    data_mod.prepare({**cfg["data"], "seed": 0}, tmp_path / "prep")
    out = tmp_path / "shard.tsv"
    fails(
        *("--config", tmp_path / "p.yaml", "certify", "--model", "pretrained-five-l2-0.25", "--method", "cohen"),
        *("--checkpoint", tmp_path / "five.pt", "--data", tmp_path / "prep", "--out", out),
        match="outputs 5 scores per image",
        outputs=[out],
    )


# ---------------------------------------------------------------- data


def _png_folder(root: Path, classes=("cat", "dog"), per_class=3, size=32, mode="RGB") -> Path:
    gen = np.random.default_rng(0)
    for c in classes:
        (root / "test" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(gen.integers(0, 256, shape, dtype=np.uint8), mode).save(root / "test" / c / f"{i}.png")
    return root


def test_folder_dataset_prepares_sorted_classes_and_resizes(tmp_path):
    root = _png_folder(tmp_path / "imgs", classes=("zebra", "ant"), per_class=2, size=40)
    cfg = {"dataset": "folder", "root": str(root), "image_size": 32, "resize": 36, "seed": 0}
    summary = data_mod.prepare(cfg, tmp_path / "prep")
    assert summary["num_classes"] == 2 and summary["test"] == 4 and summary["train"] == 0
    x, y = data_mod.load_split(tmp_path / "prep", "test", "folder")
    assert tuple(x.shape) == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    assert data_mod.class_names(tmp_path / "prep", "folder") == ["ant", "zebra"]


def test_npz_dataset_in_either_layout(tmp_path):
    gen = np.random.default_rng(1)
    nhwc = gen.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=nhwc, y=np.arange(5) % 3, classes=np.array(["r", "g", "b"]))
    np.savez(tmp_path / "b.npz", x=nhwc.transpose(0, 3, 1, 2).astype(np.float32) / 255, y=np.arange(5) % 3)
    xs = []
    for name in ("a", "b"):
        data_mod.prepare({"dataset": "npz", "root": str(tmp_path / f"{name}.npz"), "seed": 0}, tmp_path / name)
        xs.append(data_mod.load_split(tmp_path / name, "test", "npz")[0])
    torch.testing.assert_close(xs[0], xs[1])
    assert data_mod.class_names(tmp_path / "a", "npz") == ["r", "g", "b"]
    np.savez(tmp_path / "c.npz", x=nhwc.astype(np.float32), y=np.arange(5))
    with pytest.raises(SmoothcertError, match=r"float pixels span \[0, 255\], expected \[0, 1\]"):
        data_mod.prepare({"dataset": "npz", "root": str(tmp_path / "c.npz"), "seed": 0}, tmp_path / "c")


def cifar_npz(path: Path) -> Path:
    """The foolbox images as an npz dataset (N×H×W×C uint8) with CIFAR-10's ten class names."""
    pairs = foolbox_images()
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p, _ in pairs])
    np.savez(path, x=x, y=np.array([label for _, label in pairs]), classes=np.array(CIFAR10))
    return path


def test_foolbox_cifar10_images_through_a_locuslab_resnet(tmp_path):
    """The 20 real CIFAR-10 test images (labels: CIFAR-10's) through a locuslab-layout ResNet-110 fixture: the
    loaded model takes them and predicts what the reference module predicts; as a folder they sort into
    CIFAR-10's label order (the class names are alphabetical)."""
    data_mod.prepare({"dataset": "npz", "root": str(cifar_npz(tmp_path / "c.npz")), "seed": 0}, tmp_path / "prep")
    x, y = data_mod.load_split(tmp_path / "prep", "test", "npz")
    assert tuple(x.shape) == (20, 3, 32, 32) and data_mod.class_names(tmp_path / "prep", "npz") == CIFAR10
    ref = write_locuslab_checkpoint(tmp_path / "noise_0.25" / "checkpoint.pth.tar", "cifar_resnet110", seed=7)
    loaded = load_model_file(tmp_path / "noise_0.25" / "checkpoint.pth.tar", size=32)
    check_model(loaded.module, tuple(x.shape[1:]), 10, "fixture")
    with torch.no_grad():
        want, got = ref(x), loaded.module(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.argmax(1), want.argmax(1))
    folder = cifar_folder(tmp_path / "cifar")
    data_mod.prepare({"dataset": "folder", "root": str(folder), "image_size": None, "resize": None}, tmp_path / "f")
    names = data_mod.class_names(tmp_path / "f", "folder")
    xf, yf = data_mod.load_split(tmp_path / "f", "test", "folder")
    assert names == [c for c in CIFAR10 if c in names]  # alphabetical = CIFAR-10's order
    assert sorted(CIFAR10.index(names[i]) for i in yf.tolist()) == sorted(y.tolist())


# ---------------------------------------------------------------- the workflow


def test_pre_job_check_names_the_bad_model(tmp_path, params):
    root = cifar_folder(tmp_path / "cifar")
    path = export_torchscript(small_cnn(classes=5), tmp_path / "five.pt")  # the folder has 8 classes
    cfg = copy.deepcopy(params)
    cfg["data"].update(dataset="folder", root=str(root), image_size=None, download=False)
    cfg["models"] = [{"checkpoint": str(path), "sigma": 0.25, "norm": "l2", "methods": ["cohen"]}]
    config_mod.validate(cfg, "test")
    with pytest.raises(
        SmoothcertError, match=r"model pretrained-five-l2-0.25 .* outputs 5 scores per image; the data has 8"
    ):
        check_config(cfg)
    cfg["models"].append(
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.5], "methods": ["cohen"]}
    )
    with pytest.raises(SmoothcertError, match="would be trained on data.dataset = folder"):
        check_config(cfg)


def _dag_jobs(root: Path, override: Path) -> collections.Counter:
    """Jobs per rule that ``snakemake -n`` plans with ``override`` merged over params.yaml."""
    from test_stages import _jobs
    from test_workflow import run

    proc = run([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", str(override)], root, timeout=300)
    return collections.Counter(job["rule"] for job in _jobs(proc.stdout + proc.stderr))


E2E = {
    "data": {"dataset": "folder", "root": "images", "image_size": None, "resize": None, "download": False},
    "test": {"start": 0, "step": 5, "limit": 4, "shards": 1},
    "video": {"enabled": False, "methods": []},
    "certify": {"mode": "fixed", "n0": 20, "n": 200, "alpha": 0.001, "batch_size": 1000, "chunk": 200, "amp": False},
    "ddrs": {"iterations": 2, "lr": 0.04, "samples": 4, "batch_size": 4, "sigma0": None, "sigma_min": 0.01, "precision": "float32"},
    "ancer": {"iterations": 2, "lr": 0.04, "samples": 4, "batch_size": 4, "kappa": 2.0, "precision": "float32"},
    "smooth_reduce": {"resize": 36, "patch": 32, "stride": 4, "positions": "grid", "num_random": 2, "variant": "correlated"},
    "models": [
        {"checkpoint": "released/noise_0.25/checkpoint.pth.tar", "sigma": 0.25, "norm": "l2",
         "methods": ["cohen", "ddrs", "ancer", "smooth_reduce_max"]},
        {"checkpoint": "exports/cnn_ts.pt", "sigma": 0.5, "norm": "l2", "methods": ["cohen"]},
        {"checkpoint": "exports/cnn.onnx", "sigma": 0.5, "norm": "l2", "methods": ["cohen"]},
    ],
}  # fmt: skip


@pytest.mark.slow
def test_snakemake_certifies_released_and_exported_models_on_a_folder(tmp_path):
    from test_workflow import copy_repo, run

    root = copy_repo(tmp_path / "repo")
    cifar_folder(root / "images")
    ref = write_locuslab_checkpoint(
        root / "released" / "noise_0.25" / "checkpoint.pth.tar", "cifar_resnet20", 8, seed=1
    )
    cnn = small_cnn(seed=3, classes=8)  # the 20 foolbox images hold 8 of CIFAR-10's classes
    (root / "exports").mkdir()
    export_torchscript(cnn, root / "exports" / "cnn_ts.pt")
    export_onnx(cnn, root / "exports" / "cnn.onnx")
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump(E2E))
    jobs = _dag_jobs(root, override)
    assert "train" not in jobs and jobs["prepare_data"] == 1
    assert jobs["certify"] == 6 and jobs["optimize"] == 2 and jobs["memory_check"] == 2
    run([str(BIN / "snakemake"), "--cores", "2", "--configfile", str(override)], root, timeout=600)
    results = root / "results" / "folder"
    ids = {"pretrained-checkpoint-l2-0.25", "pretrained-cnn_ts-l2-0.5", "pretrained-cnn-l2-0.5"}
    assert {p.name for p in results.iterdir()} == ids
    assert not (root / "models").exists()  # nothing trained
    summary = pd.read_csv(root / "report" / "summary.csv")
    assert len(summary) == 6 and set(summary["objective"]) == {"pretrained"}
    assert set(summary["method"]) == {"cohen", "ddrs", "ancer", "smooth_reduce_max"}
    page = (root / "report" / "page.md").read_text()
    assert "pretrained checkpoint.pth.tar (auto format)" in page and "cnn.onnx" in page and "airplane" in page
    # the predictions are the model's: the Cohen rows are what the reference module gives with the same draws
    table = pd.read_csv(results / "pretrained-checkpoint-l2-0.25" / "cohen" / "certify.tsv", sep="\t")
    x, _ = data_mod.load_split(root / "data" / "prepared" / "folder", "test", "folder")
    idx = table["idx"].to_numpy()
    c = E2E["certify"]
    seeds = [[stream_seed(0, int(i), stream) for i in idx] for stream in ("select", "estimate")]
    sampling = Sampling(kind="gaussian", batch_size=c["batch_size"], chunk=c["chunk"], device="cpu")
    want = certify_batch(ref, x[idx], 0.25, 8, c["n0"], c["n"], c["alpha"], "l2", *seeds, sampling)
    np.testing.assert_array_equal(table["predict"].to_numpy(), want["predict"])
    np.testing.assert_array_equal(table["count"].to_numpy(), want["count"])


@pytest.mark.parametrize("extra", [None, "sequential"])
def test_cifar10_locuslab_override_validates(params, extra):
    """config/cifar10_locuslab.yaml is a small override of params.yaml: merged, it validates, trains nothing and
    certifies Cohen et al.'s four released ResNet-110 models with every method, as the paper did."""
    override = yaml.safe_load((REPO / "config" / "cifar10_locuslab.yaml").read_text())
    assert set(override) < set(params) and not {"seed", "model", "train", "macer", "smoothadv"} & set(override)
    files = [REPO / "config" / f"{name}.yaml" for name in ("cifar10_locuslab", extra) if name]
    cfg = config_mod.load(REPO / "params.yaml", tuple(files))  # merged as snakemake --configfile does, validated
    specs = config_mod.model_specs(cfg)
    assert config_mod.trained_specs(cfg) == [] and [s.sigma for s in specs] == [0.12, 0.25, 0.5, 1.0]
    assert all(s.checkpoint.endswith("checkpoint.pth.tar") for s in specs)
    assert {m for s in specs for m in s.methods} == {"cohen", "ddrs", "ancer", "smooth_reduce_max"}
    assert cfg["certify"]["alpha"] == 0.001 and cfg["certify"]["n"] == cfg["certify"]["sequential"]["n_max"] == 100_000
    assert cfg["certify"]["mode"] == ("sequential" if extra else "fixed") and cfg["report"]["compare_paper"]
    assert len(data_mod.test_indices(10_000, cfg["test"]["start"], cfg["test"]["step"], cfg["test"]["limit"])) == 500


def test_inspect_model_reports_what_was_loaded(tmp_path, params, capsys):
    from smoothcert.cli import main

    cfg = copy.deepcopy(params)
    cfg["data"].update(dataset="npz", root=str(cifar_npz(tmp_path / "c.npz")), download=False)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    ref = write_locuslab_checkpoint(tmp_path / "noise_0.50" / "checkpoint.pth.tar", "cifar_resnet20", seed=4)
    assert (
        main(["--config", str(tmp_path / "p.yaml"), "inspect-model", str(tmp_path / "noise_0.50/checkpoint.pth.tar")])
        == 0
    )
    out = capsys.readouterr().out
    data_mod.prepare({**cfg["data"], "seed": 0}, tmp_path / "prepared")
    x, y = data_mod.load_split(tmp_path / "prepared", "test", "npz")
    with torch.no_grad():
        top1 = float((ref(x).argmax(1) == y).float().mean())
    for line in ("format          locuslab", "architecture    cifar_resnet20", "parameters      272,474",
                 "input shape     (3, 32, 32)", "classes         10: airplane, automobile", "mean [0.4914, 0.4822, 0.4465]",
                 "sigma           not recorded", f"clean top-1     {top1:.1%} on the first 20 test inputs"):  # fmt: skip
        assert line in out, (line, out)


def test_params_checkpoints_are_dvc_dependencies_of_the_certify_stage(tmp_path, monkeypatch):
    from smoothcert.pipeline import stages

    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"models": [{"checkpoint": "pretrained/m.onnx", "sigma": 0.5}, {"objective": "gaussian"}]})
    )
    assert stages.params_checkpoints(tmp_path / "params.yaml") == ["pretrained/m.onnx"]
    monkeypatch.setattr(stages, "params_checkpoints", lambda path=None: ["pretrained/m.onnx"])
    certify = next(d for d in stages.DVC_STAGES if "certify" in d.stages)
    train = next(d for d in stages.DVC_STAGES if d.stages == ("train",))
    assert "pretrained/m.onnx" in stages.dvc_deps(certify) and "pretrained/m.onnx" not in stages.dvc_deps(train)
