"""Process-level behaviour of the CLI: lazy command imports, allocator settings, output file modes."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from smoothcert import cli, runtime
from smoothcert.artifacts import write_text


def test_only_the_named_command_is_imported():
    names = cli._names()
    assert "certify" in names and "gather" in names
    assert cli._chosen(["gather", "a.tsv", "--out", "b.tsv"], names) == ["gather"]
    assert cli._chosen(["--config", "certify", "gather", "x"], names) == ["gather"]  # a --config value is no command
    assert cli._chosen(["--help"], names) == names
    assert cli._chosen(["optimize-sigma", "--method", "ddrs"], names) == ["optimize_sigma"]


def test_gather_starts_without_torch(tmp_path):
    """Table-only jobs (one per experiment) skip torch's ~2 s import."""
    for i in range(2):
        (tmp_path / f"s{i}.tsv").write_text(f"idx\tv\n{i}\t{i / 2}\n")
    code = (
        "import sys; from smoothcert import cli; "
        f"rc = cli.main(['gather', r'{tmp_path / 's1.tsv'}', r'{tmp_path / 's0.tsv'}', '--out', r'{tmp_path / 'all.tsv'}']); "
        "print(rc, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "False"]
    assert (tmp_path / "all.tsv").read_text().splitlines()[1:] == ["0\t0.0", "1\t0.5"]


def test_allocator_tuning_yields_to_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert runtime.tune_allocator() is False
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("SMOOTHCERT_DEFAULT_MALLOC", "1")
    assert runtime.tune_allocator() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_allocator_tuning_applies_on_glibc():
    code = "from smoothcert import runtime; print(runtime.tune_allocator())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "SMOOTHCERT_DEFAULT_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    libc = os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None
    assert out.strip() == ("True" if libc and libc.startswith("glibc") else "False")


def test_outputs_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    write_text(tmp_path / "out.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~mask
