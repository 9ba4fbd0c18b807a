"""benchmarks/harness.py: a benchmark's trained workspace is reused only for the settings it was trained with."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import harness  # noqa: E402


def test_trained_workspace_retrains_when_the_epochs_change_and_reuses_otherwise(tmp_path):
    ckpt = tmp_path / "models" / "gaussian-fixed-l2-0.25" / "model.pt"
    harness.trained_workspace(tmp_path, "digits", "digits_cnn", 1, [0.25], 5)
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    harness.trained_workspace(tmp_path, "digits", "digits_cnn", 2, [0.25], 5)  # other settings: trained anew
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    stamp = ckpt.stat().st_mtime_ns
    harness.trained_workspace(tmp_path, "digits", "digits_cnn", 2, [0.25], 5)  # same settings: reused
    assert ckpt.stat().st_mtime_ns == stamp
