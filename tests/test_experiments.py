"""The real-data experiment configs (issue #17): overrides of params.yaml, valid merged over it and with their
quick / smoke overrides, and the MNIST-5k one runs end to end through ``workflow/scripts/experiment.sh`` (what
``make experiment`` calls) in its smoke version: a few hundred training images, a few test inputs, every stage.
"""

from __future__ import annotations

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


PARAMS = REPO / "params.yaml"
OVERRIDES = ("cifar10_paper", "cifar10_locuslab", "sequential")  # other configs, merged over params.yaml alone
VARIANTS = ("quick", "smoke")  # merged over an experiment config


def _copied(override: dict, base: dict, path: str = ""):
    """Dotted keys whose value in ``override`` equals params.yaml's (a copy, not an override)."""
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            yield from _copied(value, base[key], f"{path}{key}.")
        elif key in base and base[key] == value:
            yield f"{path}{key}"


def test_every_config_is_an_override():
    """config/*.yaml hold only what differs from params.yaml (the variants: from the config they refine)."""
    names = {p.stem for p in (REPO / "config").glob("*.yaml")}
    assert names == {*EXPERIMENTS, *OVERRIDES, *VARIANTS}, "name each new config/*.yaml here"
    base = yaml.safe_load(PARAMS.read_text())
    for name in (*EXPERIMENTS, *OVERRIDES):
        copies = list(_copied(yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()), base))
        assert not copies, f"config/{name}.yaml repeats params.yaml's {copies}: keep only what differs"
    assert config_mod.load(PARAMS, (REPO / "config" / "cifar10_paper.yaml",))["data"]["dataset"] == "cifar10"


@pytest.mark.parametrize("name", EXPERIMENTS)
@pytest.mark.parametrize("override", [None, *VARIANTS])
def test_experiment_configs_are_valid(name, override):
    """Each config merged over params.yaml (and a variant over that), as Snakemake's --configfile merges."""
    files = (REPO / "config" / f"{name}.yaml", *([REPO / "config" / f"{override}.yaml"] if override else []))
    cfg = config_mod.load(PARAMS, files)
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
