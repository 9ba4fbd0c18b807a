"""Sequential certification (``certify.mode: sequential``): α accounting, draws, invariance, the pipeline.

The statistical tests (:func:`smoothcert.audit.sequential`) run many certifications of a linear classifier whose
smoothed radius is known in closed form (margin m along e₁: pA = Φ(m/σ) with Gaussian noise, ½ + m/2σ with
uniform noise; exact ℓ2 and ℓ1 radius m) and count certificates above the truth. A bound without the
union over checkpoints (each checkpoint at full α: the classic mistake of "peeking") must fail the same check,
which shows the check has the power to see a broken bound.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.stats import norm as normal
from torch import nn

from smoothcert import Smooth, audit, cli
from smoothcert.engine import sequential
from smoothcert.engine.certify import SequentialPlan, certify_sequential_batch, predict_sequential_batch
from smoothcert.engine.sampling import Sampling, count_classes


class Linear2(nn.Module):
    """Two classes: logit s = wᵀx for class 1, 0 for class 0."""

    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x):
        s = x.flatten(1) @ self.w
        return torch.stack([torch.zeros_like(s), s], 1)


SIGMA = 0.5
CKS = audit.SEQUENTIAL_CHECKPOINTS  # 100 … 6,400


@pytest.mark.parametrize("norm_name", ["l2", "l1"])
@pytest.mark.parametrize("target", ["decide", "estimate"])
def test_alpha_holds_at_the_stopping_time(norm_name, target):
    """1,000 inputs at the exact-radius margin (α = 0.1): decide asks "certified at the exact radius?" (every yes
    is an over-claim); estimate's reported radius must not exceed the truth. Within α's binomial bound."""
    result = audit.sequential(trials=1000, norm_name=norm_name, target=target)
    assert result["pass"], result
    if target == "decide":
        assert result["mean_draws"] < CKS[-1], "some inputs stop early"


def test_a_bound_without_union_over_checkpoints_fails():
    """Clopper–Pearson at full α at every checkpoint over-claims (≈ 3α here): the check sees a broken bound,
    while the beta-binomial mixture (valid at every n) passes it."""
    assert not audit.sequential(trials=1000, bound="broken")["pass"]
    assert audit.sequential(trials=1000, bound="beta_mixture")["pass"]


@pytest.mark.parametrize("target", ["decide", "estimate"])
def test_alpha_holds_with_per_input_anisotropic_theta(target):
    """DDRS / ANCER certified sequentially: per-input θ (up to ~5× between dimensions), a generic w; the exact gap
    |wᵀx| / ‖θ ⊙ w‖₂ is never exceeded beyond α's bound; decide (which stops at the first checkpoint that certifies)
    sees the bound without the union over checkpoints (estimate stops on precision, where it over-claims too rarely)."""
    result = audit.sequential(trials=1000, target=target, anisotropic=True)
    assert result["pass"], result
    assert result["certified"] > 300, "the check must certify often enough to see over-claims"
    if target == "decide":
        assert not audit.sequential(trials=1000, target=target, anisotropic=True, bound="broken")["pass"]


def test_continued_streams_are_the_first_draws_of_one_stream():
    model = Linear2(torch.tensor([1.0, -0.5]))
    x = torch.tensor([[0.1, 0.2], [0.3, -0.1]])
    s = Sampling(kind="gaussian", batch_size=333, chunk=100)
    whole = count_classes(model, x, 0.7, 700, 2, [1, 2], s)
    parts = count_classes(model, x, 0.7, 300, 2, [1, 2], s) + count_classes(
        model, x, 0.7, 400, 2, [1, 2], s, first_chunk=3
    )
    assert np.array_equal(whole, parts)


def test_results_do_not_depend_on_grouping_or_batch_size():
    model = Linear2(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[m, 0.0] for m in np.linspace(-0.4, 1.2, 9)], dtype=torch.float32)
    plan = SequentialPlan(CKS, sequential.UnionCP(CKS), (0.0, 0.25, 0.5), 0.1)

    def run(rows, pos):
        return certify_sequential_batch(
            model,
            x[pos],
            SIGMA,
            2,
            50,
            0.001,
            "l2",
            [int(i) for i in pos],
            [int(i) + 100 for i in pos],
            Sampling(batch_size=rows, chunk=100),
            plan,
            np.full(len(pos), SIGMA),
        )

    together = run(5000, np.arange(9))
    split = [run(777, np.arange(0, 4)), run(1234, np.arange(4, 9))]
    for key in ("predict", "count", "pA_lower", "n"):
        assert np.array_equal(together[key], np.concatenate([p[key] for p in split])), key
    assert len(set(together["n"])) > 1, "inputs stop at different checkpoints"


def test_smooth_certify_sequential_matches_the_linear_radius_and_saves_draws():
    sm = Smooth(Linear2(torch.tensor([1.0, 0.0])), 2, 0.5, seed=3, device="cpu")
    pred, radius, used = sm.certify_sequential(torch.tensor([1.0, 0.0]), 100, 100_000, 0.001, 1000)
    assert pred == 1 and 0.85 < radius <= 1.0 and used < 100_000 / 5
    pred, radius, used = sm.certify_sequential(torch.tensor([1.0, 0.0]), 100, 100_000, 0.001, 1000, radius=0.5)
    assert pred == 1 and 0.5 < radius <= 1.0 and used <= 100 + 200  # pA = Φ(2): decided within a few checkpoints
    pred, radius, used = sm.certify_sequential(torch.tensor([0.01, 0.0]), 100, 100_000, 0.001, 1000, radius=0.5)
    assert radius < 0.5 and used <= 100 + 200  # "not certified at 0.5" is settled quickly too


def test_smooth_sequential_floor_does_not_depend_on_the_batch_size():
    """The first checkpoint is n_min whatever batch_size (it was gcd(batch_size, n_max)), and the results are
    the same for any batch size: the draws depend on the seed, the chunk and the checkpoints only."""
    x = torch.tensor([1.0, 0.0])
    runs = [
        Smooth(Linear2(torch.tensor([1.0, 0.0])), 2, 0.25, seed=5, device="cpu").certify_sequential(
            x, 100, 100_000, 0.001, bs, radius=0.25
        )
        for bs in (1000, 64, 5000)
    ]
    assert runs[0] == runs[1] == runs[2]
    # pA = Φ(4): every draw correct (here), so r = 0.25 = σ is certified at the first checkpoint n where the union
    # bound's Clopper–Pearson bound with c = n, (α/K)^(1/n), exceeds Φ(1) — 75 draws, not the 1,000 of before
    cks = sequential.schedule(10, 100_000, 1.25)
    first = cks[(0.001 / len(cks)) ** (1.0 / cks) > normal.cdf(1.0)][0]
    assert runs[0][0] == 1 and runs[0][2] == 100 + first and first < 100


def test_checkpoints_need_not_be_whole_chunks():
    """Rounds of fewer draws than a chunk (and checkpoints off the chunk grid) give the same result whatever the
    batch size and grouping; with checkpoints on the chunk grid, the stream is that of a fixed-n call."""
    model = Linear2(torch.tensor([1.0, 0.0]))
    x = torch.tensor([[m, 0.0] for m in np.linspace(-0.2, 1.0, 7)], dtype=torch.float32)
    cks = tuple(int(c) for c in sequential.schedule(30, 5000, 1.3))
    plan = SequentialPlan(cks, sequential.UnionCP(cks), (0.0, 0.25, 0.5), 0.1)

    def run(rows, pos, chunk=400):
        return certify_sequential_batch(
            model, x[pos], SIGMA, 2, 50, 0.001, "l2", [int(i) for i in pos], [int(i) + 7 for i in pos],
            Sampling(batch_size=rows, chunk=chunk), plan, np.full(len(pos), SIGMA),
        )  # fmt: skip

    together = run(3000, np.arange(7))
    split = [run(97, np.arange(0, 3)), run(1111, np.arange(3, 7))]
    for key in ("predict", "count", "pA_lower", "n"):
        assert np.array_equal(together[key], np.concatenate([p[key] for p in split])), key
    assert set(together["n"]) <= set(cks) and together["n"].min() < 400
    # on the chunk grid the rounds continue one stream: their counts add up to those of one fixed-n call
    from smoothcert.engine.certify import _rounds

    xs, sampling = x[:3], Sampling(batch_size=333, chunk=100)
    rounds = _rounds(model, xs, SIGMA, 2, [4, 5, 6], sampling, (100, 200, 400, 800), np.ones(3, dtype=bool))
    total = sum(est for _, _, _, est in rounds)
    assert np.array_equal(total, count_classes(model, xs, SIGMA, 800, 2, [4, 5, 6], sampling))


def test_pipeline_runs_every_method_and_norm_sequentially(params, tmp_path):
    """Every registered method in ℓ2 and ℓ1 (per-input σ / θ, radius factors), the memory step and clips in
    sequential mode: same columns, per-input draws in n / evals, some inputs stop before n_max."""
    from smoothcert import methods

    names = methods.names()
    cfg = copy.deepcopy(params)
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": norm, "sigmas": [0.5], "methods": names}
        for norm in ("l2", "l1")
    ]
    cfg["train"]["epochs"] = 3
    cfg["test"].update(limit=8, shards=1)
    cfg["ddrs"].update(iterations=2, samples=4)
    cfg["ancer"].update(iterations=2, samples=4)
    cfg["video"].update(enabled=False, frames=4, canvas=10, window=2)
    cfg["video"]["train"]["epochs"] = 1
    cfg["certify"].update(mode="sequential", chunk=100, batch_size=2000)
    cfg["certify"]["sequential"].update(n_min=100, n_max=1600, in_flight=4)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(cfg))
    base, data, models, results = ["--config", str(path)], tmp_path / "d", tmp_path / "m", tmp_path / "r"
    assert cli.main([*base, "prepare-data", "--out", str(data)]) == 0

    cks = set(sequential.schedule(100, 1600, cfg["certify"]["sequential"]["ratio"]).tolist())

    def check(table: pd.DataFrame, what: str) -> None:
        assert set(table["n"]) <= cks, what
        assert (table["evals"] >= table["n0"] + table["n"]).all(), what
        ok = table["predict"] >= 0
        assert (table.loc[ok, "pA_lower"] > 0.5).all() and (table.loc[~ok, "radius"] == 0).all(), what

    stopped_early = set()
    for norm in ("l2", "l1"):
        model = f"gaussian-fixed-{norm}-0.5"
        argv = ["--model", model, "--data", str(data), "--out", str(models / model), "--no-progress"]
        assert cli.main([*base, "train", *argv]) == 0
        ckpt = ["--checkpoint", str(models / model / "model.pt"), "--data", str(data), "--shard", "0-of-1"]
        for name in names:
            m, folder = methods.get(name), results / model / name
            extra = []
            if m.per_input_sigma:
                init = ["--init", str(results / model / m.init_from / "theta.pt")] if m.init_from else []
                theta = folder / "theta.pt"
                opt = [*base, "optimize-sigma", "--model", model, "--method", name, *ckpt, *init, "--out", str(theta)]
                assert cli.main([*opt, "--no-progress"]) == 0
                extra = ["--theta", str(theta)]
            out = folder / "certify.tsv"
            cert = [*base, "certify", "--model", model, "--method", name, *ckpt, *extra, "--out", str(out)]
            assert cli.main([*cert, "--no-progress"]) == 0
            table = pd.read_csv(out, sep="\t")
            check(table, f"{model}/{name}")
            if (table["n"] < 1600).any():
                stopped_early.add(name)
            if m.memory:
                final = folder / "final.tsv"
                argv = [
                    "memory-check",
                    "--certified",
                    str(out),
                    "--theta",
                    str(folder / "theta.pt"),
                    "--data",
                    str(data),
                    "--out-table",
                    str(final),
                    "--out-memory",
                    str(folder / "memory.npz"),
                ]
                assert cli.main([*base, *argv]) == 0
                assert len(pd.read_csv(final, sep="\t")) == len(table)
    assert stopped_early, "no input stopped before n_max"
    video = results / "video"
    assert cli.main([*base, "video", "--sigma", "0.5", "--out", str(video), "--no-progress"]) == 0
    for name in cfg["video"]["methods"]:
        check(pd.read_csv(video / name / "certify.tsv", sep="\t"), f"video/{name}")


def test_sequential_predict_stops_early_and_abstains_on_ties():
    """A clear top class is returned after the first checkpoint; an exact tie (pA = ½: g is undefined) is a
    wrong answer whichever class is returned, so over 300 inputs at α = 0.1 at most the binomial bound of
    them may return a class."""
    sm = Smooth(Linear2(torch.tensor([1.0, 0.0])), 2, 0.5, seed=4, device="cpu")
    pred, used = sm.predict_sequential(torch.tensor([1.0, 0.0]), 10_000, 0.001, 100)
    assert pred == 1 and used <= 100  # pA = Φ(2): within the first checkpoints (10, 12, 16, 20, …)
    x = torch.zeros(300, 2)
    out = predict_sequential_batch(
        Linear2(torch.tensor([1.0, 0.0])),
        x,
        0.5,
        2,
        0.1,
        list(range(300)),
        Sampling(batch_size=10_000, chunk=100),
        CKS,
    )
    answered = int((out["predict"] >= 0).sum())
    assert answered <= audit.verdict("tie", 300, 0, 0.1)["allowed"], answered


def test_report_shows_draws_per_input(tmp_path):
    from smoothcert.reporting import plots, tables

    t = pd.DataFrame(
        {
            "idx": range(6),
            "label": 1,
            "predict": [1, 1, -1, 1, 0, 1],
            "correct": [1, 1, 0, 1, 0, 1],
            "radius": [0.5, 0.2, 0, 0.1, 0.3, 0.9],
            "n": [1000, 2000, 64000, 1000, 4000, 1000],
            "evals": [1100, 2100, 64100, 1100, 4100, 1100],
        }
    )
    row = tables.summary_row(t, [0.0, 0.25], 0.001, 0.001)
    assert row["evals"] == pytest.approx(t["evals"].mean())
    assert row["evals_certified"] == pytest.approx(t.loc[t["predict"] >= 0, "evals"].mean())
    e = tables.Experiment("gaussian-fixed-l2-0.5", "gaussian", "fixed", "cohen", 0.5, "l2", t)
    plots.draws([e, e], tmp_path / "draws.png", "draws")
    assert (tmp_path / "draws.png").stat().st_size > 1000
