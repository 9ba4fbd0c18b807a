"""Kill and resume: a SIGKILLed certify job restarts from its last complete row.

* ``ShardWriter`` unit checks: a torn last line (killed mid-write) is dropped on reopen,
  rows already written are skipped, and no row is ever duplicated; rows are resumed only
  under the fingerprint they were written with (the certify and training checks of the
  fingerprints themselves are in tests/test_fingerprint.py).
* End to end: the mini pipeline with a slower certification (larger ``certify.n``) is
  started, the ``smoothcert certify`` process is SIGKILLed once its shard's ``.part`` file
  holds a few rows, the Snakemake process group is killed too, and Snakemake is run again.
  It must finish without redoing finished work (finished shard files keep their mtime,
  training is not rerun), the killed shard keeps the rows it had, and every table is the
  same as an uninterrupted run's, byte for byte apart from the wall-clock timing columns.

Training's resume from its last epoch checkpoint is covered in tests/test_train.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from smoothcert.artifacts import fingerprint
from smoothcert.shards import FINGERPRINT_PREFIX, ShardWriter
from test_workflow import BIN, MINI, _env, copy_repo, run

# Wall-clock columns: measured, so they differ between any two runs (even uninterrupted ones).
TIMING_COLUMNS = ("time", "opt_time")


def comparable(path: Path) -> bytes:
    """The table's bytes with the wall-clock timing columns cut out (every other byte kept)."""
    lines = path.read_bytes().split(b"\n")
    header = lines[0].split(b"\t")
    keep = [i for i, name in enumerate(header) if name.decode() not in TIMING_COLUMNS]
    return b"\n".join(
        b"\t".join(f for i, f in enumerate(line.split(b"\t")) if i in keep) if line else line for line in lines
    )


def assert_same_tables(reference: Path, other: Path, pattern: str = "certify.tsv") -> list[Path]:
    """Every ``pattern`` table under ``reference/results`` exists under ``other`` with the same content."""
    tables = sorted((reference / "results").rglob(pattern))
    assert tables, f"no {pattern} under {reference / 'results'}"
    for table in tables:
        rel = table.relative_to(reference)
        assert (other / rel).is_file(), f"{rel} missing"
        assert comparable(other / rel) == comparable(table), f"{rel} differs (timing columns aside)"
    return tables


# ------------------------------------------------------------------ ShardWriter unit checks
COLS = ["idx", "value", "name"]
FP = fingerprint(kind="unit", n=1)
STAMP = FINGERPRINT_PREFIX + '{"kind": "unit", "n": 1, "version": 1}'  # the first line of a part file stamped FP


def _rows(*idx):
    return [{"idx": i, "value": i / 3, "name": f"r{i}"} for i in idx]


def test_shard_writer_drops_torn_line_and_never_duplicates(tmp_path):
    out = tmp_path / "shard.tsv"
    w = ShardWriter(out, COLS, fingerprint=FP)
    w.append(_rows(0, 1, 2))
    # A job killed mid-write leaves half a row (no newline) at the end of the part file.
    with open(w.part, "a") as fh:
        fh.write("3\t1.0")
    w = ShardWriter(out, COLS, fingerprint=FP)
    assert w.done == {0, 1, 2}, "the torn row 3 is not counted as done"
    assert not w.part.read_text().endswith("1.0"), "the torn line is removed from the part file"
    w.append(_rows(1, 2, 3, 4))  # 1 and 2 again (a restarted job redoing its last batch)
    w.append(_rows(4))
    df = w.finish()
    assert df["idx"].tolist() == [0, 1, 2, 3, 4]
    assert not w.part.exists()
    table = pd.read_csv(out, sep="\t")
    assert table["idx"].is_unique and table["idx"].tolist() == [0, 1, 2, 3, 4]
    assert table.loc[table["idx"] == 3, "value"].item() == pytest.approx(1.0)
    assert table["name"].tolist() == [f"r{i}" for i in range(5)]


def test_shard_writer_repairs_duplicate_and_malformed_lines(tmp_path):
    out = tmp_path / "shard.tsv"
    part = out.with_name(out.name + ".part")
    part.write_text(STAMP + "\nidx\tvalue\tname\n5\t0.5\tr5\n5\t0.5\tr5\nbad line\n2\t0.25\tr2\n7\t0.7")
    w = ShardWriter(out, COLS, fingerprint=FP)
    assert w.done == {2, 5}
    w.append(_rows(7, 5))
    assert w.finish()["idx"].tolist() == [2, 5, 7]


def test_shard_writer_restarts_a_part_file_with_another_header(tmp_path):
    out = tmp_path / "shard.tsv"
    out.with_name(out.name + ".part").write_text(STAMP + "\nother\tcolumns\n1\t2\n")
    w = ShardWriter(out, COLS, fingerprint=FP)
    assert w.done == set()
    w.append(_rows(1))
    assert w.finish()["idx"].tolist() == [1]


def test_shard_writer_resumes_in_a_new_process_without_the_header_twice(tmp_path):
    out = tmp_path / "shard.tsv"
    ShardWriter(out, COLS, fingerprint=FP).append(_rows(0, 1))
    w = ShardWriter(out, COLS, fingerprint=FP)
    w.append(_rows(2))
    lines = w.part.read_text().splitlines()
    assert lines[0] == STAMP and lines[1] == "idx\tvalue\tname" and sum(line.startswith("idx") for line in lines) == 1
    assert len(lines) == 5


@pytest.mark.parametrize(
    "first_line",
    [
        "",
        "idx\tvalue\tname",
        FINGERPRINT_PREFIX + '{"kind": "unit", "n":',
        FINGERPRINT_PREFIX + '{"kind": "unit", "n": 2, "version": 1}',
    ],
)
def test_shard_writer_starts_over_without_its_fingerprint(tmp_path, capsys, first_line):
    """A part file whose first line is not this writer's fingerprint (missing: an older version's file;
    torn; another fingerprint) is started over, with one line on stderr; its rows are not resumed."""
    out = tmp_path / "shard.tsv"
    part = out.with_name(out.name + ".part")
    header = "" if first_line.startswith("idx") else "idx\tvalue\tname\n"
    part.write_text(first_line + "\n" + header + "0\t0.0\tr0\n1\t0.5\tr1\n")
    w = ShardWriter(out, COLS, fingerprint=FP)
    assert w.done == set()
    assert part.read_text() == STAMP + "\nidx\tvalue\tname\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"resume: {part} ") and err[0].endswith("; starting over")
    if 'n": 2' in first_line:
        assert err[0] == f"resume: {part} was written with other settings (n: 2 → 1); starting over"
    else:
        assert "has no fingerprint" in err[0]
    w.append(_rows(1))
    assert w.finish()["value"].tolist() == [1 / 3]


def test_shard_writer_resumes_under_its_fingerprint_silently(tmp_path, capsys):
    out = tmp_path / "shard.tsv"
    ShardWriter(out, COLS, fingerprint=FP).append(_rows(0, 1))
    w = ShardWriter(out, COLS, fingerprint=fingerprint(n=1, kind="unit"))  # the same parts, in another order
    assert w.done == {0, 1} and capsys.readouterr().err == ""


# ------------------------------------------------------------------ kill and resume, end to end
# Slow enough to catch certification mid-shard: more draws per input and one input per
# noise batch (batch_size == chunk), so a row lands in the .part file every few tenths of a second.
SLOW = {
    "test": {"limit": 24, "shards": 2},
    "certify": {"n": 2000, "chunk": 500, "batch_size": 500},
    # one experiment, so that the only unfinished work at the kill is the certify shard itself
    "models": [{"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["cohen"]}],
}
ROWS_PER_SHARD = 12
MIN_ROWS = 2  # kill once the second shard has at least this many rows


def _pids_of(words: str, cwd: Path) -> list[int]:
    """PIDs of processes running in ``cwd`` whose command line contains every word of ``words``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if all(w in cmd.split() for w in words.split()) and Path(os.readlink(proc / "cwd")) == cwd:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _data_rows(part: Path) -> int:
    try:
        return max(0, part.read_text().count("\n") - 2)  # the fingerprint and the header
    except FileNotFoundError:
        return 0


def _smk(slow: Path) -> list[str]:
    return [
        str(BIN / "snakemake"),
        "certify_all",
        "--configfile",
        str(MINI),
        str(slow),
        "--cores",
        "2",
        "--resources",
        "gpu=1",
    ]


@pytest.mark.slow
def test_killed_certification_resumes_without_recomputing(tmp_path):
    slow = tmp_path / "slow.yaml"
    slow.write_text(yaml.safe_dump(SLOW))
    ref = copy_repo(tmp_path / "uninterrupted")
    root = copy_repo(tmp_path / "killed").resolve()

    # The uninterrupted reference runs at the same time as the interrupted one (both are mostly
    # process start-up; 2 cores are enough), to keep the test short.
    ref_proc = subprocess.Popen(
        _smk(slow), cwd=ref, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        shards = root / "results" / "digits" / "gaussian-fixed-l2-0.25" / "cohen" / "shards"
        part = _interrupt(root, slow, shards)
        shard_name = part.name[: -len(".part")]
        kept = part.read_text().splitlines()[1:]  # without the fingerprint line
        assert MIN_ROWS <= len(kept) - 1 < ROWS_PER_SHARD, f"killed with {len(kept) - 1} rows: not mid-shard"
        assert not (shards / shard_name).exists(), "the killed shard must not look finished"
        finished = {p: p.stat().st_mtime_ns for p in shards.glob("*.tsv")}
        assert finished, "the first shard should have finished before the second was killed"
        model = root / "models" / "digits" / "gaussian-fixed-l2-0.25" / "model.pt"
        model_mtime = model.stat().st_mtime_ns

        # The rerun: unlock (the killed run left its lock behind), then the same command again.
        run([str(BIN / "snakemake"), "--unlock", "--configfile", str(MINI), str(slow), "--cores", "1"], root)
        rerun = run(_smk(slow), root, timeout=900)
        out = rerun.stdout + rerun.stderr
        ran = sorted(
            {
                line.split()[-1].rstrip(":")
                for line in out.splitlines()
                if line.startswith(("rule ", "localrule ")) and line.rstrip().endswith(":")
            }
            - {"certify_all"}
        )
        assert ran == ["certify", "gather"], f"the rerun should only finish the killed shard and gather, ran {ran}"
        assert out.count("rule certify:") == 1, "only the killed shard is certified again"
        for path, mtime in finished.items():
            assert path.stat().st_mtime_ns == mtime, f"finished shard {path.name} was recomputed"
        assert model.stat().st_mtime_ns == model_mtime, "the model was retrained"
        assert not part.exists(), "the .part file is renamed onto the shard when it completes"
        resumed = (shards / shard_name).read_text().splitlines()
        # Rows written before the kill survive verbatim (their measured time included): not recomputed.
        assert set(kept[1:]) <= set(resumed[1:]), "rows certified before the kill were recomputed"
        assert len(resumed) == ROWS_PER_SHARD + 1

        assert ref_proc.wait(timeout=900) == 0, "the uninterrupted reference run failed"
    finally:
        if ref_proc.poll() is None:
            os.killpg(ref_proc.pid, signal.SIGKILL)
            ref_proc.wait()
    tables = assert_same_tables(ref, root)
    for table in tables:
        final = pd.read_csv(root / table.relative_to(ref), sep="\t")
        assert final["idx"].tolist() == list(range(2 * ROWS_PER_SHARD)), "every row exactly once, in order"
    for shard in sorted((ref / "results").rglob("shards/*.tsv")):
        other = root / shard.relative_to(ref)
        assert comparable(other) == comparable(shard), f"{shard.name} differs from the uninterrupted run"


def _interrupt(root: Path, slow: Path, shards: Path) -> Path:
    """Run the pipeline; once one shard is done and the other has MIN_ROWS rows, SIGKILL it all.

    Returns the killed shard's ``.part`` file."""
    log = root.parent / "interrupted.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            _smk(slow), cwd=root, env=_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    "the pipeline finished before certification could be interrupted:\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            done = list(shards.glob("*.tsv")) if shards.is_dir() else []
            for part in sorted(shards.glob("*.tsv.part")) if done else []:
                if _data_rows(part) >= MIN_ROWS:
                    pids = _pids_of(f"certify --shard {part.name.split('.')[0]}", root)
                    for pid in pids:  # the smoothcert process and the shell that started it
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    if pids:
                        return part
            time.sleep(0.05)
        pytest.fail("certification was never caught mid-shard")
    finally:
        # The whole Snakemake run dies as well (as when a node or a login session goes away).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=60)
