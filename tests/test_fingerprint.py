"""Resumable state is resumed only under the fingerprint it was written with.

A certify shard's ``.part`` rows and training's ``checkpoint.pt`` carry a fingerprint of
everything their content depends on (``smoothcert.artifacts.fingerprint``). Each test kills a job
part-way (in process: the next unit of work raises), changes something or nothing, and runs
the job again:

* nothing changed (or only what changes no number: ``certify.batch_size``): the work done
  before the kill is kept verbatim (its measured ``time`` included) and not computed again;
* a setting a row depends on changed (α, n, seed, Smooth-Reduce's grid, the test selection),
  the checkpoint was retrained, or the θ file is another one: the job starts over, says why in
  one line on stderr, and its output equals an uninterrupted run's with the new settings
  (all columns but the wall-clock ``time``);
* the same for training: another ``macer.lbd``, ``train.lr`` or seed trains from scratch and
  gives exactly the model and metrics of an uninterrupted training with the new config.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from smoothcert import data as data_mod
from smoothcert.artifacts import fingerprint, load_torch, resume_conflict, save_torch
from smoothcert.cli import main
from smoothcert.config import ModelSpec
from smoothcert.engine import certify as engine_certify
from smoothcert.pipeline import certify as certify_mod
from smoothcert.shards import FINGERPRINT_PREFIX
from smoothcert.training import loop as train_mod
from smoothcert.training.loop import make_model, train

REPO = Path(__file__).resolve().parents[1]
MODEL = "gaussian-fixed-l2-0.25"
LIMIT = 8
KILL_AFTER = 3  # inputs certified before the kill (one input per noise batch: batch_size == chunk)


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so nothing on the way out handles it."""


def base_config() -> dict:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["data"].update(dataset="digits", root="raw", download=False)
    cfg["model"]["arch"] = "digits_cnn"
    cfg["test"].update(start=0, step=1, limit=LIMIT, shards=1)
    cfg["models"] = [
        {
            "objective": "gaussian",
            "sigma_mode": "fixed",
            "norm": "l2",
            "sigmas": [0.25],
            "methods": ["cohen", "ddrs", "smooth_reduce_max"],
        }
    ]
    cfg["certify"].update(n0=20, n=200, alpha=0.001, batch_size=100, chunk=100)
    return cfg


def changed(cfg: dict, key: str, value) -> dict:
    out = copy.deepcopy(cfg)
    *path, last = key.split(".")
    node = out
    for p in path:
        node = node[p]
    node[last] = value
    return out


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """Prepared digits and two checkpoints (a model and its retrained successor) of the same arch."""
    root = tmp_path_factory.mktemp("fp")
    cfg = base_config()
    data_mod.prepare({**cfg["data"], "seed": cfg["seed"]}, root / "data")
    ckpts = {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        ckpts[seed] = root / f"model-{seed}.pt"
        torch.save({"arch": "digits_cnn", "state_dict": make_model(cfg).state_dict()}, ckpts[seed])
    return {"root": root, "data": root / "data", "ckpt": ckpts}


@pytest.fixture
def work(monkeypatch):
    """Counts the inputs certified; ``work.kill_after = k`` kills the job once k inputs are done."""

    class Work:
        inputs = 0
        kill_after = None

    real = engine_certify._certify_fixed

    def counting(classifier, x, *args, **kwargs):
        if Work.kill_after is not None and Work.inputs + len(x) > Work.kill_after:
            raise Killed()
        Work.inputs += len(x)
        return real(classifier, x, *args, **kwargs)

    monkeypatch.setattr(engine_certify, "_certify_fixed", counting)  # the fixed-N CERTIFY engine.certify.certify runs
    return Work


def run_certify(
    ws, tmp: Path, cfg: dict, out: Path, ckpt: Path | None = None, method: str = "cohen", theta: Path | None = None
) -> None:
    config = tmp / f"config-{abs(hash(yaml.safe_dump(cfg)))}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    argv = [
        "--config",
        str(config),
        "certify",
        "--no-progress",
        "--model",
        MODEL,
        "--checkpoint",
        str(ckpt or ws["ckpt"][0]),
        "--data",
        str(ws["data"]),
        "--method",
        method,
        "--out",
        str(out),
    ]
    if theta is not None:
        argv += ["--theta", str(theta)]
    assert main(argv) == 0


def killed_run(ws, tmp, work, cfg, out, **kw) -> list[str]:
    """Certify until KILL_AFTER inputs are done, then die; return the rows left in the .part file."""
    work.kill_after, work.inputs = KILL_AFTER, 0
    with pytest.raises(Killed):
        run_certify(ws, tmp, cfg, out, **kw)
    work.kill_after, work.inputs = None, 0
    lines = Path(f"{out}.part").read_text().splitlines()
    assert lines[0].startswith(FINGERPRINT_PREFIX) and lines[1].startswith("idx\t")
    assert len(lines) == 2 + KILL_AFTER
    return lines[2:]


def reference(ws, tmp, cfg, name, **kw) -> pd.DataFrame:
    out = tmp / "reference" / name / "certify.tsv"
    run_certify(ws, tmp, cfg, out, **kw)
    return pd.read_csv(out, sep="\t")


def same_but_time(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    return a.drop(columns="time").equals(b.drop(columns="time"))


def save_theta(path: Path, value: float) -> Path:
    torch.save(
        {
            "idx": torch.arange(LIMIT),
            "theta": torch.full((LIMIT, 64), value),
            "time": torch.zeros(LIMIT, dtype=torch.float64),
            "evals": torch.zeros(LIMIT, dtype=torch.int64),
        },
        path,
    )
    return path


# ------------------------------------------------------------------ certification


@pytest.mark.parametrize("change", [None, ("certify.batch_size", 20)], ids=["unchanged", "batch_size"])
def test_resume_with_the_same_settings_keeps_the_rows(ws, tmp_path, work, capsys, change):
    """Unchanged settings (or a change that changes no number: batch_size) resume: the rows written
    before the kill stay verbatim, only the others are certified, nothing is logged."""
    cfg = base_config()
    new = changed(cfg, *change) if change else cfg
    ref = reference(ws, tmp_path, new, "ref")
    out = tmp_path / "c.tsv"
    kept = killed_run(ws, tmp_path, work, cfg, out)
    capsys.readouterr()
    run_certify(ws, tmp_path, new, out)
    assert capsys.readouterr().err == ""
    assert work.inputs == LIMIT - KILL_AFTER, "rows written before the kill were certified again"
    table = pd.read_csv(out, sep="\t")
    assert out.read_text().splitlines()[1 : 1 + KILL_AFTER] == kept, "kept rows (their time included) not verbatim"
    assert same_but_time(table, ref)
    assert not Path(f"{out}.part").exists()


def test_resume_keeps_complete_rows_after_a_torn_line(ws, tmp_path, work, capsys):
    """Killed mid-write: half a row at the end of the .part file is dropped, the complete rows are kept."""
    cfg = base_config()
    ref = reference(ws, tmp_path, cfg, "ref")
    out = tmp_path / "c.tsv"
    kept = killed_run(ws, tmp_path, work, cfg, out)
    with open(f"{out}.part", "a") as fh:
        fh.write(ref.iloc[KILL_AFTER : KILL_AFTER + 1].to_csv(sep="\t", header=False, index=False)[:17])
    run_certify(ws, tmp_path, cfg, out)
    assert capsys.readouterr().err == "" and work.inputs == LIMIT - KILL_AFTER
    assert out.read_text().splitlines()[1 : 1 + KILL_AFTER] == kept
    assert same_but_time(pd.read_csv(out, sep="\t"), ref)


CHANGES = [
    ("certify.alpha", 0.01, "other settings (certify.alpha: 0.001 → 0.01)"),
    ("certify.n", 300, "other settings (certify.n: 200 → 300)"),
    ("certify.n0", 30, "other settings (certify.n0: 20 → 30)"),
    ("certify.chunk", 50, "other settings (certify.chunk: 100 → 50)"),
    ("seed", 7, "other settings (seed: 0 → 7)"),
    ("channels_last", False, "other settings (channels_last: true → false)"),
]


@pytest.mark.parametrize("key,value,why", CHANGES, ids=[c[0] for c in CHANGES])
def test_resume_after_a_config_change_starts_over(ws, tmp_path, work, capsys, key, value, why):
    cfg = base_config()
    new = changed(cfg, key, value)
    ref = reference(ws, tmp_path, new, "ref")
    out = tmp_path / "c.tsv"
    killed_run(ws, tmp_path, work, cfg, out)
    capsys.readouterr()
    run_certify(ws, tmp_path, new, out)
    err = capsys.readouterr().err.splitlines()
    assert err == [f"resume: {out}.part was certified with {why}; starting over"]
    assert work.inputs == LIMIT, "every input is certified again"
    assert same_but_time(pd.read_csv(out, sep="\t"), ref)


def test_resume_after_a_retrain_starts_over(ws, tmp_path, work, capsys):
    """The shard was killed, the model retrained onto the same path, the shard run again: no row of the
    old model survives (the incident: radius 0.675 from the old model next to 0.103 from the new one)."""
    cfg = base_config()
    ckpt = tmp_path / "models" / "model.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(ws["ckpt"][0].read_bytes())
    old = reference(ws, tmp_path, cfg, "old", ckpt=ckpt)
    out = tmp_path / "c.tsv"
    killed_run(ws, tmp_path, work, cfg, out, ckpt=ckpt)
    ckpt.write_bytes(ws["ckpt"][1].read_bytes())  # retrained
    ref = reference(ws, tmp_path, cfg, "new", ckpt=ckpt)
    assert not same_but_time(old, ref), "the two models must certify differently for this test to mean anything"
    work.inputs = 0
    capsys.readouterr()
    run_certify(ws, tmp_path, cfg, out, ckpt=ckpt)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out}.part was certified with another checkpoint; starting over"
    ]
    assert work.inputs == LIMIT
    assert same_but_time(pd.read_csv(out, sep="\t"), ref)


def test_resume_with_another_theta_file_starts_over(ws, tmp_path, work, capsys):
    cfg = base_config()
    theta = save_theta(tmp_path / "theta.pt", 0.25)
    out = tmp_path / "d.tsv"
    killed_run(ws, tmp_path, work, cfg, out, method="ddrs", theta=theta)
    save_theta(theta, 0.4)  # optimize-sigma ran again
    ref = reference(ws, tmp_path, cfg, "ddrs", method="ddrs", theta=theta)
    work.inputs = 0
    capsys.readouterr()
    run_certify(ws, tmp_path, cfg, out, method="ddrs", theta=theta)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out}.part was certified with another θ file; starting over"
    ]
    assert work.inputs == LIMIT
    assert same_but_time(pd.read_csv(out, sep="\t"), ref)


def test_resume_after_a_method_setting_change_starts_over(ws, tmp_path, work, capsys):
    cfg = base_config()
    new = changed(cfg, "smooth_reduce.stride", 2)
    ref = reference(ws, tmp_path, new, "sr", method="smooth_reduce_max")
    out = tmp_path / "s.tsv"
    killed_run(ws, tmp_path, work, cfg, out, method="smooth_reduce_max")
    capsys.readouterr()
    run_certify(ws, tmp_path, new, out, method="smooth_reduce_max")
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out}.part was certified with other settings (smooth_reduce.stride: 1 → 2); starting over"
    ]
    assert same_but_time(pd.read_csv(out, sep="\t"), ref)


def test_resume_after_another_test_selection_starts_over(ws, tmp_path, work, capsys):
    """test.start moves the shard onto other inputs: no row of the old selection may end up in the table."""
    cfg = base_config()
    new = changed(cfg, "test.start", 2)
    ref = reference(ws, tmp_path, new, "sel")
    out = tmp_path / "c.tsv"
    killed_run(ws, tmp_path, work, cfg, out)
    capsys.readouterr()
    run_certify(ws, tmp_path, new, out)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"resume: {out}.part was certified with other test inputs and other settings (test.start: 0 → 2); starting over"
    ]
    table = pd.read_csv(out, sep="\t")
    assert table["idx"].tolist() == list(range(2, 2 + LIMIT))
    assert same_but_time(table, ref)


def test_part_file_without_a_fingerprint_starts_over(ws, tmp_path, work, capsys):
    """A .part file of an older version (header first, no fingerprint) cannot say what its rows came from."""
    cfg = base_config()
    ref = reference(ws, tmp_path, cfg, "ref")
    out = tmp_path / "c.tsv"
    lines = (tmp_path / "reference" / "ref" / "certify.tsv").read_text().splitlines()
    Path(f"{out}.part").write_text("\n".join(lines[: 1 + KILL_AFTER]) + "\n")
    work.inputs = 0
    run_certify(ws, tmp_path, cfg, out)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out}.part has no fingerprint (written by an older version, or damaged); starting over"
    ]
    assert work.inputs == LIMIT and same_but_time(pd.read_csv(out, sep="\t"), ref)


def test_shard_fingerprint_ignores_batching_and_sharding_but_not_the_inputs(ws):
    cfg = base_config()
    spec = ModelSpec("gaussian", "fixed", "l2", 0.25, ("cohen",))
    x, y = data_mod.load_split(ws["data"], "test", "digits")
    idx = np.arange(LIMIT)

    def fp(c, ix=idx, **kw):
        return certify_mod.shard_fingerprint(c, spec, "cohen", x[ix], y[ix], ix, checkpoint=ws["ckpt"][0], **kw)

    base = fp(cfg)
    assert fp(changed(cfg, "certify.batch_size", 7)) == base
    assert fp(changed(cfg, "test.shards", 3)) == base
    assert fp(changed(cfg, "device", "cuda")) == base
    assert fp(changed(cfg, "data.root", "elsewhere")) == base
    assert fp(cfg, ix=idx[::-1].copy()) != base
    assert fp(changed(cfg, "certify.amp", True)) != base
    # a model in memory is fingerprinted by its weights (video certifies the model it just trained)
    m0, m1 = (load_torch(ws["ckpt"][s])["state_dict"] for s in (0, 1))
    net = make_model(cfg)
    net.load_state_dict(m0)
    w0 = certify_mod.shard_fingerprint(cfg, spec, "cohen", x[idx], y[idx], idx, model=net)
    net.load_state_dict(m1)
    w1 = certify_mod.shard_fingerprint(cfg, spec, "cohen", x[idx], y[idx], idx, model=net)
    assert w0 != w1 and w0["weights"].startswith("sha256:")
    assert resume_conflict("p", w0, w1, "certified") == "resume: p was certified with another model; starting over"


def test_fingerprint_is_canonical():
    assert fingerprint(a=(1, 2), b={"y": 1, "x": np.float64(0.5)}) == fingerprint(b={"x": 0.5, "y": 1}, a=[1, 2])
    assert resume_conflict("p", None, fingerprint(a=1)).startswith("resume: p has no fingerprint")
    assert resume_conflict("p", fingerprint(a=1), fingerprint(a=1)) is None
    many = resume_conflict(
        "p", fingerprint(a={"b": 1, "c": 2, "d": 3, "e": 4}), fingerprint(a={"b": 0, "c": 0, "d": 0, "e": 0})
    )
    assert (
        many
        == "resume: p was written with other settings (a.b: 1 → 0, a.c: 2 → 0, a.d: 3 → 0, and 1 more); starting over"
    )


# ------------------------------------------------------------------ training

N_TRAIN, N_TEST = 128, 32


@pytest.fixture(scope="module")
def train_data(tmp_path_factory):
    """digits prepared, then cut to N_TRAIN / N_TEST inputs."""
    cfg = base_config()
    out = tmp_path_factory.mktemp("digits")
    data_mod.prepare({**cfg["data"], "seed": cfg["seed"]}, out)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        blob = load_torch(out / f"{split}.pt")
        save_torch(out / f"{split}.pt", {"x": blob["x"][:n].clone(), "y": blob["y"][:n].clone()})
    return out


def train_config() -> dict:
    cfg = base_config()
    cfg["train"].update(epochs=2, batch_size=64)
    cfg["macer"].update(m=2)
    return cfg


SPEC = ModelSpec("macer", "fixed", "l2", 0.25, ("cohen",))
METRICS = ["epoch", "lr", "train_loss", "train_acc", "test_clean_acc", "test_noisy_acc"]


def killed_training(cfg, data, out, monkeypatch):
    """Train until the first epoch's checkpoint is written, then die in the second epoch."""
    real, saved = train_mod.save_torch, []

    def save_then_die(path, obj):
        if saved:
            raise Killed()
        saved.append(path)
        real(path, obj)

    monkeypatch.setattr(train_mod, "save_torch", save_then_die)
    with pytest.raises(Killed):
        train(cfg, SPEC, data, out, "cpu", progress=False)
    monkeypatch.setattr(train_mod, "save_torch", real)
    assert load_torch(out / "checkpoint.pt")["epoch"] == 1 and not (out / "model.pt").exists()
    return load_torch(out / "checkpoint.pt")["history"]


def same_model(a: Path, b: Path) -> bool:
    sa, sb = load_torch(a / "model.pt")["state_dict"], load_torch(b / "model.pt")["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


TRAIN_CHANGES = [
    (None, None, None),
    ("macer.lbd", 2.0, "other settings (macer.lbd: 1.0 → 2.0)"),
    ("train.lr", 0.02, "other settings (train.lr: 0.05 → 0.02)"),
    ("seed", 3, "other settings (seed: 0 → 3)"),
]


@pytest.mark.parametrize("key,value,why", TRAIN_CHANGES, ids=["unchanged"] + [c[0] for c in TRAIN_CHANGES[1:]])
def test_training_resumes_only_under_the_same_settings(train_data, tmp_path, monkeypatch, capsys, key, value, why):
    cfg = train_config()
    new = changed(cfg, key, value) if key else cfg
    straight = train(new, SPEC, train_data, tmp_path / "straight", "cpu", progress=False)
    out = tmp_path / "m"
    first = killed_training(cfg, train_data, out, monkeypatch)
    capsys.readouterr()
    resumed = train(new, SPEC, train_data, out, "cpu", progress=False)
    err = capsys.readouterr().err.splitlines()
    assert resumed[METRICS].equals(straight[METRICS])
    assert same_model(out, tmp_path / "straight")
    if key is None:
        assert err == [] and resumed.iloc[0].to_dict() == first[0], "epoch 1 was trained again"
    else:
        assert err == [f"resume: {out / 'checkpoint.pt'} was trained with {why}; training from scratch"]
        assert resumed.iloc[0]["time"] != first[0]["time"], "epoch 1 was not trained again"


def test_training_from_scratch_without_a_fingerprint_or_past_the_epochs(train_data, tmp_path, monkeypatch, capsys):
    cfg = train_config()
    straight = train(cfg, SPEC, train_data, tmp_path / "straight", "cpu", progress=False)
    out = tmp_path / "m"
    killed_training(cfg, train_data, out, monkeypatch)
    blob = load_torch(out / "checkpoint.pt")
    del blob["fingerprint"]  # an older version's checkpoint
    save_torch(out / "checkpoint.pt", blob)
    capsys.readouterr()
    resumed = train(cfg, SPEC, train_data, out, "cpu", progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out / 'checkpoint.pt'} has no fingerprint (written by an older version, or damaged); training from scratch"
    ]
    assert resumed[METRICS].equals(straight[METRICS]) and same_model(out, tmp_path / "straight")
    # a checkpoint of a longer run (train.epochs lowered since): train the configured epochs from scratch
    one = changed(cfg, "train.epochs", 1)
    short = train(one, SPEC, train_data, tmp_path / "short", "cpu", progress=False)
    capsys.readouterr()
    again = train(one, SPEC, train_data, out, "cpu", progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out / 'checkpoint.pt'} is at epoch 2, past train.epochs = 1; training from scratch"
    ]
    assert again[METRICS].equals(short[METRICS]) and same_model(out, tmp_path / "short")


# ------------------------------------------------------------------ video


def test_clip_model_resumes_under_the_train_loop_and_trains_again_with_one_line(tmp_path, monkeypatch, capsys):
    """The clip model is trained by the train loop: same settings resume (no epoch redone, same model.pt bytes);
    another video.train setting trains again, saying which in one line."""
    from smoothcert.pipeline import clips

    cfg = base_config()
    cfg["video"].update(frames=4, canvas=10, window=2, methods=["cohen"])
    cfg["video"]["train"]["epochs"] = 1
    cfg["test"].update(start=0, step=1, limit=1)
    cfg["certify"].update(n0=10, n=100, batch_size=200, chunk=100)
    out = tmp_path / "sigma-0.25"
    clips_of = clips.moving_digits
    monkeypatch.setattr(clips, "moving_digits", lambda c: tuple(t[:96] for t in clips_of(c)))  # a few clips
    clips.run_video(cfg, 0.25, out, "cpu", progress=False)
    first = (out / "model.pt").read_bytes()
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise Killed()

    real = clips.training.recipe
    monkeypatch.setattr(clips.training, "recipe", lambda *a: dataclasses.replace(real(*a), objective=no_training))
    clips.run_video(cfg, 0.25, out, "cpu", progress=False)  # resumed at its last epoch: no batch trained
    assert (out / "model.pt").read_bytes() == first and capsys.readouterr().err == ""
    cfg["video"]["train"]["lr"] = 0.001
    with pytest.raises(Killed):  # reached the retraining
        clips.run_video(cfg, 0.25, out, "cpu", progress=False)
    assert capsys.readouterr().err.splitlines() == [
        f"resume: {out / 'checkpoint.pt'} was trained with other settings (video.train.lr: 0.003 → 0.001); "
        "training from scratch"
    ]
