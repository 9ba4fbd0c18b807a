"""The README's share recipe, end to end: repro + push in one repository, clone + pull elsewhere, and the clone
behaves like the original.

In a git repository with DVC initialised (a copy of this one, params.yaml merged with a tiny config), the
recipe's commands (:data:`RECIPE`, each of which the README shows verbatim) run as written: ``dvc repro``, a
local directory remote (``dvc remote add -d``), ``dvc.lock`` and ``.dvc/config`` committed, ``dvc push``; then
``git clone``, ``dvc pull`` and ``snakemake --touch --forceall``, which records Snakemake's provenance of every
job from the pulled files (docs/cluster.md says why). Checked: the pulled files are the pushed ones, the report
rebuilds from them with no train/certify job, and a parameter change plans exactly the same jobs in the clone as
in the original.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from test_workflow import BIN, REPO, copy_repo, run

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
HEAVY_RULES = {"prepare_data", "train", "optimize", "certify", "gather", "memory_check", "video"}
# The README's recipe, command by command (REMOTE and CLONE stand for the paths a user picks).
RECIPE = {
    "origin": [
        "dvc repro",
        "dvc remote add -d storage REMOTE",
        "git add dvc.lock .dvc/config",
        'git commit -m "results: dvc.lock and the remote"',
        "dvc push",
    ],
    "clone": [
        "git clone ORIGIN CLONE",
        "dvc pull",
        "snakemake --touch --forceall --cores 1",
    ],
}
# Smaller than the mini config: one model, a per-input-σ method (optimize + memory step) beside Cohen.
TINY = {
    "test": {"start": 0, "step": 1, "limit": 4, "shards": 1},
    "train": {"epochs": 1},
    "models": [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["cohen", "ddrs"]}
    ],
    "video": {"enabled": False},
    "certify": {"n0": 20, "n": 200, "chunk": 200},
}


def _ran(output: str) -> set[str]:
    """Rules Snakemake ran (or would run), from its ``rule NAME:`` / ``localrule NAME:`` lines."""
    return {
        line.split()[1].rstrip(":")
        for line in output.splitlines()
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":")
    }


def _planned(output: str) -> list[tuple[str, str]]:
    """(rule, output files) of every job in a ``snakemake -n`` plan."""
    jobs, rule = [], None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":"):
            rule = line.split()[1].rstrip(":")
        elif rule and line.strip().startswith("output:"):
            jobs.append((rule, line.split(":", 1)[1].strip()))
            rule = None
    return sorted(jobs)


def _files(root: Path, *folders: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()
    }


def _recipe(step: str, cwd: Path, **paths: Path) -> None:
    """Run the recipe's ``step`` in ``cwd`` (after ``git clone``, in the clone), placeholders replaced by ``paths``."""
    for command in RECIPE[step]:
        for name, path in paths.items():
            command = command.replace(name, str(path))
        argv = shlex.split(command)
        if argv[0] == "git":
            argv = [*GIT, *argv[1:]]
        elif argv[0] in ("dvc", "snakemake"):
            argv[0] = str(BIN / argv[0])
        run(argv, cwd, timeout=1800)
        if argv[: len(GIT) + 1] == [*GIT, "clone"]:
            cwd = Path(argv[-1])


def test_readme_shows_the_recipe():
    text = (REPO / "README.md").read_text()
    for command in RECIPE["origin"] + RECIPE["clone"]:
        shown = command.replace("REMOTE", "/path/to/remote").replace("ORIGIN CLONE", "<repo> smoothcert")
        assert shown in text, f"README's share recipe lacks: {shown}"


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[Path, Path]:
    """A repository that ran the tiny pipeline with ``dvc repro`` and pushed it, by the README's recipe."""
    base = tmp_path_factory.mktemp("dvc_remote")
    root, remote = copy_repo(base / "origin", merged_params=True), base / "remote"
    params = yaml.safe_load((root / "params.yaml").read_text())
    update_config(params, TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "code"], root)
    _recipe("origin", root, REMOTE=remote)
    return root, remote


@pytest.fixture(scope="module")
def clone(origin, tmp_path_factory) -> Path:
    root, _ = origin
    where = tmp_path_factory.mktemp("dvc_clone") / "clone"
    _recipe("clone", where.parent, ORIGIN=root, CLONE=where)
    return where


def test_clone_pull_and_report_without_recomputing(origin, clone):
    root, _ = origin
    assert "remote = storage" in (clone / ".dvc" / "config").read_text(), "the default remote comes with the clone"
    # The pulled data, models, results and report are exactly what was pushed.
    pulled = _files(clone, "data/prepared", "models", "results", "report")
    assert pulled and pulled == _files(root, "data/prepared", "models", "results", "report")
    assert (clone / "report.html").read_bytes() == (root / "report.html").read_bytes()
    assert "up to date" in run([str(BIN / "dvc"), "status"], clone).stdout

    # After the recipe nothing is due, and Snakemake has every job's provenance.
    plan = run([str(BIN / "snakemake"), "-n", "--cores", "1"], clone)
    assert not _ran(plan.stdout), f"after the recipe nothing is due: {_ran(plan.stdout)}"
    assert "missing provenance" not in plan.stdout + plan.stderr
    mtimes = {p: p.stat().st_mtime_ns for f in ("models", "results") for p in (clone / f).rglob("*") if p.is_file()}

    # Rebuild the report from the pulled results: DVC's report stage alone, with no heavy job.
    (clone / "report" / "summary.csv").unlink()
    repro = run([str(BIN / "dvc"), "repro"], clone, timeout=1800)
    log = repro.stdout + repro.stderr
    assert "Running stage 'report'" in log
    for stage in ("prepare_data", "train", "certify"):
        assert f"Running stage '{stage}'" not in log, f"dvc repro reran {stage} after the pull"
    assert not _ran(log) & HEAVY_RULES, f"dvc repro's snakemake ran {sorted(_ran(log))}"
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "models/results were rewritten"
    assert _files(clone, "report") == _files(root, "report"), "the rebuilt report differs from the original"
    assert "up to date" in run([str(BIN / "dvc"), "status"], clone).stdout
    shown = run([str(BIN / "dvc"), "metrics", "show"], clone).stdout
    assert "metrics/metrics.json" in shown and max(map(len, shown.splitlines())) <= 120, shown


@pytest.mark.parametrize("change", [{"certify": {"n": 400}}, {"ddrs": {"iterations": 2}}, {"train": {"epochs": 2}}])
def test_a_change_reruns_the_same_jobs_in_the_clone(origin, clone, tmp_path, change):
    """Snakemake plans, for one parameter change, the same jobs in the clone as in the original."""
    root, _ = origin
    override = tmp_path / "change.yaml"
    override.write_text(yaml.safe_dump(change))
    plans = [
        _planned(run([str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", str(override)], where).stdout)
        for where in (root, clone)
    ]
    assert plans[0], "the change reruns something in the original"
    assert plans[1] == plans[0]


def test_pull_from_remote_restores_deleted_outputs(origin, tmp_path):
    """``dvc pull`` (with ``--force``) restores outputs deleted or edited in a working copy."""
    root, _ = origin
    work = tmp_path / "work"
    run(["git", "clone", "-q", str(root), str(work)], tmp_path)
    run([str(BIN / "dvc"), "pull"], work)
    model = next((work / "models").rglob("model.pt"))
    original = model.read_bytes()
    model.unlink()
    table = next((work / "results").rglob("certify.tsv"))
    table.write_text("edited\n")
    status = subprocess.run([str(BIN / "dvc"), "status"], cwd=work, capture_output=True, text=True).stdout
    assert "modified" in status or "deleted" in status
    run([str(BIN / "dvc"), "pull", "--force"], work)
    assert model.read_bytes() == original
    assert table.read_bytes() == (root / table.relative_to(work)).read_bytes()
