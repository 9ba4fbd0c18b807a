"""The method registry is the one list of methods.

* A toy method defined in this file, registered at run time, goes through ``validate`` → ``certify`` →
  ``gather`` → ``report`` without any change to the package: its name is in the schema's enum, the CLI's
  choices and the report, and its own params.yaml section is validated by its own schema fragment.
* No registered method's name appears as a string in the package outside its own module and the registry,
  nor in the workflow rules: everything else reads the registry.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml
from torch import nn

from smoothcert import cli, config, methods
from smoothcert.engine.certify import Certified
from smoothcert.errors import SmoothcertError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "smoothcert"


class Shrink(nn.Module):
    """The base classifier on a copy of the input scaled by ``factor`` (< 1): a radius R for the scaled input
    is a radius R / factor for the input itself."""

    def __init__(self, base: nn.Module, factor: float):
        super().__init__()
        self.base, self.factor = base, factor

    def forward(self, z):
        return self.base(z)


def wrap(model, cfg, method_name, input_shape, norm=None):
    """The toy wrapper: noise is added to factor·x; since ‖factor·δ‖ = factor·‖δ‖, the radius factor is 1/factor."""
    factor = float(cfg["toy"]["factor"])
    return Certified(Shrink(model, factor), to_space=lambda x: x * factor, radius_factor=1.0 / factor)


TOY = methods.Method(
    "toy",
    "smoothing of a scaled copy of the input (a test of the registry)",
    norms=("l2",),
    section="toy",
    wrap=f"{__name__}:wrap",
    schema={
        "type": "object",
        "additionalProperties": False,
        "required": ["factor"],
        "properties": {"factor": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}},
    },
)


@pytest.fixture()
def toy():
    methods.register(TOY)
    yield TOY
    methods.unregister(TOY.name)


def _config(params: dict, tmp_path: Path) -> Path:
    cfg = copy.deepcopy(params)
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["cohen", "toy"]}
    ]
    cfg["toy"] = {"factor": 0.5}
    cfg["train"]["epochs"] = 2
    cfg["test"].update(limit=12, shards=1)
    cfg["certify"].update(n0=20, n=200)
    cfg["video"]["enabled"] = False
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_method_defined_in_a_test_runs_validate_certify_report(params, tmp_path, toy):
    path = _config(params, tmp_path)
    cfg = config.load(path)
    assert "toy" in config.schema()["definitions"]["method"]["enum"]
    bad = {**cfg, "toy": {"factor": 2.0}}
    with pytest.raises(SmoothcertError, match=r"toy.factor = 2.0 is not allowed"):
        config.validate(bad, "test")  # its own schema fragment validates its section
    with pytest.raises(SmoothcertError, match="no proven certificate"):
        config.validate({**cfg, "models": [{**cfg["models"][0], "norm": "l1"}]}, "test")  # its norms are enforced
    base = ["--config", str(path)]
    data, models, results = tmp_path / "data", tmp_path / "models", tmp_path / "results"
    assert cli.main([*base, "validate"]) == 0
    assert cli.main([*base, "prepare-data", "--out", str(data)]) == 0
    model = "gaussian-fixed-l2-0.25"
    assert (
        cli.main([*base, "train", "--model", model, "--data", str(data), "--out", str(models / model), "--no-progress"])
        == 0
    )
    tables = {}
    for method in ("cohen", "toy"):
        shard = results / model / method / "shards" / "0-of-1.tsv"
        assert (
            cli.main(
                [
                    *base,
                    "certify",
                    "--model",
                    model,
                    "--method",
                    method,
                    "--checkpoint",
                    str(models / model / "model.pt"),
                    "--data",
                    str(data),
                    "--shard",
                    "0-of-1",
                    "--out",
                    str(shard),
                    "--no-progress",
                ]
            )
            == 0
        )
        table = results / model / method / "certify.tsv"
        assert cli.main([*base, "gather", str(shard), "--out", str(table)]) == 0
        tables[method] = pd.read_csv(table, sep="\t")
    cohen, shrunk = tables["cohen"], tables["toy"]
    assert (shrunk["method"] == "toy").all() and len(shrunk) == len(cohen) == 12
    # the wrapper's certificate is the one the package computes for its space: radius = σ·gap / factor
    ok = shrunk["predict"] >= 0
    assert ok.any()
    assert (shrunk.loc[ok, "radius"] - 0.25 * shrunk.loc[ok, "gap"] / 0.5).abs().max() < 1e-9
    out = tmp_path / "report"
    assert (
        cli.main(
            [
                *base,
                "report",
                "--results",
                str(results),
                "--models",
                str(models),
                "--data",
                str(data),
                "--out",
                str(out),
                "--metrics",
                str(tmp_path / "metrics"),
                "--no-plots",
            ]
        )
        == 0
    )
    text = "\n".join(p.read_text() for p in out.rglob("*.md"))
    assert re.search(r"\btoy\b", text), "the report lists the registered method"


def test_the_cli_offers_registered_methods(toy, capsys):
    with pytest.raises(SystemExit):
        cli.main(["certify", "--help"])
    assert "toy" in capsys.readouterr().out


def _strings(path: Path) -> set[str]:
    return {
        n.value
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_no_method_name_outside_its_module_and_the_registry():
    """Code branches on registry flags, never on a method's name: names appear only in methods/ (and in
    docstrings and comments; the audit's labels name what they test, and a paper's published numbers and claims
    name the methods they are about, and the importers name the reference codebases whose tables they read)."""
    names = set(methods.names())
    allowed = {
        PACKAGE / "methods",
        PACKAGE / "audit",
        PACKAGE / "reporting" / "paper.py",
        PACKAGE / "reporting" / "claims.py",
        PACKAGE / "reporting" / "importers.py",
    }  # the papers' numbers and claims are about their methods; the importers read their reference code's tables
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if any(path == a or a in path.parents for a in allowed):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                hit = {n for n in names if re.search(rf"(?<![A-Za-z0-9]){n}(?![A-Za-z0-9])", node.value)}
                if hit:
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: {sorted(hit)}")
    for path in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        code = "\n".join(line.split("#")[0] for line in path.read_text().splitlines())
        for name in names:
            if re.search(rf"(?<![A-Za-z0-9]){name}(?![A-Za-z0-9])", code):
                offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert not offenders, "method names outside methods/: " + "; ".join(offenders)


def _imported(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.startswith("smoothcert")}


@pytest.mark.parametrize(
    "layer,never",
    [
        ("engine", ("methods", "training", "pipeline", "reporting", "commands", "cli", "config")),
        ("methods", ("training", "pipeline", "reporting", "commands", "cli")),
        ("training", ("pipeline", "reporting", "commands", "cli")),
        ("pipeline", ("reporting", "commands", "cli")),
    ],
)
def test_dependencies_point_one_way(layer, never):
    """docs/architecture.md: commands → pipeline / reporting → training → methods → engine → base."""
    for path in (PACKAGE / layer).glob("*.py"):
        bad = {
            m for m in _imported(path) if any(m == f"smoothcert.{n}" or m.startswith(f"smoothcert.{n}.") for n in never)
        }
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_nothing_imports_the_removed_engine_core():
    """The engine is engine.sampling / certify / smooth (engine/core.py, the old front door, is gone): package code,
    tests and benchmarks import the module they use, so that a stage's code closure holds only what it runs."""
    offenders = []
    for path in [*PACKAGE.rglob("*.py"), *(REPO / "tests").glob("*.py"), *(REPO / "benchmarks").glob("*.py")]:
        bad = {m for m in _imported(path) if m == "smoothcert.engine.core" or m.startswith("smoothcert.engine.core.")}
        if bad:
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"import smoothcert.engine.core (import sampling / certify / smooth instead): {offenders}"
