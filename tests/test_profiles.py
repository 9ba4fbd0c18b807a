"""Snakemake profiles and ``make dag``: what they name exists, and a missing tool is one line, not a file.

Snakemake ignores a rule name it does not know in a profile's ``set-resources`` / ``set-threads``, so a
renamed rule silently falls back to the default resources; this test makes that loud.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from test_workflow import BIN, REPO, copy_repo

PROFILES = sorted((REPO / "workflow" / "profiles").glob("*/config.yaml"))
PER_RULE = ("set-resources", "set-threads")  # the profile options keyed by rule name


@pytest.fixture(scope="module")
def rules() -> set[str]:
    """The rules of the Snakefile, as Snakemake lists them."""
    out = subprocess.run(
        [str(BIN / "snakemake"), "--list-rules"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    names = {line.strip() for line in out.splitlines() if line.strip()}
    assert {"train", "optimize", "certify", "report"} <= names, out
    return names


def test_profiles_exist():
    assert {p.parent.name for p in PROFILES} >= {"local", "slurm"}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.parent.name)
def test_profile_names_only_rules_that_exist(profile, rules):
    cfg = yaml.safe_load(profile.read_text())
    named = {rule for key in PER_RULE for rule in (cfg.get(key) or {})}
    unknown = named - rules
    assert not unknown, f"{profile.relative_to(REPO)} sets resources for rules that do not exist: {sorted(unknown)}"


def test_slurm_profile_gives_every_gpu_rule_its_resources(rules):
    """Every rule that asks for a GPU has its memory and time set in the Slurm profile."""
    cfg = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    assert {"train", "optimize", "certify"} <= set(cfg["set-resources"])
    for rule in ("train", "optimize", "certify"):
        assert {"mem_mb", "runtime"} <= set(cfg["set-resources"][rule])


def _make_dag(root: Path, path: str) -> subprocess.CompletedProcess:
    # a clean make: run from `make test`, the inherited MAKELEVEL would make it print "make[1]:" lines
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")} | {"PATH": path}
    # -o: take the venv target as up to date (the tests' venv is not the repository's .venv)
    venv = BIN.parent
    cmd = ["make", f"VENV={venv}", "-o", f"{venv}/bin/smoothcert", "dag"]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dag_without_graphviz_is_one_line(tmp_path):
    root = copy_repo(tmp_path / "repo")
    bare = tmp_path / "bin"  # a PATH with the usual tools but no dot
    bare.mkdir()
    for tool in ("make", "sh", "rm", "mv", "test"):
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    proc = _make_dag(root, str(bare))
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if not re.match(r"make(\[\d+\])?:", line)]  # make adds its own
    assert len(ours) == 1 and ours[0].startswith("make dag: graphviz's dot is not installed"), proc.stderr
    assert not (root / "dag.png").exists(), "no PNG without graphviz"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_dag_draws_the_rule_graph(tmp_path):
    """With a dot on PATH, dag.png is what dot made of ``snakemake --rulegraph`` (one node per rule)."""
    root = copy_repo(tmp_path / "repo")
    fake = tmp_path / "bin"
    fake.mkdir()
    dot = fake / "dot"  # stands in for graphviz: echoes the graph it is given
    dot.write_text('#!/bin/sh\ncat "${2:-/dev/stdin}"\n')
    dot.chmod(dot.stat().st_mode | stat.S_IEXEC)
    proc = _make_dag(root, f"{fake}:{os.environ['PATH']}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    graph = (root / "dag.png").read_text()
    assert graph.startswith("digraph") and 'label = "certify"' in graph and "shard" not in graph
