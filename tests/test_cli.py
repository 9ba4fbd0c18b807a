"""The command line as a user first meets it: help texts, and ``validate`` on an override file."""

from __future__ import annotations

import contextlib
import io
import subprocess

import pytest
import yaml

from smoothcert import cli
from smoothcert import config as config_mod
from test_workflow import BIN, REPO, copy_repo

COMMANDS = [n.replace("_", "-") for n in cli._names()]


def _help(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        cli.main([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_only_real_defaults(command):
    text = _help(*([command] if command else []))
    assert "usage: smoothcert" in text
    assert "(default: None)" not in text and "(default: [])" not in text, text
    assert text.count("(default:") <= text.count("\n  -"), "a default is shown twice"


def test_help_example_paths_are_the_pipelines():
    assert "e.g. data/prepared/digits" in _help("prepare-data")
    assert "report/<dataset>" not in _help("compare-paper")


def _validate(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["--config", str(REPO / "params.yaml"), "validate", *map(str, argv)])
    return rc, out.getvalue(), err.getvalue()


def test_validate_merges_an_override_over_params(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("test:\n  limit: 7\ncertify:\n  n: 123\n")
    rc, out, err = _validate("--configfile", override)
    assert rc == 0 and not err
    assert out.splitlines() == [f"{m}\t{x}" for m, x in config_mod.experiments(config_mod.load(REPO / "params.yaml"))]
    merged = config_mod.load(REPO / "params.yaml", (override,))
    base = config_mod.load(REPO / "params.yaml")
    assert merged["test"]["limit"] == 7 and merged["certify"]["n"] == 123
    assert merged["test"]["shards"] == base["test"]["shards"], "a mapping merges key by key"
    assert merged["certify"]["alpha"] == base["certify"]["alpha"]
    # the override alone is not a config (what `validate` told a user before --configfile)
    assert cli.main(["--config", str(override), "validate"]) == 2


def test_validate_refuses_a_bad_override_in_one_line(tmp_path):
    override = tmp_path / "override.yaml"
    override.write_text("certify:\n  alpha: 2\n")
    rc, out, err = _validate("--configfile", override)
    assert rc == 2 and not out
    assert len(err.strip().splitlines()) == 1
    assert f"params.yaml + {override}: certify.alpha = 2" in err, err
    override.write_text("- a list\n")
    rc, _, err = _validate("--configfile", override)
    assert rc == 2 and "an override must be a mapping" in err


@pytest.mark.slow
def test_validate_merges_as_snakemake_does(tmp_path):
    """The config ``validate --configfile`` checks is the one Snakemake hands its jobs (frozen copy)."""
    root = copy_repo(tmp_path / "repo")
    quick = REPO / "config" / "quick.yaml"
    subprocess.run(
        [str(BIN / "snakemake"), "--list-rules", "--configfile", str(quick)],
        cwd=root,
        check=True,
        capture_output=True,
    )
    (frozen,) = (root / ".smoothcert").glob("config-*.yaml")
    assert yaml.safe_load(frozen.read_text()) == config_mod.load(root / "params.yaml", (quick,))
