"""The real-data experiment configs (issue #17): valid as they are and with their quick / smoke overrides, and the
MNIST-5k one runs end to end through ``workflow/scripts/experiment.sh`` (what ``make experiment`` calls) in its
smoke version: a few hundred training images, a few test inputs, every stage.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smoothcert import config as config_mod

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXPERIMENTS = ["mnist5k", "fashion_mnist"]


def merged(base: dict, override: dict) -> dict:
    """``override`` merged into ``base`` key by key, as Snakemake merges --configfile files."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("override", [None, "quick", "smoke"])
def test_experiment_configs_are_valid(name, override):
    cfg = yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())
    if override:
        cfg = merged(cfg, yaml.safe_load((REPO / "config" / f"{override}.yaml").read_text()))
    config_mod.validate(cfg, f"{name}+{override}")
    assert cfg["certify"]["mode"] == "sequential" and cfg["certify"]["alpha"] == 0.001
    if override is None:
        assert cfg["certify"]["sequential"]["n_max"] == 100_000
        assert len(config_mod.experiments(cfg)) >= 14


@pytest.mark.slow
def test_smoke_experiment_runs_every_stage(tmp_path):
    pytest.importorskip("mlxtend")
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RUNS": str(tmp_path)}
    proc = subprocess.run(
        [str(REPO / "workflow" / "scripts" / "experiment.sh"), "config/mnist5k.yaml", "config/smoke.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "mnist5k-smoke"
    summary = pd.read_csv(run / "report" / "summary.csv")
    assert set(summary["method"]) == {"cohen", "ddrs", "ancer", "smooth_reduce_max"}
    assert (run / "report.html").is_file()
    table = pd.read_csv(run / "results" / "mnist5k" / "gaussian-fixed-l2-0.5" / "cohen" / "certify.tsv", sep="\t")
    assert len(table) == 3 and (table["n"] <= 4000).all()
    assert len(list((run / "data" / "prepared" / "mnist5k").glob("*.pt"))) == 2
