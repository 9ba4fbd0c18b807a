"""Bad input, faults and hostile files: the CLI fails cleanly, or (soundness first) refuses to certify.

Every case runs a ``smoothcert`` subcommand and checks the contract of ``smoothcert.cli``:
exit status 2, exactly one line on stderr that names the problem, no traceback, and no
output (nor temporary file) left behind. Most cases call ``smoothcert.cli.main`` in-process
(an exception escaping it fails the test with its traceback); a few run the installed
console script to check the same from a real process. docs/bad_inputs.md lists every case.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from smoothcert import data as data_mod
from smoothcert.cli import main
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import certify_batch, predict_batch
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling
from smoothcert.training.loop import make_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "smoothcert"
MODEL = "gaussian-fixed-l2-0.25"
LIMIT = 12


# ---------------------------------------------------------------------------------------- helpers


def run_cli(*argv: str) -> tuple[int, str]:
    """``smoothcert argv`` in-process: (exit status, stderr). Unexpected exceptions propagate."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, err.getvalue()


def leftovers(*paths: Path) -> list[str]:
    """Outputs (or their temporary / .part siblings) that exist although the command failed."""
    found = []
    for p in map(Path, paths):
        if p.exists():
            found.append(str(p))
        if p.parent.is_dir():
            found += [str(q) for q in p.parent.glob(f".{p.name}.*.tmp")]
            found += [str(q) for q in p.parent.glob(f"{p.name}.part")]
    return found


def fails(*argv, match: str, outputs=()) -> str:
    """Assert the command fails cleanly with one stderr line matching ``match``; return that line."""
    rc, err = run_cli(*argv)
    lines = err.strip().splitlines()
    assert rc == 2, f"exit status {rc}, stderr: {err!r}"
    assert len(lines) == 1, f"expected one stderr line, got: {err!r}"
    assert "Traceback" not in err
    assert re.search(match, lines[0]), f"{match!r} not in {lines[0]!r}"
    assert not leftovers(*outputs), f"partial outputs left: {leftovers(*outputs)}"
    return lines[0]


def tiny_config(**overrides) -> dict:
    cfg = yaml.safe_load((REPO / "params.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["data"].update(dataset="digits", root="raw", download=False)
    cfg["test"].update(start=0, step=1, limit=LIMIT, shards=1)
    cfg["train"].update(epochs=1, batch_size=256)
    cfg["ddrs"].update(iterations=2, samples=4)  # unwritable-output cases run these before they fail
    cfg["ancer"].update(iterations=2, samples=4)
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["cohen", "ddrs"]}
    ]
    cfg["certify"].update(n0=20, n=100, alpha=0.01, batch_size=500, chunk=100)
    for key, value in overrides.items():
        cfg[key].update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    return cfg


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


class WS:
    """A workspace: config, prepared digits, an (untrained) checkpoint, θ and certify tables."""

    def __init__(self, root: Path):
        self.root = root
        self.cfg = tiny_config()
        self.config = write_config(root / "cfg.yaml", self.cfg)
        self.data = root / "data"
        data_mod.prepare({**self.cfg["data"], "seed": 0}, self.data)
        torch.manual_seed(0)
        self.state = make_model(self.cfg).state_dict()
        self.ckpt = root / "model.pt"
        torch.save({"arch": "digits_cnn", "state_dict": self.state}, self.ckpt)
        self.idx = np.arange(LIMIT)
        self.theta = root / "theta.pt"
        self.save_theta(self.theta)
        self.results = root / "results"
        self.cohen = self.results / MODEL / "cohen" / "certify.tsv"
        self.ddrs = self.results / MODEL / "ddrs" / "certify.tsv"
        assert run_cli(*self.certify_args(self.cohen)) == (0, "")
        assert run_cli(*self.certify_args(self.ddrs, "ddrs", "--theta", self.theta)) == (0, "")
        assert (
            run_cli(*self.memory_args(self.ddrs, self.ddrs.with_name("final.tsv"), self.ddrs.with_name("memory.npz")))[
                0
            ]
            == 0
        )

    def save_theta(self, path: Path, **change) -> Path:
        blob = {
            "idx": torch.from_numpy(self.idx),
            "theta": torch.full((LIMIT, 64), 0.25),
            "time": torch.zeros(LIMIT, dtype=torch.float64),
            "evals": torch.zeros(LIMIT, dtype=torch.int64),
        }
        blob.update(change)
        torch.save(blob, path)
        return path

    def certify_args(self, out, method="cohen", *extra, ckpt=None, data=None, config=None):
        return (
            "--config",
            config or self.config,
            "certify",
            "--no-progress",
            "--model",
            MODEL,
            "--checkpoint",
            ckpt or self.ckpt,
            "--data",
            data or self.data,
            "--method",
            method,
            "--out",
            out,
            *extra,
        )

    def memory_args(self, certified, out_table, out_memory, theta=None):
        return (
            "--config",
            self.config,
            "memory-check",
            "--certified",
            certified,
            "--theta",
            theta or self.theta,
            "--data",
            self.data,
            "--out-table",
            out_table,
            "--out-memory",
            out_memory,
        )


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> WS:
    return WS(tmp_path_factory.mktemp("ws"))


# ---------------------------------------------------------------------------------------- config


def _set(path: str, value):
    def change(cfg):
        *keys, last = path.split(".")
        node = cfg
        for k in keys:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return change


CONFIG_CASES = {
    "alpha = 1": (_set("certify.alpha", 1), r"certify\.alpha = 1 is not allowed; expected a number > 0 and < 1"),
    "alpha = 1.5": (_set("certify.alpha", 1.5), r"certify\.alpha = 1\.5 is not allowed"),
    "alpha = 0": (_set("certify.alpha", 0), r"certify\.alpha = 0 is not allowed"),
    "alpha < 0": (_set("certify.alpha", -0.01), r"certify\.alpha = -0\.01 is not allowed"),
    "alpha NaN": (_set("certify.alpha", float("nan")), r"certify\.alpha = nan is not allowed; numbers must be finite"),
    "sigma = 0": (_set("models.0.sigmas", [0.0]), r"models\.0\.sigmas\.0 = 0\.0 is not allowed; expected a number > 0"),
    "sigma < 0": (_set("models.0.sigmas", [-0.25]), r"models\.0\.sigmas\.0 = -0\.25 is not allowed"),
    "sigma inf": (
        _set("models.0.sigmas", [float("inf")]),
        r"models\.0\.sigmas\.0 = inf is not allowed; numbers must be finite",
    ),
    "N0 = 0": (_set("certify.n0", 0), r"certify\.n0 = 0 is not allowed; expected a number >= 1"),
    "N = 0": (_set("certify.n", 0), r"certify\.n = 0 is not allowed; expected a number >= 1"),
    "N huge": (_set("certify.n", 10**12), r"certify\.n = 1000000000000 is not allowed; expected at most"),
    "shards = 0": (_set("test.shards", 0), r"test\.shards = 0 is not allowed; expected a number >= 1"),
    "limit = 0": (_set("test.limit", 0), r"test\.limit = 0 is not allowed"),
    "batch_size = 0": (_set("certify.batch_size", 0), r"certify\.batch_size = 0 is not allowed"),
    "unknown dataset": (
        _set("data.dataset", "svhn"),
        r"data\.dataset = 'svhn' is not allowed; expected one of \['digits'",
    ),
    "unknown arch": (_set("model.arch", "vgg16"), r"model\.arch = 'vgg16' is not allowed; expected one of"),
    "unknown method": (_set("models.0.methods", ["cohen", "magic"]), r"models\.0\.methods\.1 = 'magic' is not allowed"),
    "unknown norm": (
        _set("models.0.norm", "linf"),
        r"models\.0\.norm = 'linf' is not allowed; expected one of \['l2', 'l1'\]",
    ),
    "unknown objective": (_set("models.0.objective", "trades"), r"models\.0\.objective = 'trades' is not allowed"),
    "unknown key (top level)": (_set("sede", 1), r"\(top level\): unknown key\(s\) \['sede'\]; allowed keys: \["),
    "unknown key (nested)": (_set("certify.alhpa", 0.1), r"certify: unknown key\(s\) \['alhpa'\]"),
    "missing section": (_set("certify", KeyError), r"'certify' is a required property"),
    "missing key": (_set("certify.alpha", KeyError), r"certify: 'alpha' is a required property"),
    "wrong type (str for int)": (
        _set("certify.n", "1000"),
        r"certify\.n = '1000' is not allowed; expected type integer",
    ),
    "wrong type (float for int)": (_set("seed", 1.5), r"seed = 1\.5 is not allowed; expected type integer"),
    "wrong type (str for bool)": (
        _set("data.download", "yes"),
        r"data\.download = 'yes' is not allowed; expected type boolean",
    ),
    "wrong type (list for dict)": (_set("certify", [1, 2]), r"certify = \[1, 2\] is not allowed; expected type object"),
    "seed too large": (_set("seed", 2**40), r"seed = 1099511627776 is not allowed"),
    "models empty": (_set("models", []), r"models: \[\] should be non-empty"),
    "duplicate model": (lambda c: c["models"].append(copy.deepcopy(c["models"][0])), r"models lists the same"),
    "imagenet root missing": (
        lambda c: c["data"].update(dataset="imagenet", root="no/such/imagenet", download=False),
        r"data\.root = 'no/such/imagenet' does not exist; imagenet needs train/ and val/",
    ),
    "download root with ..": (
        _set("data.root", "../outside"),
        r"data\.root = '\.\./outside' is not allowed with download: true",
    ),
    "download root with inner ..": (
        _set("data.root", "data/../../x"),
        r"data\.root = 'data/\.\./\.\./x' is not allowed",
    ),
    "download root absolute": (
        _set("data.root", "/tmp/elsewhere"),
        r"data\.root = '/tmp/elsewhere' is not allowed with download: true",
    ),
    "download root in home": (_set("data.root", "~/data"), r"data\.root = '~/data' is not allowed"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config(tmp_path, case):
    change, match = CONFIG_CASES[case]
    cfg = tiny_config(data={"download": True})
    change(cfg)
    path = write_config(tmp_path / "bad.yaml", cfg)
    fails("--config", path, "validate", match=rf"^smoothcert validate: error: {re.escape(str(path))}: .*{match}")


def test_bad_config_stops_every_stage_before_it_writes(tmp_path, ws):
    path = write_config(tmp_path / "bad.yaml", tiny_config(certify={"alpha": 1}))
    out = tmp_path / "out"
    common = ("--model", MODEL, "--data", ws.data)
    for argv in (
        ("prepare-data", "--out", out / "d"),
        ("train", *common, "--out", out / "m"),
        ("optimize-sigma", *common, "--checkpoint", ws.ckpt, "--method", "ddrs", "--out", out / "t.pt"),
        ("certify", *common, "--checkpoint", ws.ckpt, "--method", "cohen", "--out", out / "c.tsv"),
        (
            "memory-check",
            "--certified",
            ws.ddrs,
            "--theta",
            ws.theta,
            "--data",
            ws.data,
            "--out-table",
            out / "f.tsv",
            "--out-memory",
            out / "m.npz",
        ),
        ("report", "--results", ws.results, "--out", out / "r", "--no-plots"),
        ("video", "--sigma", "0.25", "--out", out / "v"),
    ):
        fails("--config", path, *argv, match=r"certify\.alpha = 1 is not allowed")
    assert not out.exists()


@pytest.mark.parametrize(
    "text,match",
    [
        ("", r"the file is empty; expected a mapping"),
        ("- 1\n- 2\n", r"\(top level\) = \[1, 2\] is not allowed; expected type object"),
        ("certify: [1,\n", r"not valid YAML"),
        ("seed: 0\nseed: 1\n\tbad", r"not valid YAML"),
    ],
)
def test_unreadable_config(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    fails("--config", path, "validate", match=match)


def test_missing_config(tmp_path):
    fails("--config", tmp_path / "nope.yaml", "validate", match=r"config file not found: .*nope\.yaml")


def test_yaml_tags_cannot_run_code(tmp_path):
    """A python/object tag in the config would call os.system under yaml.load; safe_load refuses it."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'seed: !!python/object/apply:os.system ["touch {marker}"]\n')
    fails("--config", path, "validate", match=r"not valid YAML \(could not determine a constructor")
    assert not marker.exists()


def test_relative_and_read_only_roots_are_accepted(tmp_path):
    ok = [
        tiny_config(data={"root": "data/raw", "download": True}),
        tiny_config(data={"root": "/datasets/cifar10", "download": False}),
    ]
    for i, cfg in enumerate(ok):
        rc, err = run_cli("--config", write_config(tmp_path / f"ok{i}.yaml", cfg), "validate")
        assert (rc, err) == (0, "")


# ---------------------------------------------------------------------------------------- arguments


def _subcommand_cases(ws_paths):
    c, ck, d, th = ws_paths
    per_shard = ["--model", MODEL, "--checkpoint", ck, "--data", d]
    return {
        "no subcommand": ([], r"^smoothcert: error: the following arguments are required: command"),
        "unknown subcommand": (["frobnicate"], r"invalid choice: 'frobnicate'"),
        "unknown option": (["validate", "--frobnicate"], r"unrecognized arguments: --frobnicate"),
        **{
            f"{cmd}: missing required": ([cmd], rf"^smoothcert {cmd}: error: the following arguments are required: ")
            for cmd in (
                "certify",
                "compare-paper",
                "gather",
                "memory-check",
                "optimize-sigma",
                "prepare-data",
                "report",
                "train",
                "video",
            )
        },
        "certify --shard 3-of-2": (
            ["certify", *per_shard, "--method", "cohen", "--shard", "3-of-2", "--out", "{out}"],
            r"shard '3-of-2': need 0 <= i < n",
        ),
        "certify --shard 0-of-0": (
            ["certify", *per_shard, "--method", "cohen", "--shard", "0-of-0", "--out", "{out}"],
            r"shard '0-of-0': need 0 <= i < n",
        ),
        "certify --shard=-1-of-2": (
            ["certify", *per_shard, "--method", "cohen", "--shard=-1-of-2", "--out", "{out}"],
            r"shard '-1-of-2': need 0 <= i < n",
        ),
        "certify --shard abc": (
            ["certify", *per_shard, "--method", "cohen", "--shard", "abc", "--out", "{out}"],
            r"shard 'abc' is not of the form i-of-n",
        ),
        "optimize-sigma --shard 2-of-2": (
            ["optimize-sigma", *per_shard, "--method", "ddrs", "--shard", "2-of-2", "--out", "{out}"],
            r"shard '2-of-2': need 0 <= i < n",
        ),
        "certify --threads 0": (
            ["certify", "--threads", "0", *per_shard, "--method", "cohen", "--out", "{out}"],
            r"argument --threads: 0 must be >= 1",
        ),
        "train --threads -2": (
            ["train", "--threads=-2", "--model", MODEL, "--data", d, "--out", "{out}"],
            r"argument --threads: -2 must be >= 1",
        ),
        "optimize-sigma --threads x": (
            ["optimize-sigma", "--threads", "x", *per_shard, "--method", "ddrs", "--out", "{out}"],
            r"argument --threads: 'x' is not an integer",
        ),
        "video --threads 0": (
            ["video", "--threads", "0", "--sigma", "0.25", "--out", "{out}"],
            r"--threads: 0 must be >= 1",
        ),
        "certify --method bogus": (
            ["certify", *per_shard, "--method", "bogus", "--out", "{out}"],
            r"argument --method: invalid choice: 'bogus'",
        ),
        "optimize-sigma --method cohen": (
            ["optimize-sigma", *per_shard, "--method", "cohen", "--out", "{out}"],
            r"argument --method: invalid choice: 'cohen'",
        ),
        "certify unknown --model": (
            [
                "certify",
                "--model",
                "nope-fixed-l2-1",
                "--checkpoint",
                ck,
                "--data",
                d,
                "--method",
                "cohen",
                "--out",
                "{out}",
            ],
            r"model 'nope-fixed-l2-1' is not in the config",
        ),
        "train unknown --model": (
            ["train", "--model", "x", "--data", d, "--out", "{out}"],
            r"model 'x' is not in the config",
        ),
        "certify ddrs without --theta": (
            ["certify", *per_shard, "--method", "ddrs", "--out", "{out}"],
            r"method ddrs needs --theta",
        ),
        "optimize-sigma ancer without --init": (
            ["optimize-sigma", *per_shard, "--method", "ancer", "--out", "{out}"],
            r"method ancer needs --init",
        ),
        "optimize-sigma ddrs with --init": (
            ["optimize-sigma", *per_shard, "--method", "ddrs", "--init", th, "--out", "{out}"],
            r"--init is only for a method that starts from another",
        ),
        "video --sigma abc": (
            ["video", "--sigma", "abc", "--out", "{out}"],
            r"argument --sigma: invalid float value: 'abc'",
        ),
        "video --sigma 0": (["video", "--sigma", "0", "--out", "{out}"], r"video: sigma = 0\.0 must be > 0"),
        "video --sigma nan": (["video", "--sigma", "nan", "--out", "{out}"], r"video: sigma = nan must be > 0"),
        "video --sigma inf": (
            ["video", "--sigma", "inf", "--out", "{out}"],
            r"video: sigma = inf must be > 0 and finite",
        ),
        "report --import without =": (
            ["report", "--results", "{results}", "--out", "{out}", "--no-plots", "--import", "bad"],
            r"--import 'bad': expected NAME=PATH",
        ),
        "report --import missing file": (
            ["report", "--results", "{results}", "--out", "{out}", "--no-plots", "--import", "x=nowhere.tsv"],
            r"imported table x not found: nowhere\.tsv",
        ),
        "report missing results": (
            ["report", "--results", "{out}", "--out", "{out}/r", "--no-plots"],
            r"certificate table of gaussian-fixed-l2-0.25/cohen not found",
        ),
        "compare-paper missing summary": (
            ["compare-paper", "--summary", "nowhere.csv", "--out", "{out}"],
            r"summary not found: nowhere\.csv",
        ),
        "gather missing shard": (["gather", "nowhere.tsv", "--out", "{out}"], r"shard table not found: nowhere\.tsv"),
    }


SUBCOMMAND_CASES = list(_subcommand_cases(("c", "k", "d", "t")))


@pytest.mark.parametrize("case", SUBCOMMAND_CASES)
def test_bad_arguments(ws, tmp_path, case):
    argv, match = _subcommand_cases((ws.config, ws.ckpt, ws.data, ws.theta))[case]
    out = tmp_path / "out"
    argv = [str(a).format(out=out, results=ws.results) for a in argv]
    fails("--config", ws.config, *argv, match=match, outputs=[out])
    assert not out.exists()


# ---------------------------------------------------------------------------------------- checkpoints


def test_missing_checkpoint(ws, tmp_path):
    out = tmp_path / "c.tsv"
    fails(*ws.certify_args(out, ckpt=tmp_path / "none.pt"), match=r"checkpoint not found: .*none\.pt", outputs=[out])


@pytest.mark.parametrize(
    "kind,match",
    [
        ("truncated", r"cannot load checkpoint .*: truncated, corrupt or not a torch file"),
        ("empty", r"cannot load checkpoint .*: the file is empty"),
        ("random bytes", r"cannot load checkpoint .*: truncated, corrupt or not a torch file"),
        ("a tensor", r"checkpoint .* has no state_dict"),
        ("state_dict not a mapping", r"state_dict is not a mapping of names to tensors"),
        ("another arch", r"checkpoint .* is for arch 'cifar_resnet20', the config says 'digits_cnn'"),
        (
            "another arch, mislabelled",
            r"does not fit digits_cnn for digits \(wrong class count or shapes\): Missing key",
        ),
        ("5 classes", r"does not fit digits_cnn .*size mismatch for 1\.head\.3\.weight"),
        ("missing key", r"does not fit digits_cnn .*Missing key\(s\) in state_dict: \"0\.mean\""),
        ("NaN weights", r"holds NaN or inf values in \['1\.features\.0\.weight'.*refusing to certify"),
        ("inf bias", r"holds NaN or inf values in \['1\.head\.3\.bias'\]"),
    ],
)
def test_bad_checkpoint(ws, tmp_path, kind, match):
    from smoothcert.training.models import build_model

    path = tmp_path / "bad.pt"
    raw = ws.ckpt.read_bytes()
    state = {k: v.clone() for k, v in ws.state.items()}
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "a tensor":
        torch.save(torch.zeros(3), path)
    elif kind == "state_dict not a mapping":
        torch.save({"arch": "digits_cnn", "state_dict": [torch.zeros(1)]}, path)
    elif kind.startswith("another arch"):
        resnet = build_model("cifar_resnet20", 3, 10, 32, [0.5] * 3, [0.25] * 3)
        label = "digits_cnn" if "mislabelled" in kind else "cifar_resnet20"
        torch.save({"arch": label, "state_dict": resnet.state_dict()}, path)
    elif kind == "5 classes":
        torch.save(
            {"arch": "digits_cnn", "state_dict": build_model("digits_cnn", 1, 5, 8, [0.3], [0.4]).state_dict()}, path
        )
    elif kind == "missing key":
        del state["0.mean"]
        torch.save({"arch": "digits_cnn", "state_dict": state}, path)
    elif kind == "NaN weights":
        for k in state:
            if k.endswith("weight"):
                state[k].fill_(float("nan"))
        torch.save({"arch": "digits_cnn", "state_dict": state}, path)
    elif kind == "inf bias":
        state["1.head.3.bias"][3] = float("inf")
        torch.save({"arch": "digits_cnn", "state_dict": state}, path)
    out = tmp_path / "c.tsv"
    fails(*ws.certify_args(out, ckpt=path), match=match, outputs=[out])
    # the same loader guards optimize-sigma
    fails(
        "--config",
        ws.config,
        "optimize-sigma",
        "--model",
        MODEL,
        "--checkpoint",
        path,
        "--data",
        ws.data,
        "--method",
        "ddrs",
        "--out",
        tmp_path / "t.pt",
        match=match,
        outputs=[tmp_path / "t.pt"],
    )


class _Payload:
    """Unpickling this calls os.system: a checkpoint that runs code when loaded carelessly."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch.save", "raw pickle"])
def test_code_running_checkpoint_is_refused(ws, tmp_path, container):
    marker = tmp_path / "pwned"
    blob = {"arch": "digits_cnn", "state_dict": _Payload(marker)}
    # the payload is live: plain unpickling runs it
    pickle.loads(pickle.dumps(blob))
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "evil.pt"
    if container == "torch.save":
        torch.save(blob, path)
        match = r"it names posix\.system, which would run code .*refused \(loaded with weights_only=True\)"
    else:
        path.write_bytes(pickle.dumps(blob))
        match = r"cannot load checkpoint .*evil\.pt: "
    out = tmp_path / "c.tsv"
    fails(*ws.certify_args(out, ckpt=path), match=match, outputs=[out])
    assert not marker.exists(), "unpickling the checkpoint ran code"


def test_code_running_resume_checkpoint_is_refused(ws, tmp_path):
    """train resumes from OUT/checkpoint.pt: a hostile one is refused the same way."""
    marker = tmp_path / "pwned"
    out = tmp_path / "m"
    out.mkdir()
    torch.save({"arch": "digits_cnn", "epoch": 0, "state_dict": _Payload(marker)}, out / "checkpoint.pt")
    fails(
        "--config",
        ws.config,
        "train",
        "--no-progress",
        "--model",
        MODEL,
        "--data",
        ws.data,
        "--out",
        out,
        match=r"cannot load checkpoint .*checkpoint\.pt: it names posix\.system",
        outputs=[out / "model.pt"],
    )
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- NaN / inf outputs


def test_overflowing_weights_never_yield_certificates(ws, tmp_path):
    """Finite weights × 1e12 overflow to NaN logits. Those must not become certificates.

    ``engine.sampling.count_classes`` lets a draw with non-finite logits vote for no class, so nA stays 0 and
    every input abstains.
    """
    state = {k: v * 1e12 if k.endswith("weight") else v for k, v in ws.state.items()}
    path = tmp_path / "huge.pt"
    torch.save({"arch": "digits_cnn", "state_dict": state}, path)
    out = tmp_path / "c.tsv"
    rc, err = run_cli(*ws.certify_args(out, ckpt=path))
    if rc == 0:
        table = pd.read_csv(out, sep="\t")
        certified = table[table["predict"] >= 0]
        assert certified.empty, f"{len(certified)} certificates from a model whose logits are NaN"
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "NaN" in err and not leftovers(out)


class _NaNLogits(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 3), float("nan"))


class _HalfNaN(torch.nn.Module):
    """Class 2 when the first pixel's noise is positive, else NaN logits (argmax would say class 0)."""

    def forward(self, x):
        s = x.flatten(1)[:, 0]
        out = torch.full((x.shape[0], 3), float("nan"))
        out[s > 0] = torch.tensor([0.0, 0.0, 1.0])
        return out


@pytest.mark.parametrize("model", [_NaNLogits(), _HalfNaN()], ids=["all NaN", "half NaN"])
def test_core_abstains_on_nan_logits(model):
    """Soundness first: a draw whose logits are not finite cannot count for any class."""
    x = torch.zeros(4, 1, 2, 2)
    seeds = [stream_seed(0, i, "select") for i in range(4)]
    seeds2 = [stream_seed(0, i, "estimate") for i in range(4)]
    out = certify_batch(model, x, 0.5, 3, 50, 2000, 0.01, "l2", seeds, seeds2, Sampling(batch_size=1000))
    assert (out["predict"] == ABSTAIN).all(), out
    pred = predict_batch(model, x, 0.5, 3, 2000, 0.01, seeds2, Sampling(batch_size=1000))
    assert (pred == ABSTAIN).all(), pred


# ---------------------------------------------------------------------------------------- data


@pytest.mark.parametrize(
    "kind,match",
    [
        ("missing folder", r"digits test data not found: .*nowhere/test\.pt"),
        ("empty folder", r"digits test data not found: .*/test\.pt"),
        ("wrong image shape", r"holds images of shape \(1, 16, 16\), expected \(1, 8, 8\) for digits"),
        ("wrong channels", r"holds images of shape \(3, 8, 8\), expected \(1, 8, 8\)"),
        ("no images", r"is empty or has mismatched x and y"),
        ("x and y lengths differ", r"is empty or has mismatched x and y"),
        ("not tensors", r"x and y must be tensors"),
        ("no y", r"is not a prepared dataset \(needs x and y\)"),
        ("label out of range", r"label 12 is outside 0\.\.9 for digits"),
        ("float labels", r"labels y must be integers"),
        ("NaN pixel", r"pixels hold NaN or inf"),
        ("pixels in 0..255 as float", r"float pixels span \[0, 255\], expected \[0, 1\]"),
    ],
)
def test_bad_dataset(ws, tmp_path, kind, match):
    folder = tmp_path / "nowhere" if kind == "missing folder" else tmp_path / "d"
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    blob = {"x": x, "y": y}
    if kind == "wrong image shape":
        blob["x"] = torch.rand(20, 1, 16, 16)
    elif kind == "wrong channels":
        blob["x"] = torch.rand(20, 3, 8, 8)
    elif kind == "no images":
        blob = {"x": torch.rand(0, 1, 8, 8), "y": torch.zeros(0, dtype=torch.long)}
    elif kind == "x and y lengths differ":
        blob["y"] = y[:5]
    elif kind == "not tensors":
        blob = {"x": x.tolist(), "y": y.tolist()}
    elif kind == "no y":
        blob = {"x": x}
    elif kind == "label out of range":
        blob["y"] = torch.full((20,), 12)
    elif kind == "float labels":
        blob["y"] = y.float()
    elif kind == "NaN pixel":
        x[3, 0, 2, 2] = float("nan")
    elif kind == "pixels in 0..255 as float":
        x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 255.0
    if kind not in ("missing folder",):
        folder.mkdir()
    if kind not in ("missing folder", "empty folder"):
        torch.save(blob, folder / "test.pt")
        torch.save(blob, folder / "train.pt")
    out = tmp_path / "c.tsv"
    fails(*ws.certify_args(out, data=folder), match=match, outputs=[out])
    if kind not in ("missing folder", "empty folder"):
        fails(
            "--config",
            ws.config,
            "train",
            "--no-progress",
            "--model",
            MODEL,
            "--data",
            folder,
            "--out",
            tmp_path / "m",
            match=match,
            outputs=[tmp_path / "m" / "checkpoint.pt"],
        )


def test_cifar10_checksum_mismatch_is_refused_before_unpickling(tmp_path, monkeypatch):
    """torchvision's CIFAR-10 batches are pickles: unverified files must never be unpickled."""
    marker = tmp_path / "pwned"
    raw = tmp_path / "raw" / "cifar-10-batches-py"
    raw.mkdir(parents=True)
    payload = pickle.dumps({"data": _Payload(marker), "labels": [0]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (raw / name).write_bytes(payload)
    monkeypatch.chdir(tmp_path)
    cfg = write_config(
        tmp_path / "c.yaml",
        tiny_config(data={"dataset": "cifar10", "root": "raw", "download": False, "verify_checksums": True}),
    )
    fails(
        "--config",
        cfg,
        "prepare-data",
        "--out",
        tmp_path / "prep",
        match=r"cifar10 not found or corrupt",
        outputs=[tmp_path / "prep" / "train.pt", tmp_path / "prep" / "test.pt"],
    )
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- θ files


@pytest.mark.parametrize(
    "kind,match",
    [
        ("missing", r"theta file not found"),
        ("truncated", r"cannot load theta file .*truncated, corrupt or not a torch file"),
        ("wrong dimension", r"has θ of shape \(12, 63\), expected \(12, 64\)"),
        ("wrong rows", r"has θ of shape \(11, 64\), expected \(12, 64\)"),
        ("1-D", r"has θ of shape \(12,\), expected \(12, 64\)"),
        ("another shard", r"is for test inputs \[1, 2, 3\]\.\.\., this shard certifies \[0, 1, 2\]"),
        ("NaN", r"holds NaN, inf or non-positive values"),
        ("inf", r"holds NaN, inf or non-positive values"),
        ("zero", r"holds NaN, inf or non-positive values"),
        ("negative", r"holds NaN, inf or non-positive values"),
        ("idx not a tensor", r"idx is not a tensor"),
        ("no theta", r"needs idx and theta"),
        ("time of wrong length", r"time has shape \(3,\), expected \(12,\)"),
    ],
)
def test_bad_theta(ws, tmp_path, kind, match):
    path = tmp_path / "theta.pt"
    theta = torch.full((LIMIT, 64), 0.25)
    if kind in ("NaN", "inf", "zero", "negative"):
        theta[4, 7] = {"NaN": float("nan"), "inf": float("inf"), "zero": 0.0, "negative": -0.1}[kind]
    change = {"theta": theta}
    if kind == "wrong dimension":
        change["theta"] = torch.full((LIMIT, 63), 0.25)
    elif kind == "wrong rows":
        change["theta"] = torch.full((LIMIT - 1, 64), 0.25)
    elif kind == "1-D":
        change["theta"] = torch.full((LIMIT,), 0.25)
    elif kind == "another shard":
        change["idx"] = torch.arange(1, LIMIT + 1)
    elif kind == "idx not a tensor":
        change["idx"] = list(range(LIMIT))
    elif kind == "time of wrong length":
        change["time"] = torch.zeros(3)
    if kind != "missing":
        ws.save_theta(path, **change)
    if kind == "no theta":
        torch.save({"idx": torch.arange(LIMIT)}, path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    out = tmp_path / "c.tsv"
    fails(*ws.certify_args(out, "ddrs", "--theta", path), match=match, outputs=[out])
    # optimize-sigma reads the ddrs θ as ancer's starting point through the same loader
    if kind not in ("time of wrong length",):
        fails(
            "--config",
            ws.config,
            "optimize-sigma",
            "--model",
            MODEL,
            "--checkpoint",
            ws.ckpt,
            "--data",
            ws.data,
            "--method",
            "ancer",
            "--init",
            path,
            "--out",
            tmp_path / "a.pt",
            match=match,
            outputs=[tmp_path / "a.pt"],
        )


def test_memory_check_rejects_mismatched_theta(ws, tmp_path):
    path = ws.save_theta(tmp_path / "t.pt", theta=torch.full((LIMIT, 63), 0.25))
    out = (tmp_path / "f.tsv", tmp_path / "m.npz")
    fails(
        *ws.memory_args(ws.ddrs, *out, theta=path),
        match=r"has θ of shape \(12, 63\), expected \(12, 64\)",
        outputs=out,
    )
    nan = torch.full((LIMIT, 64), 0.25)
    nan[0, 0] = float("nan")
    path = ws.save_theta(tmp_path / "t2.pt", theta=nan)
    fails(*ws.memory_args(ws.ddrs, *out, theta=path), match=r"holds NaN, inf or non-positive values", outputs=out)


# ---------------------------------------------------------------------------------------- certify tables


def _broken_table(src: Path, dst: Path, kind: str) -> Path:
    df = pd.read_csv(src, sep="\t")
    if kind.startswith("no "):
        df = df.drop(columns=[kind[3:]])
    elif kind == "NaN gap":
        df.loc[2, "gap"] = float("nan")
    elif kind == "empty file":
        dst.write_text("")
        return dst
    elif kind == "binary":
        dst.write_bytes(bytes(range(256)) * 4)
        return dst
    df.to_csv(dst, sep="\t", index=False)
    return dst


@pytest.mark.parametrize(
    "kind,match",
    [
        ("no idx", r"lacks columns \['idx'\]"),
        ("no gap", r"lacks columns \['gap'\]"),
        ("no label", r"lacks columns \['label'\]"),
        ("NaN gap", r"has NaN or negative gaps"),
        ("empty file", r"cannot read certified table .*: No columns to parse"),
        ("binary", r"cannot read certified table .*: 'utf-8' codec can't decode"),
    ],
)
def test_memory_check_bad_table(ws, tmp_path, kind, match):
    table = _broken_table(ws.ddrs, tmp_path / "in.tsv", kind)
    out = (tmp_path / "f.tsv", tmp_path / "m.npz")
    fails(*ws.memory_args(table, *out), match=match, outputs=out)


@pytest.mark.parametrize(
    "kind,match",
    [
        ("no idx", r"shard table .* lacks columns \['idx'\]"),
        ("empty file", r"cannot read shard table .*: No columns to parse"),
        ("binary", r"cannot read shard table .*'utf-8' codec can't decode"),
    ],
)
def test_gather_bad_table(ws, tmp_path, kind, match):
    table = _broken_table(ws.cohen, tmp_path / "in.tsv", kind)
    out = tmp_path / "g.tsv"
    fails("gather", ws.cohen, table, "--out", out, match=match, outputs=[out])


def test_gather_refuses_duplicate_rows(ws, tmp_path):
    out = tmp_path / "g.tsv"
    fails(
        "gather",
        ws.cohen,
        ws.cohen,
        "--out",
        out,
        match=r"rows \[0, 1, 2, 3, 4\] appear in more than one shard",
        outputs=[out],
    )


def test_gather_refuses_shards_with_different_columns(ws, tmp_path):
    df = pd.read_csv(ws.cohen, sep="\t")
    a, b = tmp_path / "0-of-2.tsv", tmp_path / "1-of-2.tsv"
    df.iloc[:6].to_csv(a, sep="\t", index=False)
    df.iloc[6:].drop(columns=["gap"]).to_csv(b, sep="\t", index=False)
    out = tmp_path / "g.tsv"
    fails("gather", a, b, "--out", out, match=r"columns", outputs=[out])


def test_memory_check_header_only_table(ws, tmp_path):
    table = tmp_path / "in.tsv"
    pd.read_csv(ws.ddrs, sep="\t").iloc[:0].to_csv(table, sep="\t", index=False)
    out = (tmp_path / "f.tsv", tmp_path / "m.npz")
    fails(*ws.memory_args(table, *out), match=r"no rows|empty", outputs=out)


@pytest.mark.parametrize("kind", ["no radius", "no predict", "empty file"])
def test_report_bad_table(ws, tmp_path, kind):
    results = tmp_path / "results"
    shutil.copytree(ws.results, results)
    _broken_table(ws.cohen, results / MODEL / "cohen" / "certify.tsv", kind)
    out = tmp_path / "report"
    match = r"cannot read certificate table" if kind == "empty file" else rf"lacks columns \['{kind[3:]}'\]"
    fails("--config", ws.config, "report", "--results", results, "--out", out, "--no-plots", match=match)
    assert not (out / "summary.csv").exists()


# ---------------------------------------------------------------------------------------- unwritable outputs


def _unwritable(tmp_path: Path, how: str) -> Path:
    """A folder no file can be written into (root ignores permission bits)."""
    if how == "under a file":
        blocker = tmp_path / "blocker"
        blocker.write_text("a file where a folder should be")
        return blocker / "sub"
    folder = tmp_path / "frozen"
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    return folder


@pytest.fixture
def unfreeze(tmp_path):
    yield
    subprocess.run(["chattr", "-R", "-i", str(tmp_path)], capture_output=True)


@pytest.mark.parametrize("how", ["under a file", "immutable folder"])
def test_unwritable_output_is_reported(ws, tmp_path, how, unfreeze):
    where = _unwritable(tmp_path, how)
    why = r".*blocker is a file, not a folder" if how == "under a file" else r"Operation not permitted"
    common = ("--config", ws.config)
    cases = [
        (("gather", ws.cohen, "--out", where / "g.tsv"), where / "g.tsv"),
        ((*ws.certify_args(where / "c.tsv"),), where / "c.tsv"),
        ((*common, "prepare-data", "--out", where / "d"), where / "d" / "test.pt"),
        (
            (*common, "train", "--no-progress", "--model", MODEL, "--data", ws.data, "--out", where / "m"),
            where / "m" / "model.pt",
        ),
        (
            (
                *common,
                "optimize-sigma",
                "--no-progress",
                "--model",
                MODEL,
                "--checkpoint",
                ws.ckpt,
                "--data",
                ws.data,
                "--method",
                "ddrs",
                "--out",
                where / "t.pt",
            ),
            where / "t.pt",
        ),
        (ws.memory_args(ws.ddrs, where / "f.tsv", tmp_path / "m.npz"), where / "f.tsv"),
        ((*common, "report", "--results", ws.results, "--out", where / "r", "--no-plots"), where / "r" / "summary.csv"),
    ]
    for argv, out in cases:
        fails(*argv, match=rf"cannot write {re.escape(str(where))}.*: {why}", outputs=[out])


# ---------------------------------------------------------------------------------------- resume


def test_resume_from_garbage_part_file(ws, tmp_path):
    out = tmp_path / "c.tsv"
    Path(f"{out}.part").write_bytes(b"\xff\xfe not a table")
    fails(*ws.certify_args(out), match=r"cannot resume from .*c\.tsv\.part: not a text table; delete it")
    assert not out.exists() and Path(f"{out}.part").read_bytes() == b"\xff\xfe not a table"  # the user's to delete


# ---------------------------------------------------------------------------------------- security

SOURCES = sorted((REPO / "src").rglob("*.py")) + [REPO / "Snakefile"] + sorted((REPO / "workflow").rglob("*.smk"))


@pytest.mark.parametrize(
    "pattern,why",
    [
        (r"(?<![\w.])eval\s*\(", "eval() of a string"),
        (r"(?<![\w.])exec\s*\(", "exec() of a string"),
        (r"(?<![\w.])compile\s*\(", "compile() of source"),
        (r"\bpickle\.loads?\s*\(", "pickle.load runs code"),
        (r"\byaml\.(?:unsafe_)?load\s*\((?![^)]*SafeLoader)", "yaml.load can build objects; use safe_load"),
        (r"weights_only\s*=\s*False", "torch.load without weights_only"),
        (r"allow_pickle\s*=\s*True", "np.load with pickles"),
        (r"shell\s*=\s*True", "shell=True"),
        (r"\bos\.system\s*\(", "os.system"),
        (r"__import__\s*\(", "dynamic import of a string"),
    ],
)
def test_no_code_execution_from_data(pattern, why):
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in SOURCES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert not hits, f"{why}:\n" + "\n".join(hits)


def test_every_torch_load_is_weights_only():
    calls = [(p, line) for p in SOURCES for line in p.read_text().splitlines() if "torch.load(" in line]
    assert calls, "expected io.load_torch to call torch.load"
    for p, line in calls:
        assert "weights_only=True" in line, f"{p.relative_to(REPO)}: {line.strip()}"


# ---------------------------------------------------------------------------------------- a real process


@pytest.mark.parametrize(
    "device, fake, locks, match",
    [
        ("cuda", None, "locks", r"device = 'cuda' but no CUDA device is visible"),
        ("auto", "two", "locks", r"SMOOTHCERT_FAKE_GPUS = 'two' is not allowed; expected a number of GPUs >= 0"),
        ("auto", "1", "blocker/locks", r"gpu_locks = '.*blocker/locks': cannot create the folder"),
    ],
)
def test_bad_gpu_settings(ws, tmp_path, monkeypatch, device, fake, locks, match):
    """No GPU to take: one line before anything is trained (no slot is held afterwards)."""
    if torch.cuda.is_available():
        pytest.skip("checks what a machine without CUDA says")
    (tmp_path / "blocker").write_text("a file where the lock folder should be")
    monkeypatch.delenv("SMOOTHCERT_FAKE_GPUS", raising=False)
    if fake is not None:
        monkeypatch.setenv("SMOOTHCERT_FAKE_GPUS", fake)
    cfg = write_config(tmp_path / "c.yaml", {**ws.cfg, "device": device, "gpu_locks": str(tmp_path / locks)})
    out = tmp_path / "m"
    fails("--config", cfg, "train", "--model", MODEL, "--data", ws.data, "--out", out, match=match, outputs=[out])


def test_console_script_fails_cleanly(ws, tmp_path):
    """The installed entry point, not just main(): one line, exit 2, nothing written, no code run."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"arch": "digits_cnn", "state_dict": _Payload(marker)}, evil)
    out = tmp_path / "c.tsv"
    argv = [str(a) for a in ws.certify_args(out, ckpt=evil)]
    proc = subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "refused (loaded with weights_only=True)" in proc.stderr
    assert not marker.exists() and not leftovers(out)


def test_long_stages_check_their_output_before_working(ws, tmp_path):
    """An unwritable output is reported before any data, checkpoint or model is touched (here: none exist)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    missing = tmp_path / "missing"
    common = ("--config", ws.config)
    for argv in [
        (
            *common,
            "optimize-sigma",
            "--no-progress",
            "--model",
            MODEL,
            "--checkpoint",
            missing / "model.pt",
            "--data",
            missing,
            "--method",
            "ddrs",
            "--out",
            blocker / "t.pt",
        ),
        (*common, "train", "--no-progress", "--model", MODEL, "--data", missing, "--out", blocker / "m"),
        (*common, "video", "--no-progress", "--sigma", "0.25", "--out", blocker / "v"),
    ]:
        fails(*argv, match=r"cannot write .*blocker is a file, not a folder")
