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


def test_e2e_job_seconds_sums_each_rule_and_method_from_snakemakes_log():
    import bench_e2e

    log = """[Sun Dec  6 20:49:45 2026]
localrule prepare_data:
    jobid: 5
[Sun Dec  6 20:49:51 2026]
Finished jobid: 5 (Rule: prepare_data)
[Sun Dec  6 20:50:07 2026]
localrule certify:
    jobid: 84
    wildcards: model=m, method=cohen, shard=0-of-2
[Sun Dec  6 20:50:07 2026]
rule certify:
    jobid: 85
    wildcards: model=m, method=cohen, shard=1-of-2
[Sun Dec  6 20:50:17 2026]
Finished jobid: 85 (Rule: certify)
[Sun Dec  6 20:51:07 2026]
Finished jobid: 84 (Rule: certify)
[Sun Dec  6 20:51:08 2026]
localrule report:
    jobid: 9
"""
    assert bench_e2e.job_seconds(log) == {"certify/cohen": 70.0, "prepare_data": 6.0}  # an unfinished job: none
