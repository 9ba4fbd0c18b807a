"""End to end: the Snakemake workflow (and DVC on top of it) on a tiny config, in a copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MINI = REPO / "tests" / "data" / "mini_params.yaml"
pytestmark = pytest.mark.slow


def _env():
    return {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1", "PYTHONHASHSEED": "0"}


def copy_repo(dest: Path, merged_params: bool = False) -> Path:
    """Copy the tracked and unignored files of the repository into ``dest``."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    if merged_params:
        from snakemake.utils import update_config  # the mini config merged as --configfile merges it

        params = yaml.safe_load((dest / "params.yaml").read_text())
        update_config(params, yaml.safe_load(MINI.read_text()))
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run([str(BIN / "snakemake"), *args, "--configfile", str(MINI), "--cores", "2", "--resources", "gpu=1"], cwd)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    """The mini pipeline run once from scratch (shared by the checks below)."""
    root = copy_repo(tmp_path_factory.mktemp("e2e"))
    snakemake(root)
    return root


def test_report_numbers_are_sane(pipeline):
    summary = pd.read_csv(pipeline / "report" / "summary.csv")
    assert len(summary) >= 1
    cohen = summary[summary["method"] == "cohen"].iloc[0]
    accs = [cohen[c] for c in summary.columns if c.startswith("acc@")]
    assert accs[0] > 0.6, "smoothed clean accuracy on digits should be high"
    assert all(a >= b for a, b in zip(accs, accs[1:])), "certified accuracy must not grow with the radius"
    metrics = json.loads((pipeline / "metrics" / "metrics.json").read_text())
    assert metrics, "metrics.json lists the experiments"
    table = pd.read_csv(next((pipeline / "results" / "digits").glob("*/cohen/certify.tsv")), sep="\t")
    assert table["idx"].is_unique and table["idx"].is_monotonic_increasing
    assert {"idx", "label", "predict", "radius", "correct", "time", "method", "norm", "sigma", "pA_lower"} <= set(table)


def test_html_report_builds(pipeline):
    run([str(BIN / "snakemake"), "--configfile", str(MINI), "--report", "report.html"], pipeline)
    html = (pipeline / "report.html").read_text(errors="replace")
    assert "certified_accuracy_l2.png" in html
    assert "Headline" in html and "Claims of the seed papers" in html  # the front page: the results first


def test_bad_config_is_one_line_error(pipeline, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("certify:\n  alpha: 1.5\n")
    proc = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--configfile", str(MINI), str(bad), "--cores", "1"],
        cwd=pipeline,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert "certify.alpha = 1.5" in proc.stderr and "Traceback" not in proc.stderr


def test_dvc_repro_gives_the_same_tables(pipeline, tmp_path):
    root = copy_repo(tmp_path / "dvc", merged_params=True)
    run(["git", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "fresh clone"], root)
    run([str(BIN / "dvc"), "repro"], root, timeout=1200)
    tables = sorted((pipeline / "results").rglob("certify.tsv"))
    assert tables
    for table in tables:
        ours, theirs = (
            pd.read_csv(p, sep="\t").drop(columns=["time", "opt_time"])
            for p in (table, root / table.relative_to(pipeline))
        )
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)  # wall time aside, identical
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], root).stdout
    assert "metrics/metrics.json" in shown
