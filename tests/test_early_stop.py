"""The σ / θ searches' early stop: the rule on known traces, exact step counts, batch independence, and that the
searches without it (or with a rule that never fires) are unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from smoothcert.config import ModelSpec
from smoothcert.engine import surrogate as sg
from smoothcert.engine.noise import make_generator, stream_seed
from smoothcert.errors import SmoothcertError
from smoothcert.methods import ancer
from smoothcert.pipeline import optimize

RULE = sg.EarlyStop(patience=4, tolerance=0.01, smoothing=0.5)


class Constant(nn.Module):
    """Logits (2, 0) whatever the input: ψ and the gap are constants, so R = σ·gap is exact and noise-free."""

    def forward(self, x):
        return torch.tensor([2.0, 0.0], dtype=x.dtype).expand(x.shape[0], 2)


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()


def _gens(idx):
    return [make_generator(stream_seed(0, int(i), "optimize"), "cpu") for i in idx]


def test_plateau_follows_the_rule_on_a_known_trace():
    # EMA with β = 0.5 from the first value; improvement: m > best + 0.01·|best|
    trace = [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    # m: 1, 1.5, 1.75, 1.875, 1.9375, 1.96875 (each > 1.01 × the previous: improves), 1.984375 (≤ 1.96875·1.01
    #    = 1.98844: no), 1.9921875 (> 1.98844: improves; best stays 1.96875 until then), then never above
    #    1.9921875·1.01 = 2.0121 again
    plateau = sg.Plateau(RULE, 1)
    stopped_at = None
    for step, v in enumerate(trace + [2.0] * 10, start=1):
        if bool(plateau.update(torch.tensor([0]), torch.tensor([v]))[0]):
            stopped_at = step
            break
    assert stopped_at == 8 + RULE.patience  # last improvement at step 8, then 4 steps without
    # a worse rule (no smoothing, no tolerance) would have stopped elsewhere: the count depends on the rule
    raw = sg.Plateau(sg.EarlyStop(patience=4, tolerance=0.0, smoothing=0.0), 1)
    steps = next(s for s, v in enumerate(trace + [2.0] * 10, 1) if raw.update(torch.tensor([0]), torch.tensor([v]))[0])
    assert steps == 2 + 4


def test_a_converged_input_stops_after_patience_and_the_others_continue():
    # input 0 starts at the cap: σ never moves, R is constant, it stops after 1 + patience steps exactly;
    # input 1 climbs from 0.1 towards the cap, improving by more than 1 % a step for many steps
    x, sigma0 = torch.zeros(2, 1, 2, 2), torch.tensor([1.0, 0.1])
    steps = torch.zeros(2, dtype=torch.int64)
    sigma = sg.ddrs_sigma(
        Constant(), x, sigma0, "l2", iterations=200, lr=0.01, samples=3, sigma_min=0.01, sigma_max=1.0,
        generator=_gens(range(2)), early_stop=RULE, steps=steps,
    )  # fmt: skip
    assert steps[0] == 1 + RULE.patience
    assert 1 + RULE.patience + 20 < steps[1] < 200
    assert sigma[0] == 1.0 and sigma[1] == pytest.approx(1.0)
    # a short budget: nobody exceeds iterations
    short = torch.zeros(2, dtype=torch.int64)
    sg.ddrs_sigma(
        Constant(), x, sigma0, "l2", iterations=12, lr=0.01, samples=3, sigma_min=0.01, sigma_max=1.0,
        generator=_gens(range(2)), early_stop=RULE, steps=short,
    )  # fmt: skip
    assert short.tolist() == [1 + RULE.patience, 12]


def test_ancer_stops_a_converged_input_and_keeps_its_theta():
    x = torch.zeros(2, 1, 2, 2)
    theta0 = torch.tensor([[0.5] * 4, [0.2] * 4])
    steps = torch.zeros(2, dtype=torch.int64)
    theta = ancer.ancer_theta(
        Constant(), x, theta0, "l2", iterations=100, lr=0.01, samples=3, kappa=2.0, generator=_gens(range(2)),
        sigma_max=0.5, early_stop=RULE, steps=steps,
    )  # fmt: skip
    assert steps[0] == 1 + RULE.patience and 1 + RULE.patience < steps[1] <= 100
    assert torch.equal(theta[0], theta0[0]) and (theta[1] > 0.2).all() and (theta[1] <= 0.5).all()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_rule_that_never_fires_changes_nothing(norm):
    model, x = _cnn(), torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    kw = dict(iterations=6, lr=0.05, samples=8, sigma_min=0.01)
    never = sg.EarlyStop(patience=100, tolerance=0.01, smoothing=0.9)
    steps = torch.zeros(4, dtype=torch.int64)
    plain = sg.ddrs_sigma(model, x, torch.full((4,), 0.3), norm, generator=_gens(range(4)), **kw)
    ruled = sg.ddrs_sigma(
        model, x, torch.full((4,), 0.3), norm, generator=_gens(range(4)), early_stop=never, steps=steps, **kw
    )
    assert torch.equal(plain, ruled) and (steps == 6).all()
    theta0 = plain.unsqueeze(1).expand(4, 16)
    kw.pop("sigma_min")
    plain_t = ancer.ancer_theta(model, x, theta0, norm, kappa=2.0, generator=_gens(range(4)), **kw)
    ruled_t = ancer.ancer_theta(model, x, theta0, norm, kappa=2.0, generator=_gens(range(4)), early_stop=never, **kw)
    assert torch.equal(plain_t, ruled_t)


@pytest.mark.parametrize("method", ["ddrs", "ancer"])
def test_stopping_does_not_depend_on_the_batch(method):
    model, x = _cnn(), torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    idx = np.arange(20, 26)
    rule = sg.EarlyStop(patience=3, tolerance=0.02, smoothing=0.5)
    kw = dict(iterations=40, lr=0.05, samples=8, generator=None, early_stop=rule)

    def run(rows):
        steps = torch.zeros(len(rows), dtype=torch.int64)
        args = {**kw, "generator": _gens(idx[rows]), "steps": steps}
        if method == "ddrs":
            out = sg.ddrs_sigma(model, x[rows], torch.full((len(rows),), 0.3), "l2", sigma_min=0.01, **args)
        else:
            out = ancer.ancer_theta(model, x[rows], torch.full((len(rows), 16), 0.3), "l2", kappa=2.0, **args)
        return out, steps

    joint, joint_steps = run(list(range(6)))
    alone = [run([i]) for i in range(6)]
    assert joint_steps.tolist() == [int(s) for _, s in alone]
    assert len(set(joint_steps.tolist())) > 1 and (joint_steps < 40).any()  # the inputs did stop, at different steps
    torch.testing.assert_close(joint, torch.cat([o for o, _ in alone]), rtol=1e-6, atol=1e-7)


def test_optimize_shard_counts_the_forwards_each_input_spent():
    model, x = _cnn(), torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    idx = np.array([3, 7, 8, 20, 21])
    spec = ModelSpec("gaussian", "fixed", "l2", 0.25, ("ddrs",))
    stop = {"draws": "iid", "early_stop": True, "patience": 3, "tolerance": 0.02, "smoothing": 0.5}

    def cfg(bs, **extra):
        ddrs = {"iterations": 30, "lr": 0.05, "samples": 8, "batch_size": bs, "sigma0": None, "sigma_min": 0.01}
        return {"seed": 0, "ddrs": {**ddrs, "sigma_max": None, "precision": "float32", **stop, **extra}}

    whole = optimize.optimize_shard(cfg(5), spec, "ddrs", model, x, idx, "cpu", progress=False)
    steps = torch.zeros(5, dtype=torch.int64)
    sigma = sg.ddrs_sigma(
        model, x, torch.full((5,), 0.25), "l2", iterations=30, lr=0.05, samples=8, sigma_min=0.01,
        generator=_gens(idx), early_stop=sg.EarlyStop(3, 0.02, 0.5), steps=steps,
    )  # fmt: skip
    assert torch.equal(whole["evals"], steps * 2 * 8) and (whole["evals"] < 30 * 2 * 8).any()  # central: σ ± h
    torch.testing.assert_close(whole["theta"][:, 0], sigma)
    ones = optimize.optimize_shard(cfg(1), spec, "ddrs", model, x, idx, "cpu", progress=False)
    assert torch.equal(ones["evals"], whole["evals"])
    torch.testing.assert_close(ones["theta"], whole["theta"], rtol=1e-6, atol=1e-7)
    off = optimize.optimize_shard(cfg(5, early_stop=False), spec, "ddrs", model, x, idx, "cpu", progress=False)
    assert (off["evals"] == 30 * 2 * 8).all()


class Counting(nn.Module):
    """The wrapped model, counting every row it forwards."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


@pytest.mark.parametrize(("method", "gradient"), [("ddrs", "central"), ("ddrs", "autograd"), ("ancer", "central")])
def test_evals_count_every_forward_of_the_base_classifier(method, gradient, monkeypatch):
    # opt_evals is what each input really spent: alone in its batch, an input's evals equal the rows the wrapped
    # model saw; together, the batch's rows are the sum of its inputs' evals (early stop on, so they differ)
    monkeypatch.setattr(sg, "GRADIENT", gradient)
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    idx = np.array([3, 7, 8, 20, 21])
    spec = ModelSpec("gaussian", "fixed", "l2", 0.25, (method,))
    search = {"iterations": 30, "lr": 0.05, "samples": 8, "sigma_max": None, "precision": "float32"}
    stop = {"draws": "iid", "early_stop": True, "patience": 3, "tolerance": 0.02, "smoothing": 0.5}

    def cfg(bs):
        return {
            "seed": 0,
            "ddrs": {**search, **stop, "batch_size": bs, "sigma0": None, "sigma_min": 0.01},
            "ancer": {**search, **stop, "batch_size": bs, "kappa": 2.0},
        }

    init = torch.full((5, 16), 0.25) if method == "ancer" else None
    model = Counting(_cnn())
    whole = optimize.optimize_shard(cfg(5), spec, method, model, x, idx, "cpu", init=init, progress=False)
    assert model.rows == int(whole["evals"].sum()) and len(set(whole["evals"].tolist())) > 1
    for i in range(5):
        model.rows = 0
        one = optimize.optimize_shard(
            cfg(1), spec, method, model, x[i : i + 1], idx[i : i + 1], "cpu",
            init=None if init is None else init[i : i + 1], progress=False,
        )  # fmt: skip
        assert model.rows == int(one["evals"][0]) == int(whole["evals"][i])


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_search_noise_modes(norm):
    kind, x = sg.noise_kind(norm), torch.zeros(3, 1, 2, 2)
    active = sg.Active(x, _gens(range(3)))
    iid = sg.SearchNoise(x, 5, kind, _gens(range(3)), "iid")
    first = iid.draw(active)
    assert first.shape == (3, 5, 1, 2, 2) and not torch.equal(first, iid.draw(active))  # fresh every step
    torch.testing.assert_close(first, sg.standard_noise(x, 5, kind, _gens(range(3))))  # as the papers draw
    anti = sg.SearchNoise(x, 5, kind, _gens(range(3)), "antithetic").draw(active)
    assert torch.equal(anti[:, 3:5], -anti[:, :2]) and not torch.equal(anti[:, 2], -anti[:, 2])  # pairs, one odd
    common = sg.SearchNoise(x, 5, kind, _gens(range(3)), "common_antithetic")
    a, b = common.draw(active), common.draw(active)
    assert torch.equal(a, b) and torch.equal(a[:, 3:5], -a[:, :2])  # reused every step
    active.drop(torch.tensor([True, False, False]))
    assert torch.equal(common.draw(active), a[1:])  # a stopped input's draws leave with it
    with pytest.raises(SmoothcertError, match="search draws"):
        sg.SearchNoise(x, 5, kind, None, "sobol")


@pytest.mark.parametrize("draws", ["antithetic", "common", "common_antithetic"])
def test_variance_reduced_searches_do_not_depend_on_the_batch(draws):
    model, x = _cnn(), torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    idx = np.arange(30, 34)
    kw = dict(iterations=15, lr=0.05, samples=6, early_stop=sg.EarlyStop(3, 0.02, 0.5), draws=draws)

    def run(rows):
        steps = torch.zeros(len(rows), dtype=torch.int64)
        sig = sg.ddrs_sigma(
            model, x[rows], torch.full((len(rows),), 0.3), "l2", sigma_min=0.01, generator=_gens(idx[rows]),
            steps=steps, **kw,
        )  # fmt: skip
        th = ancer.ancer_theta(
            model, x[rows], sig.unsqueeze(1).expand(len(rows), 16), "l2", kappa=2.0, generator=_gens(idx[rows]), **kw
        )
        return sig, th, steps

    joint = run(list(range(4)))
    alone = [run([i]) for i in range(4)]
    for k in range(3):
        torch.testing.assert_close(joint[k], torch.cat([a[k] for a in alone]), rtol=1e-6, atol=1e-7)
