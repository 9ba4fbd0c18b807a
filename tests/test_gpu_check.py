"""benchmarks/gpu_check.sh, the prepared GPU check: its --smoke mode runs every step on the CPU at tiny sizes
and writes every figure as JSON (so CI keeps the script alive until a GPU runs it in full)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.sh"
FILES = {
    "tests.json",
    "equality.json",
    "throughput.json",
    "certify_efficiency.json",
    "sequential.json",
    "cifar_fixture.json",
    "summary.json",
    "log.txt",
}
MAX_FILES = 8  # what one device call brings back from its output folder


def _run(*args: str, timeout: int, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOOTHCERT_PYTHON": python}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_smoke_mode_runs_every_step_and_writes_its_json(tmp_path):
    out = tmp_path / "out"
    proc = _run(str(out), "--smoke", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    names = {p.name for p in out.iterdir()}
    assert FILES <= names and len(names) <= MAX_FILES, names
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "smoke" and summary["ok"]
    assert [s["step"] for s in summary["steps"]] == [
        "tests",
        "equality",
        "throughput",
        "certify_efficiency",
        "sequential",
        "cifar_fixture",
    ]
    tests = json.loads((out / "tests.json").read_text())
    assert len(tests["tests"]) >= 3 and tests["counts"]["failure"] == tests["counts"]["error"] == 0
    if not torch.cuda.is_available():
        assert tests["counts"]["skipped"] == len(tests["tests"])  # CUDA tests skip on the CPU
    eq = json.loads((out / "equality.json").read_text())
    assert eq["ok"] and eq["device"] == "cpu"
    f32 = next(r for r in eq["same_noise"] if not r["autocast"])
    assert f32["flipped_argmax_draws"] == 0 and f32["inputs_count_differs"] == 0  # the same model on the same CPU
    assert f32["draws"] == 6 * (eq["certify"]["n0"] + 300) and f32["engine_counts_match_draws"]
    tp = json.loads((out / "throughput.json").read_text())
    assert {r["arch"] for r in tp["results"]} == {"digits_cnn", "cifar_resnet20", "cifar_resnet110"}
    (image,) = tp["per_image"]
    assert image["arch"] == "cifar_resnet110" and image["n"] == 60 and image["seconds_per_input"] > 0
    fill = summary["headline"]["sequential_batch_fill"]
    # every mode bench_sequential runs (fixed, decide, estimate, and each single-radius decide@r) fills its batches
    assert {"fixed", "decide", "estimate"} <= set(fill) and all(0 < v <= 1 for v in fill.values()), fill
    assert summary["headline"]["certify_efficiency"]["digits_cnn/estimate"] > 0
    fx = json.loads((out / "cifar_fixture.json").read_text())
    assert fx["ok"] and fx["model"]["format"] == "locuslab" and fx["images"] == 2 and fx["certify"]["n"] == 40
    assert fx["loaded_equals_reference"]["relative_difference"] < 1e-5  # float32 on the CPU: the same function


def test_bad_usage_is_refused_in_one_line(tmp_path):
    proc = _run(str(tmp_path / "o"), "--fast", timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "gpu_check: unknown option --fast (expected --smoke)"
    if torch.cuda.is_available():
        return
    proc = _run(str(tmp_path / "o"), timeout=120)  # the full check needs a GPU
    assert proc.returncode == 3 and "sees no CUDA device: run with --smoke" in proc.stderr


def test_missing_packages_are_named_with_the_way_to_get_them(tmp_path):
    """A bare python (here: an empty venv) is refused before any step, naming what it lacks."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    proc = _run(str(tmp_path / "o"), "--smoke", timeout=60, python=str(tmp_path / "bare" / "bin" / "python"))
    assert proc.returncode == 3, proc.stderr
    assert "lacks: torch numpy scipy yaml jsonschema" in proc.stderr and "--fetch-wheels" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["log.txt"]
