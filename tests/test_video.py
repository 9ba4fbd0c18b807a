"""Moving digits: the clip data (data.clips), the frame-wise model (training.models), and the video stage (trained by
the train loop, certified by certify_shard) end to end on a tiny setting."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from smoothcert import config
from smoothcert.artifacts import load_torch
from smoothcert.cli import main
from smoothcert.data.clips import moving_digits
from smoothcert.data.readers import digits
from smoothcert.engine.certificates import COLUMNS
from smoothcert.errors import SmoothcertError
from smoothcert.pipeline.clips import run_video
from smoothcert.training.clips import load_clip_model
from smoothcert.training.models import FrameNet

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg():
    """params.yaml with 4-frame 12×12 clips, one epoch, 3 test clips and few draws."""
    c = yaml.safe_load((REPO / "params.yaml").read_text())
    c["device"] = "cpu"
    c["video"].update(frames=4, canvas=12, window=2)
    c["video"]["train"]["epochs"] = 1
    c["test"].update(start=0, step=1, limit=3)
    c["certify"].update(n0=20, n=200, batch_size=400, chunk=200)
    return c


def test_moving_digits_are_deterministic_and_follow_the_digits_split(cfg):
    xtr, ytr, xte, yte = moving_digits(cfg)
    assert xtr.shape[1:] == (4, 1, 12, 12) and xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert 0.0 <= float(xtr.min()) and float(xtr.max()) <= 1.0
    again = moving_digits(cfg)
    assert all(torch.equal(a, b) for a, b in zip((xtr, ytr, xte, yte), again))
    assert not torch.equal(moving_digits({**cfg, "seed": cfg["seed"] + 1})[0], xtr)
    ref_tr, ref_te, ref_ytr, ref_yte = digits({**cfg["data"], "seed": cfg["seed"]})
    assert np.array_equal(ytr.numpy(), ref_ytr) and np.array_equal(yte.numpy(), ref_yte)
    # the whole digit is in every frame, and it moves at most one pixel per frame along each axis
    digit_sums = torch.from_numpy(ref_te).flatten(1).sum(1)
    assert torch.allclose(xte.flatten(2).sum(2), digit_sums[:, None].expand(-1, 4), atol=1e-4)
    grid = torch.arange(12, dtype=torch.float32)
    mass = xte[:, :, 0].sum((2, 3)).clamp_min(1e-6)
    centre = torch.stack([(xte[:, :, 0].sum(3) * grid).sum(2) / mass, (xte[:, :, 0].sum(2) * grid).sum(2) / mass], -1)
    step = (centre[:, 1:] - centre[:, :-1]).abs()
    assert float(step.max()) <= 1.0 + 1e-4 and float((step.sum((1, 2)) > 0).float().mean()) > 0.9


def test_frame_model_is_shift_invariant_and_keeps_its_stem_contract():
    torch.manual_seed(0)
    model = FrameNet(16, 10, hidden=32, freqs=4, mean=0.08, std=0.23).eval()
    digit = torch.rand(8, 8)
    a, b = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    a[0, 0, 1:9, 2:10], b[0, 0, 6:14, 7:15] = digit, digit
    assert torch.allclose(model.frame_logits(a), model.frame_logits(b), atol=1e-5)
    clips = torch.rand(3, 5, 1, 16, 16)
    stem, bias = model.frame_stem()
    via_stem = model.frame_head(clips.reshape(15, -1) @ stem.T + bias).view(3, 5, -1).mean(1)
    assert torch.allclose(model(clips), via_stem, atol=1e-5)


def test_video_stage_end_to_end_and_cli(cfg, tmp_path):
    out = tmp_path / "sigma-0.25"
    summary = run_video(cfg, 0.25, out, "cpu", progress=False)
    assert set(summary["methods"]) == set(cfg["video"]["methods"])
    evals = {"cohen": 1, "smooth_reduce_max": 3 * 9, "smooth_reduce_mean": 3 * 9}  # 3 windows × 9 patches
    tables = {}
    for method in cfg["video"]["methods"]:
        df = pd.read_csv(out / method / "certify.tsv", sep="\t")
        assert list(df.columns) == COLUMNS and df["idx"].tolist() == [0, 1, 2]
        assert (df["method"] == method).all() and (df["sigma"] == 0.25).all() and (df["norm"] == "l2").all()
        assert (df["radius"] >= 0).all() and (df["evals"] == 220 * evals[method]).all()
        assert ((df["predict"] == -1) == (df["radius"] == 0)).all()
        tables[method] = df
    blob = load_torch(out / "model.pt")
    assert blob["spec"] == "gaussian-fixed-l2-0.25" and blob["epoch"] == 1 and blob["arch"] == "video_frame_dft_mlp"
    assert len(pd.read_csv(out / "metrics.tsv", sep="\t")) == 1 and (out / "checkpoint.pt").is_file()
    first = (out / "model.pt").read_bytes()
    run_video(cfg, 0.25, out, "cpu", progress=False)  # resumes the finished checkpoint: same model, same rows
    assert (out / "model.pt").read_bytes() == first
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cli_out = tmp_path / "cli"
    threads = torch.get_num_threads()
    try:
        assert (
            main(
                [
                    "--config",
                    str(config),
                    "video",
                    "--sigma",
                    "0.25",
                    "--out",
                    str(cli_out),
                    "--threads",
                    "1",
                    "--no-progress",
                ]
            )
            == 0
        )
    finally:
        torch.set_num_threads(threads)
    for method, df in tables.items():
        again = pd.read_csv(cli_out / method / "certify.tsv", sep="\t")
        pd.testing.assert_frame_equal(df.drop(columns="time"), again.drop(columns="time"))


def test_bad_video_settings_fail_in_one_line(cfg, tmp_path):
    bad = copy.deepcopy(cfg)
    bad["video"]["window"] = 9
    with pytest.raises(SmoothcertError, match="video.window = 9 must be <= video.frames = 4"):
        config.validate(bad, "test")
    bad = copy.deepcopy(cfg)
    bad["video"]["methods"] = ["cohen", "ddrs"]
    with pytest.raises(SmoothcertError, match="ddrs"):
        config.validate(bad, "test")
    bad = copy.deepcopy(cfg)
    bad["video"]["canvas"] = 6
    with pytest.raises(SmoothcertError, match="canvas"):
        config.validate(bad, "test")
    with pytest.raises(SmoothcertError, match="video.canvas = 6 must be >= 8"):
        moving_digits(bad)
    with pytest.raises(SmoothcertError, match="sigma"):
        run_video(cfg, 0.0, tmp_path / "unused", "cpu", progress=False)
    assert not (tmp_path / "unused").exists()
    torch.save({"arch": "digits_cnn", "state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(SmoothcertError, match="is for arch 'digits_cnn'"):
        load_clip_model(cfg, tmp_path / "other.pt", "cpu")


def test_uncorrelated_clip_radius_uses_the_l2_factor_of_the_clip_operator(cfg, tmp_path):
    """Clips are certified in ℓ2 whatever norms the image models use: the video stage hands the wrapper its own norm,
    so the radius is σ·Φ⁻¹(p̲A) / (√(max tcov · max cov)·‖S‖₂), not divided by the ℓ1 factor of the image models."""
    from smoothcert.engine import patches
    from smoothcert.methods import smooth_reduce as sr

    cfg = copy.deepcopy(cfg)
    cfg["smooth_reduce"]["variant"] = "uncorrelated"
    cfg["video"]["methods"] = ["smooth_reduce_max"]
    cfg["models"] = [
        {
            "objective": "gaussian",
            "sigma_mode": "fixed",
            "norm": "l1",
            "sigmas": [0.5],
            "methods": ["smooth_reduce_max"],
        }
    ]
    run_video(cfg, 0.25, tmp_path, "cpu", progress=False)
    df = pd.read_csv(tmp_path / "smooth_reduce_max" / "certify.tsv", sep="\t")
    model = load_clip_model(cfg, tmp_path / "model.pt", "cpu")
    shape = (4, 1, 12, 12)
    l2 = sr.wrap(model, cfg, "smooth_reduce_max", shape, norm="l2").radius_factor
    l1 = sr.wrap(model, cfg, "smooth_reduce_max", shape, norm="l1").radius_factor
    pos = patches.patch_positions(14, 12, 1)  # canvas 12, margin resize − patch = 2
    assert l2 == pytest.approx(
        1 / (np.sqrt(2 * int(patches.coverage(14, pos, 12).max())) * patches.resize_norm(12, 12, 14))
    )
    assert l1 < 0.5 * l2
    ok = df["predict"] >= 0
    assert ok.any() and (df["norm"] == "l2").all()
    assert np.allclose(df["radius"][ok], 0.25 * df["gap"][ok] * l2)
