"""Report metrics on hand-computed tables; the whole report and compare-paper from fixture TSVs."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from smoothcert.cli import main
from smoothcert.reporting import paper
from smoothcert.reporting import tables as rep

FIX = Path(__file__).parent / "fixtures" / "report"
REPO = Path(__file__).resolve().parents[1]
ROOT = Path(__file__).resolve().parents[1]


def _toy():
    # correct r=0.8; correct r=0.3; wrong r=0.9; abstain
    return pd.DataFrame(
        {
            "idx": [0, 1, 2, 3],
            "label": [3, 2, 0, 5],
            "predict": [3, 2, 1, -1],
            "radius": [0.8, 0.3, 0.9, 0.0],
            "correct": [1, 1, 0, 0],
            "proxy_radius": [1.2, 0.3, 1.0, 0.0],
            "log_volume": [-10.0, -30.0, -5.0, -np.inf],
        }
    )


def test_certified_accuracy_acr_abstention():
    df = _toy()
    np.testing.assert_allclose(rep.certified_accuracy(df, [0.0, 0.3, 0.5, 1.0]), [0.5, 0.5, 0.25, 0.0])
    np.testing.assert_allclose(rep.certified_accuracy(df, [1.0, 1.2], "proxy_radius"), [0.25, 0.25])
    assert rep.acr(df) == pytest.approx((0.8 + 0.3) / 4)
    assert rep.abstention_rate(df) == 0.25
    assert rep.clean_accuracy(df) == 0.5
    assert rep.median_log_volume(df) == pytest.approx(-20.0)  # certified correct only: -10, -30
    assert np.isnan(rep.certified_accuracy(df.iloc[:0], [0.0])[0])


def test_app_d_lower_bound():
    df = _toy()
    # m = 4, alpha = rho = 0.001: P(Bin(4, .001) = 0) = 0.996 < 0.999, P(<= 1) = 0.99999 -> q = 1
    np.testing.assert_allclose(rep.lower_bounds(df, [0.0, 0.5], alpha=0.001, rho=0.001), [0.25, 0.0])
    # alpha = 1e-6: P(Bin(4, 1e-6) = 0) = 0.999996 >= 0.999 -> q = 0, bound = plain accuracy
    np.testing.assert_allclose(rep.lower_bounds(df, [0.0, 0.5], alpha=1e-6, rho=0.001), [0.5, 0.25])


def test_best_mask_directions_and_ties():
    df = pd.DataFrame(
        {
            "norm": ["l2", "l2", "l2", "l1"],
            "acc@0.5": [0.4, 0.6, 0.6, 0.1],
            "abstain": [0.1, 0.3, 0.2, 0.9],
            "time": [1.0, 0.1, 2.0, 0.5],
        }
    )
    m = rep.best_mask(df)
    assert m["acc@0.5"].tolist() == [False, True, True, False]  # l1 has one row: nothing to rank
    assert m["abstain"].tolist() == [True, False, False, False]
    assert not m["time"].any()  # cost is not ranked


def test_markdown_counts_whole_times_with_units():
    """The cost table: counts (means per input) as whole numbers, never 0.000; times with their unit; rates as
    fractions."""
    df = pd.DataFrame(
        {
            "method": ["cohen", "ddrs"],
            "abstain": [0.0, 0.125],
            "opt_time": [0.0, 1.23456],
            "opt_evals": [0.0, 37.6],
            "time": [0.5, 2.0],
            "evals": [1100.0, 3.0],
            "evals_certified": [np.nan, 5.0],
        }
    )
    head, _, cohen, ddrs = rep.markdown(df).splitlines()
    assert head == "| method | abstain | opt_time (s) | opt_evals | time (s) | evals | evals_certified |"
    assert cohen == "| cohen | 0.000 | 0.000 | 0 | 0.500 | 1100 |  |"
    assert ddrs == "| ddrs | 0.125 | 1.235 | 38 | 2.000 | 3 | 5 |"


def test_proxy_accuracy_is_never_ranked_as_a_certificate():
    """ANCER's proxy radius is no ball certificate: its accuracy column is never bolded, even when it differs."""
    df = pd.DataFrame({"norm": ["l2", "l2"], "acc@0.5": [0.4, 0.6], "proxy_acc@0.5": [0.9, 0.6]})
    m = rep.best_mask(df)
    assert m["acc@0.5"].tolist() == [False, True]
    assert not m["proxy_acc@0.5"].any()
    assert rep.direction("proxy_acc@0.5") == 0


def test_fill_imported_and_parse():
    from smoothcert.engine.certificates import COLUMNS
    from smoothcert.reporting.importers import fill_imported, parse_import

    df = pd.DataFrame(
        {"idx": [0], "label": [1], "predict": [1], "radius": [0.5], "correct": [1], "time": ["0:01:02.500000"]}
    )
    out = fill_imported(df, "pub", COLUMNS, sigma=0.25)
    assert set(COLUMNS) <= set(out.columns)
    assert out.loc[0, "time"] == pytest.approx(62.5)
    assert out.loc[0, "method"] == "pub" and out.loc[0, "norm"] == "l2" and out.loc[0, "proxy_radius"] == 0.5
    assert np.isnan(out.loc[0, "log_volume"])
    assert parse_import("pub=a/noise_0.5/test/sigma_0.5")[:2] == ("pub", 0.5)
    assert parse_import("pub@0.12=x.tsv")[:2] == ("pub", 0.12)
    name, sigma, _ = parse_import("pub=x.tsv")
    assert np.isnan(sigma)


# ---------------------------------------------------------------- whole report from fixtures
L2 = "gaussian-fixed-l2-0.25"
L1 = "gaussian-fixed-l1-0.5"
MACER = "macer-fixed-l2-0.25"
ALL = ["cohen", "ddrs", "ancer", "smooth_reduce_max", "smooth_reduce_mean"]


def _layout(tmp: Path) -> Path:
    cfg = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ALL},
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l1", "sigmas": [0.5], "methods": ["cohen"]},
        {"objective": "macer", "sigma_mode": "fixed", "norm": "l2", "sigmas": [0.25], "methods": ["cohen"]},
    ]
    cfg["test"].update(start=0, step=1, limit=24)  # the fixture tables hold idx 0..23 of the 30 test inputs
    (tmp / "params.yaml").write_text(yaml.safe_dump(cfg))
    res = tmp / "results"
    for method in ALL:
        d = res / L2 / method
        d.mkdir(parents=True)
        shutil.copy(FIX / f"{method}.tsv", d / "certify.tsv")
        if method in ("ddrs", "ancer"):
            shutil.copy(FIX / f"{method}_final.tsv", d / "final.tsv")
    c = pd.read_csv(FIX / "cohen.tsv", sep="\t")
    (res / L1 / "cohen").mkdir(parents=True)
    c.assign(norm="l1", sigma=0.5, radius=c["radius"] * 0.5).to_csv(
        res / L1 / "cohen" / "certify.tsv", sep="\t", index=False
    )
    (res / MACER / "cohen").mkdir(parents=True)
    c.assign(radius=c["radius"] * 1.2).to_csv(res / MACER / "cohen" / "certify.tsv", sep="\t", index=False)
    gen = torch.Generator().manual_seed(0)
    (res / L2 / "ancer" / "theta").mkdir()
    torch.save(
        {"idx": torch.arange(24), "theta": 0.2 + 0.3 * torch.rand(24, 64, generator=gen)},
        res / L2 / "ancer" / "theta" / "0-of-1.pt",
    )
    (tmp / "data").mkdir()
    torch.save(
        {"x": torch.rand(30, 1, 8, 8, generator=gen), "y": torch.randint(0, 10, (30,), generator=gen)},
        tmp / "data" / "test.pt",
    )
    for mid in (L2, L1, MACER):
        (tmp / "models" / mid).mkdir(parents=True)
        pd.DataFrame(
            {
                "epoch": [1, 2],
                "lr": [0.05, 0.05],
                "train_loss": [1.5, 0.9],
                "train_acc": [0.5, 0.7],
                "test_clean_acc": [0.6, 0.8],
                "test_noisy_acc": [0.5, 0.7],
                "time": [1.0, 1.5],
            }
        ).to_csv(tmp / "models" / mid / "metrics.tsv", sep="\t", index=False)
    return tmp


def _args(tmp: Path, *extra):
    return [
        "report",
        "--config",
        str(tmp / "params.yaml"),
        "--results",
        str(tmp / "results"),
        "--out",
        str(tmp / "report"),
        *extra,
    ]


OUTPUTS = [
    "claims.csv",
    "claims.md",
    "summary.csv",
    "summary.md",
    "memory.csv",
    "memory.md",
    "training.csv",
    "training.md",
    "objectives.csv",
    "metrics.json",
    "curves.csv",
    "curves_proxy.csv",
    "certified_accuracy_l2.png",
    "certified_accuracy_sigma_l2.png",
    "certified_accuracy_objective_l2.png",
    "certified_accuracy_l1.png",
    "certified_accuracy_sigma_l1.png",
    "certified_accuracy_objective_l1.png",
    "certified_accuracy_proxy.png",
    "log_volume.png",
    "memory_effect.png",
    "ancer_theta.png",
    "training.png",
]


def test_whole_report_from_fixtures(tmp_path):
    tmp = _layout(tmp_path)
    imp = f"locuslab={FIX / 'locuslab_noise_0.25.tsv'}"
    assert main(_args(tmp, "--models", str(tmp / "models"), "--data", str(tmp / "data"), "--import", imp)) == 0
    out = tmp / "report"
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob(".*tmp"))
    s = pd.read_csv(out / "summary.csv")
    assert len(s) == 8
    assert set(s["method"]) == set(ALL) | {"locuslab"}
    cohen = pd.read_csv(FIX / "cohen.tsv", sep="\t")
    row = s[(s["model_id"] == L2) & (s["method"] == "cohen")].iloc[0]
    assert row["acc@0"] == pytest.approx(cohen["correct"].mean())
    assert row["acc@0.5"] == pytest.approx(((cohen["radius"] >= 0.5) & (cohen["correct"] == 1)).mean())
    assert row["acr"] == pytest.approx((cohen["radius"] * cohen["correct"]).mean())
    assert row["abstain"] == pytest.approx((cohen["predict"] == -1).mean())
    assert row["evals"] == 2100 and row["opt_time"] == 0
    imported = s[s["method"] == "locuslab"].iloc[0]
    assert imported["sigma"] == 0.25 and imported["norm"] == "l2" and np.isnan(imported["median_log_volume"])
    ancer = s[s["method"] == "ancer"].iloc[0]
    final = pd.read_csv(FIX / "ancer_final.tsv", sep="\t")
    assert ancer["acr"] == pytest.approx((final["radius"] * final["correct"]).mean())  # summary uses final.tsv
    assert ancer["proxy_acc@0.25"] >= ancer["acc@0.25"]
    assert np.isnan(s[s["norm"] == "l1"].iloc[0]["acc@1.25"])  # l1 grid stops at 1
    md = (out / "summary.md").read_text()
    assert "## l1" in md and "## l2" in md and "**" in md
    mem = pd.read_csv(out / "memory.csv")
    assert sorted(mem["method"]) == ["ancer", "ddrs"]
    assert mem[["none", "inside", "shrunk", "abstained"]].iloc[0].tolist() == [18, 3, 2, 1]
    before = pd.read_csv(FIX / "ddrs.tsv", sep="\t")
    assert mem[mem["method"] == "ddrs"].iloc[0]["before_acc@0"] == pytest.approx(before["correct"].mean())
    # lost / gained reconcile the net change, and lost is the claim row's number
    net = mem["after_acc@0"] - mem["before_acc@0"]
    assert np.allclose(net, mem["gained@0"] - mem["lost@0"])
    after = pd.read_csv(FIX / "ddrs_final.tsv", sep="\t").set_index("idx")
    ok = lambda t: (t["correct"] > 0) & (t["predict"] >= 0)  # noqa: E731
    lost = (ok(before.set_index("idx")) & ~ok(after)).mean()
    assert mem[mem["method"] == "ddrs"].iloc[0]["lost@0"] == pytest.approx(lost)
    # metrics.json: the run at a glance (best over experiments at the papers' radii); one file per experiment
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"l1", "l2", "abstain", "draws"}
    assert set(metrics["l2"]) == {"acc@0.5", "acc@1", "acr"} and set(metrics["l1"]) == {"acc@0.5", "acr"}
    l2 = s[s["norm"] == "l2"]
    assert metrics["l2"]["acc@0.5"] == pytest.approx(l2["acc@0.5"].max())
    assert metrics["l2"]["acr"] == pytest.approx(l2["acr"].max())
    assert metrics["l1"]["acc@0.5"] == pytest.approx(s[s["norm"] == "l1"]["acc@0.5"].max())
    assert metrics["abstain"] == pytest.approx((s["abstain"] * s["inputs"]).sum() / s["inputs"].sum())
    glance = json.loads((out / "metrics" / L2 / "cohen.json").read_text())
    draws = float((cohen["n0"] + cohen["n"]).mean())
    assert glance == pytest.approx(
        {"acc@0.5": row["acc@0.5"], "acc@1": row["acc@1"], "acr": row["acr"], "abstain": row["abstain"], "draws": draws}
    )
    assert (out / "metrics" / "import-l2-0.25" / "locuslab.json").is_file()
    assert "draws" not in json.loads((out / "metrics" / "import-l2-0.25" / "locuslab.json").read_text())
    curves = pd.read_csv(out / "curves.csv")
    assert curves.columns[0] == "experiment" and {"norm", "radius", "certified_accuracy"} <= set(curves.columns)
    first = curves[curves["experiment"] == f"{L2}/cohen"].iloc[0]
    assert first["radius"] == 0 and first["certified_accuracy"] == pytest.approx(row["acc@0"])
    train = pd.read_csv(out / "training.csv")
    assert len(train) == 3 and train["train_time"].tolist() == [2.5] * 3
    obj = pd.read_csv(out / "objectives.csv")
    assert {"gaussian", "macer"} <= set(obj["objective"]) and "cohen acr" in obj.columns
    _check_page(out, s, tmp)


def _check_page(out: Path, s: pd.DataFrame, tmp: Path) -> None:
    """The results page: computed headline, a section per question, every linked figure published with it."""
    from smoothcert.reporting.page import FIGURE_LINK

    text = (out / "page.md").read_text()
    claims = pd.read_csv(out / "claims.csv")
    reproduced = int((claims["verdict"] == "reproduced").sum())
    l2 = s[s["norm"] == "l2"]
    best_acc = l2.loc[l2["acc@0.5"].idxmax()]
    assert f"**Headline**: best certified accuracy at ℓ2 r = 0.5: {best_acc['acc@0.5']:.1%}" in text  # papers' first
    assert f"claims at family-wise level 0.05 (Holm): {reproduced} of {len(claims)} rows reproduced" in text
    assert "**family-wise level is 0.05**" in text and "What ACR rewards" in text
    assert "median_radius" in text and "σ_p95" in text  # the per-input σ distribution of DDRS / ANCER rows
    best = s[s["norm"] == "l2"].sort_values("acr").iloc[-1]
    assert f"best ACR {best['acr']:.3f} ({best['method']}" in text
    for section in ("## Claims checked", "## Certified accuracy (l2)", "## Memory step", "## Certification cost"):
        assert section in text
    links = {name for _, name in FIGURE_LINK.findall(text)}
    assert {"certified_accuracy_l2.png", "certified_accuracy_l1.png", "memory_effect.png"} <= links
    assert "certified_accuracy_sigma_l2.png" not in links  # one σ per method here: a placeholder, left out
    l1 = text.split("## Certified accuracy (l1)", 1)[1].split("\n## ", 1)[0]
    assert "certified_accuracy_l1.png" in l1 and "_l2.png" not in l1, "ℓ1 has its own figures"
    assert "None" not in text
    for section in ("## Certified regions", "## Memory step", "## Certification cost"):  # tables that mix norms
        table = text.split(section, 1)[1].split("\n## ", 1)[0]
        assert "| norm |" in table, section
    assert "| time (s) |" in text and "| inputs lost (points) |" in text and "| net change (points) |" in text
    assert main(["publish", "--report", str(out), "--out", str(tmp / "docs" / "toy.md")]) == 0
    published = (tmp / "docs" / "toy.md").read_text()
    assert "](toy/certified_accuracy_l2.png)" in published and "](certified_accuracy_l2.png)" not in published
    assert all((tmp / "docs" / "toy" / name).stat().st_size > 1000 for name in links)
    assert main(["publish", "--report", str(tmp), "--out", str(tmp / "x.md")]) == 2  # no page there


def test_report_without_optional_inputs(tmp_path):
    tmp = _layout(tmp_path)
    assert main(_args(tmp, "--no-plots")) == 0
    assert (tmp / "report" / "summary.csv").exists() and not (tmp / "report" / "certified_accuracy_l2.png").exists()


def test_video_tables(tmp_path):
    tmp = _layout(tmp_path)
    for method in ("cohen", "smooth_reduce_max"):
        d = tmp / "results" / "video" / "sigma-0.25" / method
        d.mkdir(parents=True)
        shutil.copy(FIX / "locuslab_noise_0.25.tsv", d / "certify.tsv")
    assert main(_args(tmp, "--no-plots", "--video", str(tmp / "results" / "video"))) == 0
    v = pd.read_csv(tmp / "report" / "video.csv")
    assert v["method"].tolist() == ["cohen", "smooth_reduce_max"] and (v["sigma"] == 0.25).all()
    assert (tmp / "report" / "metrics" / "video-0.25" / "smooth_reduce_max.json").is_file()


def test_missing_table_is_one_line_error(tmp_path, capsys):
    tmp = _layout(tmp_path)
    (tmp / "results" / L2 / "ddrs" / "final.tsv").unlink()
    assert main(_args(tmp, "--no-plots")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ddrs/final.tsv" in err and "not found" in err


def test_table_lacking_columns_is_one_line_error(tmp_path, capsys):
    tmp = _layout(tmp_path)
    p = tmp / "results" / L2 / "cohen" / "certify.tsv"
    pd.read_csv(p, sep="\t").drop(columns=["proxy_radius"]).to_csv(p, sep="\t", index=False)
    assert main(_args(tmp, "--no-plots")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "proxy_radius" in err and "cohen/certify.tsv" in err
    bad = tmp / "bad.tsv"
    pd.DataFrame({"idx": [0], "label": [1]}).to_csv(bad, sep="\t", index=False)
    p.unlink()
    shutil.copy(FIX / "cohen.tsv", p)
    assert main(_args(tmp, "--no-plots", "--import", f"x={bad}")) == 2
    assert "lacks columns" in capsys.readouterr().err
    imp = f"x={FIX / 'locuslab_noise_0.25.tsv'}"
    assert main(_args(tmp, "--no-plots", "--import", imp, "--import", imp)) == 2
    assert "share a name" in capsys.readouterr().err


# ---------------------------------------------------------------- paper comparison
def test_compare_paper(tmp_path):
    summary = pd.read_csv(FIX / "summary_cifar10.csv")
    t = paper.compare(summary)
    assert len(t) == 4 * 7
    c = t.set_index(["sigma", "radius"])
    assert c.loc[(0.25, 0.0), "diff"] == pytest.approx(0.01)
    assert c.loc[(0.25, 0.5), "diff"] == pytest.approx(0.02)
    assert c.loc[(0.5, 0.0), "diff"] == pytest.approx(-0.05)
    assert not c.loc[(0.5, 0.0), "within_2se"]  # se = sqrt(.6 * .4 / 500) = 0.022
    assert c.loc[(1.0, 1.5), "diff"] == pytest.approx(0.0) and c.loc[(1.0, 1.5), "within_2se"]
    assert np.isnan(c.loc[(0.12, 0.0), "ours"])
    out = tmp_path / "paper_comparison.md"
    assert main(["compare-paper", "--summary", str(FIX / "summary_cifar10.csv"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "not run" in text and "0.760 (+0.010)" in text
    assert (tmp_path / "paper_comparison.csv").exists()
    assert (
        main(["compare-paper", "--summary", str(FIX / "summary_cifar10.csv"), "--out", str(out), "--method", "ancer"])
        == 2
    )


def test_compare_paper_every_sigma_of_one_import_name(tmp_path):
    """One NAME imported at two σ: compare-paper fills both σ rows of the published table in one call."""
    table = FIX / "locuslab_noise_0.25.tsv"
    out = tmp_path / "r"
    argv = ["--config", str(REPO / "params.yaml"), "report", "--no-plots", "--out", str(out), "--import"]
    assert main([*argv, f"cohen@0.25={table}", f"cohen@0.5={table}"]) == 0
    assert main(["compare-paper", "--summary", str(out / "summary.csv"), "--out", str(out / "paper.md")]) == 0
    t = pd.read_csv(out / "paper.csv")
    assert set(t.dropna(subset=["ours"])["sigma"]) == {0.25, 0.5}
    s = pd.read_csv(out / "summary.csv").set_index("sigma")
    row = t[(t["sigma"] == 0.5) & (t["radius"] == 0.25)].iloc[0]
    assert row["ours"] == pytest.approx(s.loc[0.5, "acc@0.25"])


def test_cifar10_paper_config_is_valid():
    from smoothcert import config

    cfg = config.load(ROOT / "params.yaml", (ROOT / "config" / "cifar10_paper.yaml",))  # an override
    assert cfg["data"]["dataset"] == "cifar10" and cfg["model"]["arch"] == "cifar_resnet110"
    assert [s.sigma for s in config.model_specs(cfg)] == [0.12, 0.25, 0.5, 1.0]
    cc = cfg["certify"]
    assert (cc["n"], cc["n0"], cc["alpha"], cfg["test"]["step"]) == (100000, 100, 0.001, 20)
    assert set(paper.COHEN_CIFAR10) == {0.12, 0.25, 0.5, 1.0}


def test_report_from_imported_tables_alone(tmp_path):
    """`smoothcert report --import NAME@SIGMA=PATH` with no --results: tables someone already has, reported with
    the config's radii, α and ρ (figures included, placeholders where a figure needs what imports lack)."""
    from smoothcert.cli import main

    out = tmp_path / "report"
    table = FIX / "locuslab_noise_0.25.tsv"
    argv = [
        "--config",
        str(REPO / "params.yaml"),
        "report",
        "--import",
        f"cohen_paper@0.25={table}",
        "--import",
        f"again={table}",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["method"]) == {"cohen_paper", "again"} and set(summary["sigma"].dropna()) == {0.25}
    assert (out / "certified_accuracy_l2.png").stat().st_size > 1000
    assert main(["--config", str(REPO / "params.yaml"), "report", "--out", str(tmp_path / "none")]) == 2


def test_claims_are_paired_over_the_same_inputs(tmp_path):
    """claims.csv: DDRS vs Cohen on the fixture tables, recomputed by hand (paired mean of the per-input ACR
    contribution, exact McNemar p of certified@0.5, Holm over the page); the memory step's cost."""
    from scipy import stats as sps

    from smoothcert.reporting.claims import holm

    tmp = _layout(tmp_path)
    assert main(_args(tmp, "--no-plots")) == 0
    rows = pd.read_csv(tmp / "report" / "claims.csv")
    ddrs = rows[(rows["metric"] == "acr") & rows["claim"].str.startswith("DDRS")].iloc[0]
    a, b = (pd.read_csv(FIX / f"{m}.tsv", sep="\t").set_index("idx") for m in ("ddrs_final", "cohen"))
    d = (a["radius"] * a["correct"] - b["radius"] * b["correct"]).dropna().to_numpy()
    assert ddrs["inputs"] == len(d) and ddrs["difference"] == pytest.approx(d.mean())
    assert ddrs["ci_low"] <= d.mean() <= ddrs["ci_high"] and ddrs["test"] == "paired permutation"
    hit = rows[(rows["metric"] == "certified@0.5") & rows["claim"].str.startswith("DDRS")].iloc[0]
    ha = ((a["radius"] >= 0.5) & (a["correct"] > 0)).astype(int)
    hb = ((b["radius"] >= 0.5) & (b["correct"] > 0)).astype(int)
    up, down = int(((ha - hb) > 0).sum()), int(((ha - hb) < 0).sum())
    assert hit["p"] == pytest.approx(sps.binomtest(up, up + down, 0.5).pvalue if up + down else 1.0)
    np.testing.assert_allclose(rows["p_holm"], holm(rows["p"].to_numpy()))
    assert set(rows["verdict"]) <= {"reproduced", "not reproduced", "inconclusive", "too few inputs"}
    assert (rows["metric"] == "certified@0 lost").any()


def test_curve_panels_ask_one_question_each():
    """Methods at one σ, σ for one method, objectives under one certification: each panel fixes the rest."""
    from smoothcert.reporting.build import curve_panels

    df = pd.DataFrame({"idx": [0], "label": [0], "predict": [0], "radius": [0.1], "correct": [1]})
    grid = [
        rep.Experiment(f"{obj}-fixed-l2-{s:g}", obj, "fixed", m, s, "l2", df)
        for obj in ("gaussian", "macer")
        for s in (0.25, 0.5)
        for m in ("cohen", "ddrs")
    ]
    by_method = curve_panels(grid, ("norm", "training", "sigma"), "method")
    assert len(by_method) == 4 and all(len(p) == 2 for _, p in by_method)
    assert by_method[0] == ("ℓ2 · gaussian/fixed · σ=0.25", [(grid[0].key, "cohen"), (grid[1].key, "ddrs")])
    by_sigma = curve_panels(grid, ("norm", "training", "method"), "sigma", 2)
    assert [label for _, label in by_sigma[0][1]] == ["σ=0.25", "σ=0.5"]
    by_objective = curve_panels(grid, ("norm", "method", "sigma"), "training", 2)
    assert len(by_objective) == 4 and {label for _, label in by_objective[0][1]} == {"gaussian/fixed", "macer/fixed"}
    assert curve_panels(grid[:2], ("norm", "training", "method"), "sigma", 2) == []  # one σ: no σ panel
