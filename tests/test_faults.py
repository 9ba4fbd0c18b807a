"""Faults a cluster really produces: damaged tables, code edits between kill and rerun, two writers on one
shard, reruns that must give the same bytes, full disks, and the smaller cases of docs/bad_inputs.md.

Each case either gives the correct result or stops with one line (exit 2) that names the file and the
first bad input; none gives a wrong result with exit status 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from smoothcert import artifacts
from smoothcert import config as config_mod
from smoothcert.artifacts import fingerprint, save_torch, write_table
from smoothcert.cli import main
from smoothcert.errors import SmoothcertError
from smoothcert.pipeline import stages
from smoothcert.shards import ShardWriter

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests" / "fixtures" / "report"
N = 24  # rows of the fixture tables: idx 0..23


def fails(capsys, *argv, match: str) -> str:
    """Run the CLI; assert exit 2 and one line on stderr matching ``match``; return it."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pd.Series([err]).str.contains(match, regex=True).all(), err
    return err


def _config(tmp: Path, **test) -> Path:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["test"].update({"start": 0, "step": 1, "limit": N, **test})
    path = tmp / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _data(tmp: Path, n: int = 30) -> Path:
    gen = torch.Generator().manual_seed(0)
    (tmp / "data").mkdir(exist_ok=True)
    blob = {"x": torch.rand(n, 1, 8, 8, generator=gen), "y": torch.randint(0, 10, (n,), generator=gen)}
    torch.save(blob, tmp / "data" / "test.pt")
    return tmp / "data"


def _shards(tmp: Path, n: int = 2) -> list[Path]:
    """The fixture's Cohen table cut into ``n`` shard tables i-of-n.tsv, as certify writes them."""
    table = pd.read_csv(FIX / "cohen.tsv", sep="\t")
    (tmp / "shards").mkdir(exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(N), n)):
        paths.append(tmp / "shards" / f"{i}-of-{n}.tsv")
        write_table(paths[-1], table.iloc[part])
    return paths


def _gather(tmp: Path, shards: list[Path]) -> list:
    return ["--config", _config(tmp), "gather", *shards, "--data", _data(tmp), "--out", tmp / "certify.tsv"]


# ------------------------------------------------------------------ 1. tables are complete or refused


def test_gather_of_whole_shards_merges_every_input(tmp_path):
    assert main([str(a) for a in _gather(tmp_path, _shards(tmp_path))]) == 0
    merged = pd.read_csv(tmp_path / "certify.tsv", sep="\t")
    assert merged["idx"].tolist() == list(range(N))
    assert merged.equals(pd.read_csv(FIX / "cohen.tsv", sep="\t"))


def test_gather_checks_whole_shards_without_importing_torch(tmp_path):
    """23 gather jobs in the default run: checking them against test.limit costs no torch import."""
    argv = [str(a) for a in _gather(tmp_path, _shards(tmp_path))]
    code = f"import sys; from smoothcert.cli import main; rc = main({argv!r}); print(rc, 'torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split() == ["0", "False"], proc.stdout + proc.stderr


def test_gather_refuses_a_shard_cut_inside_a_row(tmp_path, capsys):
    """The issue's case: half a shard; the cut row reads as α 0.0 and a NaN gap."""
    shards = _shards(tmp_path)
    text = shards[0].read_bytes()
    cut = text[: text.index(b"\n5\t") + 40]  # ends inside idx 5's row
    shards[0].write_bytes(cut)
    err = fails(capsys, *_gather(tmp_path, shards), match=r"shard table .*0-of-2\.tsv is incomplete or damaged: idx 5 ")
    assert "cut short" in err and "delete it and rerun" in err and "6 missing" in err
    assert not (tmp_path / "certify.tsv").exists()


def test_gather_refuses_a_shard_cut_at_a_line_end(tmp_path, capsys):
    """A cut exactly after a row leaves no torn line: the missing inputs name it, in either shard."""
    shards = _shards(tmp_path)
    for shard, first_lost in ((shards[1], 20), (shards[0], 7)):
        lines = shard.read_text().splitlines(keepends=True)
        keep = 1 + first_lost - (0 if shard is shards[0] else 12)
        shard.write_text("".join(lines[:keep]))
        fails(
            capsys,
            *_gather(tmp_path, shards),
            match=rf"{shard.name} is incomplete or damaged: idx {first_lost} is missing",
        )
    assert not (tmp_path / "certify.tsv").exists()


@pytest.mark.parametrize(
    "column,value,words",
    [
        ("alpha", "0.0", r"alpha = 0\.0, expected a number in \(0, 1\)"),
        ("gap", "", r"gap is empty, expected a number >= 0"),
        ("correct", "2", "correct = 2, expected 0 or 1"),
    ],
)
def test_gather_refuses_a_damaged_value(tmp_path, capsys, column, value, words):
    shards = _shards(tmp_path)
    table = pd.read_csv(shards[1], sep="\t", dtype=str, keep_default_na=False)
    table.loc[table["idx"] == "15", column] = value
    table.to_csv(shards[1], sep="\t", index=False)
    fails(
        capsys, *_gather(tmp_path, shards), match=rf"1-of-2\.tsv is incomplete or damaged: idx 15 is damaged \({words}"
    )


def test_gather_refuses_a_row_twice_and_an_input_of_another_shard(tmp_path, capsys):
    shards = _shards(tmp_path)
    lines = shards[0].read_text().splitlines(keepends=True)
    shards[0].write_text("".join(lines + [lines[3]]))
    fails(capsys, *_gather(tmp_path, shards), match=r"0-of-2\.tsv is incomplete or damaged: idx 2 appears 2 times")
    shards = _shards(tmp_path)
    swap = tmp_path / "swap.tsv"
    shutil.copy(shards[0], swap)
    shutil.copy(shards[1], shards[0])
    shutil.copy(swap, shards[1])
    fails(capsys, *_gather(tmp_path, shards), match=r"0-of-2\.tsv is incomplete or damaged: idx 0 is missing")


def test_gather_without_data_still_refuses_torn_rows(tmp_path, capsys):
    """By hand, without --data: whole rows, valid values and each idx once are still checked."""
    shards = _shards(tmp_path)
    shards[1].write_bytes(shards[1].read_bytes()[:-30])
    fails(
        capsys,
        "gather",
        *shards,
        "--out",
        tmp_path / "m.tsv",
        match=r"1-of-2\.tsv is incomplete or damaged: idx 23 is cut short",
    )


def test_gather_counts_test_inputs_when_the_dataset_is_smaller_than_the_limit(tmp_path):
    """limit 100 over 24 test inputs: the shards must hold all 24 (the split is loaded to count them)."""
    shards = _shards(tmp_path)
    argv = ["--config", _config(tmp_path, limit=100), "gather", *shards, "--data", _data(tmp_path, n=N)]
    assert main([str(a) for a in [*argv, "--out", tmp_path / "m.tsv"]]) == 0
    _data(tmp_path, n=25)  # one more test input than the shards hold
    assert main([str(a) for a in [*argv, "--out", tmp_path / "m2.tsv"]]) == 2


def test_report_refuses_a_truncated_certify_table(tmp_path, capsys):
    """The issue's case: certify.tsv cut in half gave a report on 10 of 20 inputs with exit 0."""
    from test_report import L2, _args, _layout

    tmp = _layout(tmp_path)
    table = tmp / "results" / L2 / "cohen" / "certify.tsv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:13]))  # idx 0..11 of 24
    fails(
        capsys,
        *_args(tmp, "--no-plots", "--data", str(tmp / "data")),
        match=r"cohen/certify\.tsv is incomplete or damaged: idx 12 is missing \(12 missing; 24 expected\)",
    )
    # without --data the tables are checked against each other: the same table is still refused
    fails(capsys, *_args(tmp, "--no-plots"), match=r"cohen/certify\.tsv is incomplete or damaged: idx 12 is missing")
    assert not (tmp / "report" / "summary.csv").exists()


def test_report_refuses_a_damaged_final_table(tmp_path, capsys):
    from test_report import L2, _args, _layout

    tmp = _layout(tmp_path)
    final = tmp / "results" / L2 / "ddrs" / "final.tsv"
    final.write_bytes(final.read_bytes()[:-10])
    fails(
        capsys,
        *_args(tmp, "--no-plots", "--data", str(tmp / "data")),
        match=r"ddrs/final\.tsv is incomplete or damaged: idx 23 is cut short",
    )


def test_report_refuses_a_video_table_missing_clips(tmp_path, capsys):
    from test_report import _args, _layout

    tmp = _layout(tmp_path)
    for method in ("cohen", "smooth_reduce_max"):
        d = tmp / "results" / "video" / "sigma-0.25" / method
        d.mkdir(parents=True)
        shutil.copy(FIX / "locuslab_noise_0.25.tsv", d / "certify.tsv")
    table = tmp / "results" / "video" / "sigma-0.25" / "cohen" / "certify.tsv"
    table.write_text("".join(table.read_text().splitlines(keepends=True)[:-3]))
    fails(
        capsys,
        *_args(tmp, "--no-plots", "--video", str(tmp / "results" / "video")),
        match=r"video certificate table .*cohen/certify\.tsv is incomplete or damaged: idx 21 is missing",
    )


# ------------------------------------------------------------------ 2. resume is code-aware


def test_code_digest_is_one_definition_for_triggers_and_fingerprints(monkeypatch):
    cfg = config_mod.load(REPO / "params.yaml")
    before = stages.trigger_params(cfg, "certify", method="cohen")["code"]
    assert stages.code_fingerprint("certify", method="cohen") == "sha256:" + before
    assert "src/smoothcert/pipeline/stages.py" not in stages.code_files("certify")  # the map computes no row
    monkeypatch.setattr(stages, "_digest", lambda paths: "0" * 64)  # as if a file of the closure changed
    assert stages.trigger_params(cfg, "certify", method="cohen")["code"] == "0" * 64
    assert stages.code_fingerprint("certify", method="cohen") == "sha256:" + "0" * 64


def test_rows_of_other_code_are_not_resumed(tmp_path, capsys, monkeypatch):
    """Kill a shard half-way, change the code, rerun: it starts over with one line, no old row kept."""
    from test_fingerprint import LIMIT, Killed, base_config, run_certify, ws  # noqa: F401

    monkeypatch.setattr(stages, "code_fingerprint", lambda *a, **k: "sha256:" + "1" * 64)
    from smoothcert.engine import certify as engine_certify

    real, done = engine_certify._certify_fixed, []

    def killing(classifier, x, *args, **kwargs):
        if len(done) >= 3:
            raise Killed()
        done.append(len(x))
        return real(classifier, x, *args, **kwargs)

    root = tmp_path
    cfg = base_config()
    from smoothcert import data as data_mod

    data_mod.prepare({**cfg["data"], "seed": cfg["seed"]}, root / "data")
    from smoothcert.training.loop import make_model

    torch.manual_seed(0)
    torch.save({"arch": "digits_cnn", "state_dict": make_model(cfg).state_dict()}, root / "model.pt")
    space = {"root": root, "data": root / "data", "ckpt": {0: root / "model.pt"}}
    out = root / "c.tsv"
    monkeypatch.setattr(engine_certify, "_certify_fixed", killing)  # the fixed-N CERTIFY engine.certify.certify runs
    with pytest.raises(Killed):
        run_certify(space, root, cfg, out, ckpt=root / "model.pt")
    part = Path(f"{out}.part")
    assert len(part.read_text().splitlines()) == 2 + 3
    capsys.readouterr()
    monkeypatch.setattr(stages, "code_fingerprint", lambda *a, **k: "sha256:" + "2" * 64)
    monkeypatch.setattr(engine_certify, "_certify_fixed", real)
    run_certify(space, root, cfg, out, ckpt=root / "model.pt")
    err = capsys.readouterr().err
    assert f"resume: {part} was certified with other code; starting over" in err
    assert len(pd.read_csv(out, sep="\t")) == LIMIT and not part.exists()


def test_training_checkpoint_of_other_code_is_trained_again(tmp_path, capsys):
    from smoothcert.training.loop import training_fingerprint

    cfg = config_mod.load(REPO / "params.yaml")
    spec = config_mod.model_specs(cfg)[0]
    split = (torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))
    a = training_fingerprint(cfg, spec, split, split, code=stages.code_fingerprint("train"))
    b = training_fingerprint(cfg, spec, split, split, code="sha256:" + "3" * 64)
    why = artifacts.resume_conflict("m/checkpoint.pt", a, b, "trained", "training from scratch")
    assert why == "resume: m/checkpoint.pt was trained with other code; training from scratch"


# ------------------------------------------------------------------ 3. one writer per shard

HOLDER = """
import sys, time
from smoothcert.shards import WriterLock
lock = WriterLock(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def _holder(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_on_a_shard_is_refused_then_takes_over_a_dead_ones_lock(tmp_path, capsys):
    out = tmp_path / "shards" / "0-of-1.tsv"
    proc = _holder(out)
    try:
        with pytest.raises(SmoothcertError, match=rf"0-of-1\.tsv is being written by pid {proc.pid} on \S+ \(lock "):
            ShardWriter(out, ["idx", "v"], fingerprint=fingerprint(kind="unit"))
        assert not Path(f"{out}.part").exists()  # the refused writer touched nothing
    finally:
        proc.kill()
        proc.wait()
    capsys.readouterr()
    w = ShardWriter(out, ["idx", "v"], fingerprint=fingerprint(kind="unit"))
    assert f"names pid {proc.pid} on" in capsys.readouterr().err  # stale lock of a dead process: taken over
    w.append([{"idx": 0, "v": 1.0}])
    w.finish()
    assert not Path(f"{out}.lock").exists() and not Path(f"{out}.part").exists()
    assert pd.read_csv(out, sep="\t")["idx"].tolist() == [0]


def test_a_writer_that_failed_half_way_hands_its_lock_to_the_rerun_in_the_same_process(tmp_path):
    out = tmp_path / "s.tsv"
    first = ShardWriter(out, ["idx", "v"], fingerprint=fingerprint(kind="unit"))
    first.append([{"idx": 0, "v": 1.0}])
    second = ShardWriter(out, ["idx", "v"], fingerprint=fingerprint(kind="unit"))  # e.g. after a caught error
    del first  # its finalizer must not drop the lock the second one holds
    assert second.lock.fd is not None and Path(f"{out}.lock").exists()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from smoothcert.shards import WriterLock; WriterLock(sys.argv[1])",
            str(out),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert proc.returncode != 0 and "is being written by" in proc.stderr
    second.append([{"idx": 1, "v": 2.0}])
    assert second.finish()["idx"].tolist() == [0, 1]


# ------------------------------------------------------------------ 4. same seed, same bytes


def test_save_torch_is_byte_identical_and_names_no_temporary(tmp_path):
    obj = {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}
    save_torch(tmp_path / "a.pt", obj)
    time.sleep(1.1)
    save_torch(tmp_path / "b.pt", obj)
    a, b = (tmp_path / "a.pt").read_bytes(), (tmp_path / "b.pt").read_bytes()
    assert a == b and b".tmp" not in a


@pytest.mark.slow
def test_two_identical_trainings_give_identical_model_bytes(tmp_path):
    """Prepared data and the digits model, made twice from scratch in fresh folders: the same bytes."""
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg.update(device="cpu")
    cfg["train"].update(epochs=2)
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(cfg))
    for data in ("data", "data2"):
        assert main(["--config", str(config), "prepare-data", "--out", str(tmp_path / data)]) == 0
    for split in ("train.pt", "test.pt"):
        assert (tmp_path / "data" / split).read_bytes() == (tmp_path / "data2" / split).read_bytes()
    blob = artifacts.load_torch(tmp_path / "data" / "train.pt")  # 256 training images keep the test fast
    save_torch(tmp_path / "data" / "train.pt", {"x": blob["x"][:256].clone(), "y": blob["y"][:256].clone()})
    model = config_mod.model_specs(cfg)[0].id
    for run in ("a", "b"):
        argv = ["--config", str(config), "train", "--no-progress", "--model", model, "--data", str(tmp_path / "data")]
        assert main([*argv, "--out", str(tmp_path / run)]) == 0
    assert (tmp_path / "a" / "model.pt").read_bytes() == (tmp_path / "b" / "model.pt").read_bytes()


# ------------------------------------------------------------------ 5. every write error is one line


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (skipped where mounting is not allowed)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("kind", ["torch.save", "np.savez", "pandas"])
def test_a_full_disk_is_one_line_and_leaves_nothing(full_disk, kind):
    from smoothcert.pipeline.memory import save_memory

    path = full_disk / "out.bin"
    write = {
        "torch.save": lambda: save_torch(path, {"x": torch.zeros(100_000)}),
        "np.savez": lambda: save_memory(path, {"idx": np.arange(100_000), "center": np.zeros((100, 1000))}),
        "pandas": lambda: write_table(path, pd.DataFrame({"a": np.arange(100_000)})),
    }[kind]
    with pytest.raises(SmoothcertError, match=r"^cannot write .*out\.bin: No space left on device$"):
        write()
    assert list(full_disk.iterdir()) == []


# ------------------------------------------------------------------ 6. smaller cases


def test_duplicate_yaml_key_is_refused_naming_both_lines(tmp_path, capsys):
    text = (REPO / "params.yaml").read_text().replace("certify:\n", "certify:\n  n: 300\n", 1)
    (tmp_path / "p.yaml").write_text(text)
    line = text.splitlines().index("  n: 300") + 1
    second = next(i for i, s in enumerate(text.splitlines(), 1) if s.lstrip().startswith("n:") and i > line)
    fails(
        capsys,
        "--config",
        tmp_path / "p.yaml",
        "validate",
        match=rf"p\.yaml: key 'n' appears twice in one mapping \(lines {line} and {second}\); keep one",
    )


def _snakemake(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    cmd = [str(Path(sys.executable).parent / "snakemake"), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_snakefile_refuses_duplicate_keys_in_its_config_files(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "over.yaml").write_text("test:\n  limit: 5\n  shards: 1\n  limit: 7\n")
    proc = _snakemake(tmp_path, "-s", str(REPO / "Snakefile"), "-n", "--configfile", "over.yaml", "--cores", "1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "over.yaml: key 'limit' appears twice in one mapping (lines 2 and 4); keep one" in proc.stderr


def test_enabled_video_needs_a_method(tmp_path, capsys):
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["video"].update(enabled=True, methods=[])
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    fails(
        capsys, "--config", tmp_path / "p.yaml", "validate", match=r"video\.enabled is true but video\.methods is empty"
    )
    cfg["video"]["enabled"] = False
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(tmp_path / "p.yaml"), "validate"]) == 0


def test_stale_temporaries_are_removed_when_the_output_is_next_written(tmp_path, capsys):
    out = tmp_path / "merged.tsv"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = [
        tmp_path / f".merged.tsv.{dead.stdout.strip()}@{artifacts.HOST}.ab12.tmp",
        tmp_path / ".merged.tsv.x9y8.tmp",
    ]
    live = [
        tmp_path / f".merged.tsv.{os.getppid()}@{artifacts.HOST}.cd34.tmp",
        tmp_path / ".merged.tsv.1@elsewhere.ef56.tmp",
    ]
    for p in stale + live:
        p.write_bytes(b"x" * 1000)
    write_table(out, pd.DataFrame({"idx": [0]}))
    assert [p.exists() for p in stale] == [False, False] and all(p.exists() for p in live)
    assert capsys.readouterr().err.count("a temporary file left by a killed writer") == 2


def test_folder_as_import_and_zero_filled_checkpoint_messages(tmp_path, capsys):
    cfg = _config(tmp_path)
    (tmp_path / "dir.tsv").mkdir()
    fails(
        capsys,
        "--config",
        cfg,
        "report",
        "--out",
        tmp_path / "r",
        "--no-plots",
        "--import",
        f"x={tmp_path / 'dir.tsv'}",
        match=r"dir\.tsv is a folder, not a table file",
    )
    (tmp_path / "z.pt").write_bytes(bytes(4096))
    with pytest.raises(SmoothcertError, match=r"^cannot load checkpoint .*z\.pt: the file holds only zero bytes"):
        artifacts.load_torch(tmp_path / "z.pt", what="checkpoint")


@pytest.mark.parametrize("flag", ["update", "plain"])
def test_a_failed_training_job_restores_the_model_it_replaced(tmp_path, flag):
    """Snakemake deletes a job's outputs before it runs and after it fails, unless they are update()d: then it
    keeps them and restores its backup when the job fails. The train rule's outputs are update()d."""
    rule = (REPO / "workflow" / "rules" / "train.smk").read_text()
    assert 'model=update(f"{MODELS}/{{model}}/model.pt")' in rule
    assert 'metrics=update(f"{MODELS}/{{model}}/metrics.tsv")' in rule
    output = 'update("model.pt")' if flag == "update" else '"model.pt"'
    (tmp_path / "Snakefile").write_text(
        f"rule train:\n    output: {output}\n    shell: 'echo half > {{output}}; exit 1'\n"
    )
    (tmp_path / "model.pt").write_bytes(b"the trained model")
    proc = _snakemake(tmp_path, "--cores", "1", "--forcerun", "train")
    assert proc.returncode != 0
    if flag == "update":
        assert (tmp_path / "model.pt").read_bytes() == b"the trained model"
    else:  # what happened before: the failed job took the model with it
        assert not (tmp_path / "model.pt").exists()
