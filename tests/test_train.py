"""Training end to end on a trimmed digits set: every objective × σ mode, resume, the σ buffer."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml

from smoothcert import data as data_mod
from smoothcert.artifacts import load_torch, save_torch
from smoothcert.config import ModelSpec
from smoothcert.training.loop import make_model, train
from smoothcert.training.objectives import SIGMA_UPDATERS, TrainContext

REPO = Path(__file__).resolve().parents[1]

N_TRAIN, N_TEST, BATCH = 128, 32, 64


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    """digits prepared with smoothcert.data.prepare, then cut to N_TRAIN / N_TEST inputs."""
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    out = tmp_path_factory.mktemp("digits")
    data_mod.prepare({**cfg["data"], "dataset": "digits", "seed": cfg["seed"]}, out)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        blob = load_torch(out / f"{split}.pt")
        save_torch(out / f"{split}.pt", {"x": blob["x"][:n].clone(), "y": blob["y"][:n].clone()})
    return out


@pytest.fixture
def cfg():
    """params.yaml with one cheap epoch and small noise/attack/σ-update settings."""
    c = yaml.safe_load((REPO / "params.yaml").read_text())
    c["data"]["dataset"], c["model"]["arch"], c["device"] = "digits", "digits_cnn", "cpu"
    c["train"].update(epochs=1, batch_size=BATCH)
    c["macer"].update(m=2)
    c["smoothadv"].update(m=2, steps=2, warmup=0)
    c["data_dependent"].update(steps=2, samples=2)
    return c


def spec(objective="gaussian", sigma_mode="fixed", norm="l2", sigma=0.25):
    return ModelSpec(objective, sigma_mode, norm, sigma, ("cohen",))


def _history(path):
    return load_torch(path / "checkpoint.pt")["history"]


CASES = [(o, m, "l2") for o in ("gaussian", "macer", "smoothadv") for m in ("fixed", "dd")]
CASES += [("macer", "fixed", "l1"), ("smoothadv", "dd", "l1")]


@pytest.mark.parametrize("objective,sigma_mode,norm", CASES)
def test_every_objective_and_sigma_mode_trains(cfg, digits_dir, tmp_path, objective, sigma_mode, norm):
    metrics = train(cfg, spec(objective, sigma_mode, norm), digits_dir, tmp_path, "cpu", progress=False)
    assert len(metrics) == 1 and metrics.notna().all().all()
    assert (tmp_path / "model.pt").exists() and (tmp_path / "metrics.tsv").exists()
    buf = load_torch(tmp_path / "model.pt")["sigma_buffer"]
    assert buf.shape == (N_TRAIN,)
    if sigma_mode == "fixed":
        assert torch.equal(buf, torch.full((N_TRAIN,), 0.25))
    else:
        assert (buf >= cfg["ddrs"]["sigma_min"]).all() and (buf != 0.25).all()


def test_sigma_update_touches_only_the_batch_entries(cfg, digits_dir):
    xtr, ytr = data_mod.load_split(digits_dir, "train", "digits")
    torch.manual_seed(0)
    model = make_model(cfg).train()
    buffer = torch.full((N_TRAIN,), 0.25)
    ids = torch.tensor([3, 17, 42, 99, 120])
    ctx = TrainContext(cfg=cfg, epoch=0, generator=torch.Generator().manual_seed(0))
    # exactly as train.py's batch loop does it
    sig = SIGMA_UPDATERS["dd"](model, xtr[ids], ytr[ids], buffer[ids], "gaussian", ctx).detach()
    buffer[ids] = sig.cpu()
    others = torch.ones(N_TRAIN, dtype=torch.bool)
    others[ids] = False
    assert (buffer[others] == 0.25).all()
    assert (buffer[ids] != 0.25).all()


def test_sigma_buffer_survives_resume(cfg, digits_dir, tmp_path, monkeypatch):
    calls = []

    def plus_one(model, x, y, sigma, kind, ctx):
        calls.append(ctx.epoch)
        return sigma + 1.0

    monkeypatch.setitem(SIGMA_UPDATERS, "dd", plus_one)
    s = spec("macer", "dd")
    train(cfg, s, digits_dir, tmp_path, "cpu", progress=False)
    assert torch.allclose(load_torch(tmp_path / "checkpoint.pt")["sigma_buffer"], torch.full((N_TRAIN,), 1.25))
    first = _history(tmp_path)
    calls.clear()
    cfg["train"]["epochs"] = 2
    metrics = train(cfg, s, digits_dir, tmp_path, "cpu", progress=False)
    batches = -(-N_TRAIN // BATCH)
    assert calls == [1] * batches  # epoch 0 not redone
    assert torch.allclose(load_torch(tmp_path / "model.pt")["sigma_buffer"], torch.full((N_TRAIN,), 2.25))
    assert len(metrics) == 2 and _history(tmp_path)[0] == first[0]


def test_resume_equals_uninterrupted_training(cfg, digits_dir, tmp_path):
    s = spec("macer", "dd")
    two = copy.deepcopy(cfg)
    two["train"]["epochs"] = 2
    straight = train(two, s, digits_dir, tmp_path / "straight", "cpu", progress=False)
    first = train(cfg, s, digits_dir, tmp_path / "resumed", "cpu", progress=False)
    resumed = train(two, s, digits_dir, tmp_path / "resumed", "cpu", progress=False)
    assert list(resumed["epoch"]) == [1, 2]
    assert resumed.iloc[0].equals(first.iloc[0])  # epoch 1's metrics (time included) are not recomputed
    cols = ["lr", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc"]
    assert resumed[cols].equals(straight[cols])
    a, b = load_torch(tmp_path / "straight" / "model.pt"), load_torch(tmp_path / "resumed" / "model.pt")
    assert torch.equal(a["sigma_buffer"], b["sigma_buffer"])
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])


def test_load_model_uses_channels_last_unless_configured_off(cfg, tmp_path):
    """Channels-last changes the memory layout, not the function: same logits up to float rounding."""
    from smoothcert.training.models import load_model, prepare_for_inference

    model = make_model(cfg).eval()
    save_torch(tmp_path / "model.pt", {"arch": cfg["model"]["arch"], "state_dict": model.state_dict()})
    fast = load_model(cfg, tmp_path / "model.pt", "cpu")
    plain = load_model({**cfg, "channels_last": False}, tmp_path / "model.pt", "cpu")
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # (a 1-channel kernel is both)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(fast(x).argmax(1), plain(x).argmax(1))
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 3))
    assert prepare_for_inference(mlp) is mlp and mlp[0].weight.is_contiguous()  # nothing 4-D: unchanged
