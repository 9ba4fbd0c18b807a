"""A report on imported tables alone (issue #22): titles and text say what the tables hold, never params.yaml's
dataset, and the seed packages' per-input-σ tables (DDRS, ANCER) sit in the panels and claims of the methods at
their σ and norm."""

from __future__ import annotations

from pathlib import Path

import pytest

from smoothcert import config as config_mod
from smoothcert.cli import main
from smoothcert.reporting import plots
from test_importers_formats import ANCER, DDRS, LOCUSLAB, _write

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset", [None, "cifar10"])
def test_import_only_page_is_about_the_tables(tmp_path, monkeypatch, dataset):
    assert config_mod.load(REPO / "params.yaml")["data"]["dataset"] == "digits"  # what must not leak
    figures = []
    monkeypatch.setattr(
        plots, "curve_panels", lambda curves, panels, path, title, **kw: figures.append((path.name, title, panels))
    )
    tables = {
        "cohen@0.25": _write(tmp_path / "cohen.tsv", LOCUSLAB, "locuslab"),
        "ddrs@0.25": _write(tmp_path / "ddrs.tsv", DDRS, "ddrs"),  # the DDRS package's layout: σ per row
        "ancer@0.25": _write(tmp_path / "ancer.tsv", ANCER, "ancer"),
        "cohen@0.5": _write(tmp_path / "cohen_05.tsv", LOCUSLAB, "locuslab"),
    }
    out = tmp_path / "report"
    argv = ["--config", str(REPO / "params.yaml"), "report", "--out", str(out), "--import"]
    argv += [f"{name}={path}" for name, path in tables.items()] + (["--dataset", dataset] if dataset else [])
    assert main(argv) == 0
    subject = f"{dataset or 'imported tables'} — cohen, ddrs, ancer at ℓ2 σ = 0.25, 0.5"
    page = (out / "page.md").read_text()
    assert page.splitlines()[0] == f"# {subject}: does it reproduce the papers?"
    assert (out / "front.rst").read_text().splitlines()[0] == f"{subject}: does it reproduce the papers?"
    for name in ("page.md", "front.rst", "summary.md", "claims.md"):
        assert "digits" not in (out / name).read_text(), name
    assert all(title.startswith(f"{dataset or 'imported tables'}: ") for _, title, _ in figures)
    # methods at one σ: the imported DDRS / ANCER (σ per input) share cohen's panel at σ = 0.25
    panels = dict(next(p for name, _, p in figures if name == "certified_accuracy_l2.png"))
    assert {label for _, label in panels["imported · σ=0.25"]} == {"cohen", "ddrs", "ancer"}
    assert not any("dd" in title for title in panels)
    # σ for one method: cohen at its two σ
    panels = dict(next(p for name, _, p in figures if name == "certified_accuracy_sigma_l2.png"))
    assert {label for _, label in panels["imported · cohen"]} == {"σ=0.25", "σ=0.5"}
    claims = (out / "claims.md").read_text()
    assert "l2 σ=0.25 ddrs vs cohen" in claims and "l2 σ=0.25 ancer vs ddrs" in claims
    assert "σ=0.5 ddrs" not in claims  # no DDRS table at σ = 0.5: nothing to pair cohen@0.5 with


def test_dataset_names_imported_tables_only(tmp_path, capsys):
    argv = ["--config", str(REPO / "params.yaml"), "report", "--results", str(tmp_path), "--dataset", "x"]
    assert main([*argv, "--out", str(tmp_path / "r")]) == 2
    assert "--dataset names the imported tables' data" in capsys.readouterr().err
