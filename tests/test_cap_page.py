"""The σ cap's effect on the results page (issue #22): a capped run's experiments beside their uncapped twins
(``smoothcert report --capped``), what a capped run may differ in, and how experiment.sh's CAP mode sets one up."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from smoothcert import config as config_mod
from smoothcert.cli import main
from smoothcert.errors import SmoothcertError
from smoothcert.reporting import cap
from test_report import FIX, L2, _args, _layout

REPO = Path(__file__).resolve().parents[1]
CAP = 0.3  # below some of the fixture's DDRS σ (0.2 … 0.35)


def _capped_table(path: Path) -> pd.DataFrame:
    """The fixture's DDRS table as if its σ had been capped: σ = min(σ, cap), radius = σ · gap."""
    t = pd.read_csv(path, sep="\t")
    sigma = t["sigma_gmean"].clip(upper=CAP)
    radius = (sigma * t["gap"]).where(t["predict"] >= 0, 0.0)
    return t.assign(sigma_min=sigma, sigma_gmean=sigma, sigma_max=sigma, radius=radius, proxy_radius=radius)


def _capped_run(tmp: Path, **change) -> Path:
    """A capped run folder beside the fixture run: DDRS on the ℓ2 σ = 0.25 model, ddrs.sigma_max = CAP."""
    cfg = yaml.safe_load((tmp / "params.yaml").read_text())
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["ddrs"]}
    ]
    cfg["ddrs"]["sigma_max"] = CAP
    for key, value in change.items():
        section, name = key.split("__")
        cfg[section][name] = value
    run = tmp / "capped"
    d = run / "results" / cfg["data"]["dataset"] / L2 / "ddrs"
    d.mkdir(parents=True, exist_ok=True)
    (run / "params.yaml").write_text(yaml.safe_dump(cfg))
    for name in ("ddrs", "ddrs_final"):
        _capped_table(FIX / f"{name}.tsv").to_csv(
            d / ("final.tsv" if "final" in name else "certify.tsv"), sep="\t", index=False
        )
    return run


def _fast(tmp: Path) -> Path:
    """The fixture run with few claim resamples (the claims are not what these tests check)."""
    cfg = yaml.safe_load((tmp / "params.yaml").read_text())
    cfg["report"]["claims"]["resamples"] = 99
    (tmp / "params.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


def test_page_shows_the_capped_experiment_beside_the_uncapped(tmp_path):
    tmp = _fast(_layout(tmp_path))
    assert main(_args(tmp, "--no-plots")) == 0
    plain = {n: pd.read_csv(tmp / "report" / n) for n in ("claims.csv", "summary.csv")}
    run = _capped_run(tmp)
    assert main(_args(tmp, "--capped", str(run))) == 0
    out = tmp / "report"
    for name, before in plain.items():  # the capped experiment is in no claim, summary or metric
        pd.testing.assert_frame_equal(pd.read_csv(out / name), before)
    text = (out / "page.md").read_text()
    part = text.split("## The σ cap: capped vs uncapped\n", 1)[1].split("\n## ", 1)[0]
    assert f"`ddrs.sigma_max` = {CAP:g} (uncapped: none)" in part
    assert f"{CAP / 0.5:g}× the largest σ a base model of this run is trained at (0.5)." in part  # the ℓ1 model's
    assert "Only these experiments were rerun with it" in part and f"{L2}/ddrs" in part
    # ANCER starts from the DDRS σ: the cap would change it too; the page says so, with its inputs above the cap
    ddrs = pd.read_csv(FIX / "ddrs_final.tsv", sep="\t")
    above = int((ddrs["sigma_max"] > CAP).sum())
    assert f"would also change {L2}/ancer ({above} of {len(ddrs)} inputs with ddrs σ above {CAP:g}), not rerun" in part
    assert "Whether the same code ran both is not recorded for gaussian-fixed-l2-0.25/ddrs optimize" in part
    assert "](sigma_cap.png)" in part and (out / "sigma_cap.png").stat().st_size > 1000
    rows = [line for line in part.splitlines() if line.startswith("| gaussian")]
    assert len(rows) == 2 and "| none |" in rows[0] and f"| {CAP:g} |" in rows[1]
    header = [c.strip() for c in part.split("| objective", 1)[1].splitlines()[0].split("|")]
    cells = [[c.strip() for c in row.split("|")[1:-1]] for row in rows]
    col = {name: i + 1 for i, name in enumerate(header[1:-1])}  # "objective" is column 0
    uncapped, capped = pd.read_csv(FIX / "ddrs_final.tsv", sep="\t"), _capped_table(FIX / "ddrs_final.tsv")
    for row, t in zip(cells, (uncapped, capped)):
        ok = (t["correct"] > 0) & (t["predict"] >= 0)
        assert float(row[col["acr"]]) == pytest.approx((t["radius"] * ok).mean(), abs=5e-4)
        assert float(row[col["acc@0.5"]]) == pytest.approx((ok & (t["radius"] >= 0.5)).mean(), abs=5e-4)
        assert float(row[col["median_radius"]]) == pytest.approx(t["radius"][ok].median(), abs=5e-4)
        assert float(row[col["σ_max"]]) == pytest.approx(t["sigma_gmean"].max(), abs=5e-4)
        assert float(row[col["σ_p95"]]) == pytest.approx(np.quantile(t["sigma_gmean"], 0.95), abs=5e-4)
    assert int(cells[0][col["at cap"]]) == int((uncapped["sigma_max"] > CAP).sum()) > 0
    assert int(cells[1][col["at cap"]]) == int((capped["sigma_max"] >= CAP * (1 - 1e-6)).sum())
    assert float(cells[1][col["σ_max"]]) <= CAP


@pytest.mark.parametrize(
    ("change", "models", "message"),
    [
        ({"certify__alpha": 0.01}, None, "also differs in certify.alpha"),
        ({"ddrs__sigma_max": None}, None, "sets no sigma_max"),
        ({}, ["cohen"], "does not change gaussian-fixed-l2-0.25/cohen"),
        ({}, "l1", "is not an experiment of the uncapped run"),
    ],
)
def test_a_capped_run_differs_in_the_cap_alone(tmp_path, capsys, change, models, message):
    tmp = _fast(_layout(tmp_path))
    run = _capped_run(tmp, **change)
    if models is not None:
        cfg = yaml.safe_load((run / "params.yaml").read_text())
        if models == "l1":
            cfg["models"][0]["norm"] = "l1"
        else:
            cfg["models"][0]["methods"] = models
        (run / "params.yaml").write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(_args(tmp, "--no-plots", "--capped", str(run))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp / "report" / "page.md").exists()


def test_affected_follows_the_theta_a_search_starts_from():
    assert cap.affected("ddrs", {"ddrs"}) and cap.affected("ancer", {"ddrs"}) and cap.affected("ancer", {"ancer"})
    assert not cap.affected("ddrs", {"ancer"}) and not cap.affected("cohen", {"ddrs", "ancer"})


def _base_run(tmp: Path, override: Path) -> Path:
    """A finished uncapped run folder as experiment.sh leaves it: merged params.yaml, data, models."""
    base = tmp / "runs" / "toy"
    cfg = config_mod.load(REPO / "params.yaml", (override,))
    base.mkdir(parents=True)
    (base / "params.yaml").write_text(yaml.safe_dump(cfg))
    data = base / "data" / "prepared" / cfg["data"]["dataset"]
    data.mkdir(parents=True)
    for name in ("train.pt", "test.pt"):
        (data / name).write_bytes(b"data")
    for spec in config_mod.trained_specs(cfg):
        d = base / "models" / cfg["data"]["dataset"] / spec.id
        d.mkdir(parents=True)
        (d / "model.pt").write_bytes(b"model")
        (d / "metrics.tsv").write_text("epoch\n1\n")
        os.utime(d / "model.pt", ns=(2_000_000_000_000_000_000, 2_000_000_000_000_000_000))
    return base


def test_prepare_copies_what_the_capped_experiments_read(tmp_path):
    """experiment.sh's CAP mode: the capped folder gets the merged configs and copies (times kept) of the data and
    of the capped models alone; the uncapped folder is left as it was; another config is refused."""
    override = tmp_path / "exp.yaml"
    override.write_text(yaml.safe_dump({"test": {"limit": 7}}))
    capfile = tmp_path / "cap.yaml"
    model = {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["ddrs"]}
    capfile.write_text(yaml.safe_dump({"ddrs": {"sigma_max": 2.0}, "models": [model]}))
    base = _base_run(tmp_path, override)
    before = sorted((p.relative_to(base), p.stat().st_mtime_ns) for p in base.rglob("*"))
    folder = tmp_path / "runs" / "toy-cap"
    cap.prepare(str(REPO / "params.yaml"), str(override), str(capfile), str(base), str(folder))
    assert sorted((p.relative_to(base), p.stat().st_mtime_ns) for p in base.rglob("*")) == before
    capped = config_mod.load(folder / "params.yaml")
    assert capped["ddrs"]["sigma_max"] == 2.0 and capped["test"]["limit"] == 7
    assert config_mod.experiments(capped) == [("gaussian-fixed-l2-0.25", "ddrs")]
    uncapped = config_mod.load(folder / "uncapped.yaml")
    assert uncapped == config_mod.load(base / "params.yaml")
    copied = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    dataset = capped["data"]["dataset"]
    assert copied == sorted(
        [
            "params.yaml",
            "uncapped.yaml",
            f"data/prepared/{dataset}/test.pt",
            f"data/prepared/{dataset}/train.pt",
            f"models/{dataset}/gaussian-fixed-l2-0.25/metrics.tsv",
            f"models/{dataset}/gaussian-fixed-l2-0.25/model.pt",
        ]
    )
    rel = Path("models") / dataset / "gaussian-fixed-l2-0.25" / "model.pt"
    assert (folder / rel).stat().st_mtime_ns == (base / rel).stat().st_mtime_ns
    assert not (folder / rel).samefile(base / rel)  # a copy: nothing written there can reach the uncapped run
    override.write_text(yaml.safe_dump({"test": {"limit": 8}}))
    with pytest.raises(SmoothcertError, match=r"ran another config .*\(differs in test.limit\)"):
        cap.prepare(str(REPO / "params.yaml"), str(override), str(capfile), str(base), str(folder))
    shutil.rmtree(base / "models")
    override.write_text(yaml.safe_dump({"test": {"limit": 7}}))
    with pytest.raises(SmoothcertError, match="finish the uncapped run"):
        cap.prepare(str(REPO / "params.yaml"), str(override), str(capfile), str(base), str(folder))


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist5k"])
def test_cap_configs_rerun_one_ddrs_experiment_of_their_run(name):
    """config/cap/<name>.yaml: valid over its experiment config, a cap of twice the largest training σ, and
    one experiment the cap changes, of that run."""
    files = (REPO / "config" / f"{name}.yaml",)
    uncapped = config_mod.load(REPO / "params.yaml", files)
    capped = config_mod.load(REPO / "params.yaml", (*files, REPO / "config" / "cap" / f"{name}.yaml"))
    caps = cap.check(uncapped, capped, name)
    largest = max(s.sigma for s in config_mod.trained_specs(uncapped))
    assert caps == [("ddrs.sigma_max", None, 2 * largest)]
    objective = {"fashion_mnist": "macer", "mnist5k": "smoothadv"}[name]
    assert config_mod.experiments(capped) == [(f"{objective}-fixed-l2-0.25", "ddrs")]


def _record(run: Path, output: str, digest: str) -> None:
    """A Snakemake metadata record of the job that wrote ``output``, as Snakemake 9 writes it (trigger params)."""
    import base64
    import json

    path = run / ".snakemake" / "metadata" / base64.urlsafe_b64encode(output.encode()).decode()
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [str({"params": {"ddrs": {"sigma_max": None}}, "code": digest}), "data/prepared/x"]
    path.write_text(json.dumps({"record_format_version": 6, "params": str(params)}))


def test_code_changes_read_both_runs_records(tmp_path):
    """The page says whether the capped experiments ran the uncapped run's code, from Snakemake's records."""
    cfg = config_mod.load(REPO / "params.yaml")
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["ddrs"]}
    ]
    base, capped = tmp_path / "base", tmp_path / "capped"
    root = f"results/{cfg['data']['dataset']}/gaussian-fixed-l2-0.25/ddrs"
    shards = config_mod.shard_names(cfg)
    outputs = {
        "optimize": [f"{root}/theta/{s}.pt" for s in shards],
        "certify": [f"{root}/shards/{s}.tsv" for s in shards],
        "memory_check": [f"{root}/final.tsv"],
    }
    for run in (base, capped):
        for stage, files in outputs.items():
            for f in files:
                _record(run, f, ("b" if run == capped and stage == "certify" else "a") * 64)
    assert cap.recorded_code(base, outputs["optimize"][0]) == "a" * 64
    assert cap.recorded_code(base, f"{root}/nothing.tsv") is None
    code = cap.code_changes(base, capped, cfg)
    assert code["changed"] == ["gaussian-fixed-l2-0.25/ddrs certify"]
    assert code["same"] == ["gaussian-fixed-l2-0.25/ddrs optimize", "gaussian-fixed-l2-0.25/ddrs memory_check"]
    assert cap.code_changes(None, capped, cfg)["unrecorded"] == code["same"][:1] + code["changed"] + code["same"][1:]
