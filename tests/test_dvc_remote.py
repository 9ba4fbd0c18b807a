"""DVC remote round trip: repro + push in one clone, clone + pull elsewhere, report without recomputing.

In a git repository with DVC initialised (a copy of this one, params.yaml merged with the
mini config), ``dvc repro`` runs the pipeline and ``dvc push`` sends the outputs to a local
directory remote (``dvc remote add -d``; the remote is in ``.dvc/config``, committed).
A ``git clone`` then gets the code, ``dvc.lock`` and the remote; ``dvc pull`` brings the
data, models and results back byte for byte. ``snakemake --touch`` records the pulled
files as up to date (their mtimes after a pull are in no particular order, and there is
no ``.snakemake`` metadata), after which the report rebuilds with no train/certify job,
identical to the original, and ``dvc repro`` reruns only the report stage.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from test_workflow import BIN, copy_repo, run

pytestmark = pytest.mark.slow

GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
HEAVY_RULES = {"prepare_data", "train", "optimize", "certify", "gather", "memory_check", "video"}


def _ran(output: str) -> set[str]:
    """Rules Snakemake ran (or would run), from its ``rule NAME:`` / ``localrule NAME:`` lines."""
    return {
        line.split()[1].rstrip(":")
        for line in output.splitlines()
        if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":")
    }


def _files(root: Path, *folders: str) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for f in folders for p in sorted((root / f).rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def origin(tmp_path_factory) -> tuple[Path, Path]:
    """A repository that ran the mini pipeline with ``dvc repro`` and pushed to a directory remote."""
    base = tmp_path_factory.mktemp("dvc_remote")
    root, remote = copy_repo(base / "origin", merged_params=True), base / "remote"
    run(["git", "init", "-q"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "code"], root)
    run([str(BIN / "dvc"), "repro"], root, timeout=1500)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(remote)], root)
    run([*GIT, "add", "dvc.lock", ".dvc/config"], root)
    run([*GIT, "commit", "-qm", "results (dvc.lock) and the remote"], root)
    run([str(BIN / "dvc"), "push"], root)
    return root, remote


def test_clone_pull_and_report_without_recomputing(origin, tmp_path):
    root, remote = origin
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path)
    assert "remote = local" in (clone / ".dvc" / "config").read_text(), "the default remote comes with the clone"
    run([str(BIN / "dvc"), "pull"], clone)

    # The pulled data, models and results are exactly what was pushed.
    pulled = _files(clone, "data/prepared", "models", "results")
    assert pulled and pulled == _files(root, "data/prepared", "models", "results")

    # Record the pulled files as up to date: --touch only touches, it runs no rule's command.
    run([str(BIN / "snakemake"), "--touch", "--cores", "1"], clone)
    plan = run([str(BIN / "snakemake"), "-n", "--cores", "1"], clone)
    assert not _ran(plan.stdout) & HEAVY_RULES, f"after --touch nothing heavy is due: {_ran(plan.stdout)}"
    mtimes = {p: p.stat().st_mtime_ns for f in ("models", "results") for p in (clone / f).rglob("*") if p.is_file()}

    # Rebuild the report from the pulled results (Snakemake directly, then DVC's report stage).
    for p in (clone / "report").glob("*"):
        if p.is_file():
            p.unlink()
    out = run([str(BIN / "snakemake"), "--profile", "workflow/profiles/local", "report_all"], clone)
    ran = _ran(out.stdout + out.stderr)
    assert "report" in ran and not ran & HEAVY_RULES, f"only the report may run, ran {sorted(ran)}"
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes, "models/results were rewritten"
    assert _files(clone, "report") == _files(root, "report"), "the rebuilt report differs from the original"

    (clone / "report" / "summary.csv").unlink()
    repro = run([str(BIN / "dvc"), "repro"], clone, timeout=900)
    log = repro.stdout + repro.stderr
    assert "Running stage 'report'" in log
    for stage in ("download", "train", "certify"):
        assert f"Running stage '{stage}'" not in log, f"dvc repro reran {stage} after the pull"
    assert not _ran(log) & HEAVY_RULES, f"dvc repro's snakemake ran {sorted(_ran(log))}"
    status = run([str(BIN / "dvc"), "status"], clone).stdout
    assert "up to date" in status, status
    shown = run([str(BIN / "dvc"), "metrics", "show", "--json"], clone).stdout
    assert "metrics/metrics.json" in shown


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
