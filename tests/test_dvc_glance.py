"""Experiments at a glance in DVC: ``dvc plots show`` draws a curve per experiment (the template dvc.yaml names),
and ``dvc metrics show`` of the report's per-experiment headlines is one short row per experiment."""

from __future__ import annotations

import io
import json
import shlex
import shutil
import subprocess

import pandas as pd
import yaml

from smoothcert.pipeline import stages
from smoothcert.reporting import tables as rep
from test_workflow import BIN, REPO, copy_repo, run

GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]

DVC = str(BIN / "dvc")


def _repo(tmp_path):
    run(["git", "init", "-q"], tmp_path)
    run([DVC, "init", "-q"], tmp_path)
    return tmp_path


def _experiment(model: str, method: str, norm: str, radii) -> rep.Experiment:
    table = pd.DataFrame({"correct": 1, "predict": 1, "radius": radii, "n0": 100, "n": 1000})
    return rep.Experiment(model, "gaussian", "fixed", method, 0.25, norm, table)


def test_dvc_plots_draw_one_curve_per_experiment(tmp_path):
    root = _repo(tmp_path)
    runs = [
        _experiment("gaussian-fixed-l2-0.25", "cohen", "l2", [0.1, 0.5]),
        _experiment("gaussian-fixed-l2-0.25", "ddrs", "l2", [0.3, 0.9]),
        _experiment("gaussian-fixed-l1-0.5", "cohen", "l1", [0.2, 0.4]),
    ]
    (root / "metrics").mkdir()
    rep.curves(runs, {"l2": [0, 1], "l1": [0, 1]}, points=5).to_csv(root / "metrics" / "curves.csv", index=False)
    (root / stages.PLOT_TEMPLATE).parent.mkdir(parents=True)
    shutil.copy(REPO / stages.PLOT_TEMPLATE, root / stages.PLOT_TEMPLATE)
    report = yaml.safe_load(stages.dvc_yaml())["stages"]["report"]
    (plot,) = report["plots"]  # the report stage's plot, as a top-level plot of this repository
    ((path, props),) = plot.items()
    props = {k: v for k, v in props.items() if k != "persist"}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{path: props}]}))
    shown = json.loads(run([DVC, "plots", "show", "--json"], root).stdout)
    (spec,) = shown["data"][path]
    content = spec["content"]
    encoding = content["spec"]["encoding"]
    assert encoding["color"]["field"] == "experiment", "curves are told apart by experiment"
    assert content["facet"]["column"]["field"] == "norm", "ℓ1 and ℓ2 radii are drawn apart"
    values = content["data"]["values"]
    assert {v["experiment"] for v in values} == {e.key for e in runs}


def test_dvc_metrics_show_fits_a_terminal(tmp_path):
    root = _repo(tmp_path)
    for i in range(20):
        e = _experiment(f"gaussian-fixed-l2-0.{i:02d}", "smooth_reduce_mean", "l2", [0.3, 0.9])
        path = root / "report" / "metrics" / e.model_id / f"{e.method}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rep.experiment_headline(e, [0.25, 0.5, 1.0])))
    out = subprocess.run([DVC, "metrics", "show", "-R", "report/metrics"], cwd=root, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert len(lines) == 21, out.stdout + out.stderr  # a header and a row per experiment
    assert max(map(len, lines)) <= 120, out.stdout


def test_readme_exp_show_runs_and_shows_the_change(tmp_path):
    """The README's ``dvc exp show`` line runs (DVC fails when it drops the ``models`` column: the param and the
    folder share that name) and shows only the setting changed against the commit."""
    root = copy_repo(tmp_path)
    run(["git", "init", "-q"], root)
    run([*GIT, "add", "-A"], root)
    run([*GIT, "commit", "-qm", "code"], root)
    (line,) = [s for s in (REPO / "README.md").read_text().splitlines() if s.startswith("dvc exp show")]
    params = root / "params.yaml"
    n = yaml.safe_load(params.read_text())["certify"]["n"]
    text = params.read_text()
    params.write_text(
        text[: text.index("\ncertify:")] + text[text.index("\ncertify:") :].replace(f"  n: {n} ", "  n: 7 ", 1)
    )
    shown = pd.read_csv(io.StringIO(run([DVC, *shlex.split(line, comments=True)[1:], "--csv"], root).stdout))
    assert sorted(shown["certify.n"]) == [7, n], shown
    assert "certify.n0" not in shown, "--only-changed leaves out what did not change"
