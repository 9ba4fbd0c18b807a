"""DDRS / ANCER optimizers: exact gradients, known optima, projection, batch invariance, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from scipy.stats import norm as normal
from torch import nn

from smoothcert import cli
from smoothcert.artifacts import load_torch, save_torch
from smoothcert.config import ModelSpec
from smoothcert.data import prepare
from smoothcert.engine import surrogate as sg
from smoothcert.engine.noise import make_generator, stream_seed
from smoothcert.errors import SmoothcertError
from smoothcert.methods import ancer
from smoothcert.pipeline import optimize
from smoothcert.pipeline.certify import load_theta
from smoothcert.training.models import make_model


def _mlp64(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


class Band(nn.Module):
    """1-D "band" classifier: class 0 iff |x₀| < a, with logit gap k·(a - |x₀|) (sharp for large k)."""

    def __init__(self, a: float, k: float):
        super().__init__()
        self.a, self.k = a, k

    def forward(self, x):
        g = 0.5 * self.k * (self.a - x.flatten(1)[:, 0].abs())
        return torch.stack([g, -g], 1)


class SoftLinear(nn.Module):
    """Two-class linear model with logit gap k·(wᵀx + b)."""

    def __init__(self, w: torch.Tensor, b: float, k: float):
        super().__init__()
        self.w, self.b, self.k = w.flatten(), b, k

    def forward(self, x):
        g = 0.5 * self.k * (x.flatten(1) @ self.w + self.b)
        return torch.stack([g, -g], 1)


NO_STOP = {"draws": "iid", "early_stop": False, "patience": 5, "tolerance": 0.01, "smoothing": 0.9}


def _small_cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5)).eval()


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_surrogate_gradient_matches_finite_differences(norm):
    model, x = _mlp64(), torch.rand(3, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    draw = lambda: make_generator(7, "cpu")  # noqa: E731  (same ε for every evaluation)
    sigma = torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64, requires_grad=True)
    top2 = sg.top2_probabilities(model, x, sigma, norm, 16, draw())
    assert ((top2 > sg.PSI_CLAMP) & (top2 < 1 - sg.PSI_CLAMP)).all()  # ndtri's gradient is exercised
    (grad,) = torch.autograd.grad(sg.surrogate(model, x, sigma, norm, 16, draw()).sum(), sigma)
    h = 1e-6
    with torch.no_grad():  # each σ_i moves only R_i, so one joint central difference gives every ∂R_i/∂σ_i
        fd = (
            sg.surrogate(model, x, sigma + h, norm, 16, draw()) - sg.surrogate(model, x, sigma - h, norm, 16, draw())
        ) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
    # the value itself: σ/2·(Φ⁻¹ψ₁ - Φ⁻¹ψ₂) for ℓ2, σ·(ψ₁ - ψ₂) for ℓ1
    p = top2.detach().numpy()
    gap = 0.5 * (normal.ppf(p[:, 0]) - normal.ppf(p[:, 1])) if norm == "l2" else p[:, 0] - p[:, 1]
    np.testing.assert_allclose(
        sg.surrogate(model, x, sigma, norm, 16, draw()).detach().numpy(), sigma.detach().numpy() * gap, rtol=1e-10
    )


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_anisotropic_objective_gradient_matches_finite_differences(norm):
    model, x = _mlp64(3), torch.rand(2, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    draw = lambda: make_generator(11, "cpu")  # noqa: E731
    theta = (0.2 + torch.rand(2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))).requires_grad_(
        True
    )

    def objective(t):
        gap = sg.proxy_gap(sg.top2_probabilities(model, x, t, norm, 16, draw()), norm)
        return ancer.ancer_objective(t, gap, kappa=2.0)

    (grad,) = torch.autograd.grad(objective(theta), theta)
    (grad_proxy,) = torch.autograd.grad(sg.surrogate(model, x, theta, norm, 16, draw()).sum(), theta)
    fd, fd_proxy, h = torch.zeros_like(grad), torch.zeros_like(grad), 1e-6
    with torch.no_grad():
        for i in range(2):
            for j in range(4):
                e = torch.zeros_like(theta)
                e[i, j] = h
                fd[i, j] = (objective(theta + e) - objective(theta - e)) / (2 * h)
                fd_proxy[i, j] = (
                    sg.surrogate(model, x, theta + e, norm, 16, draw()).sum()
                    - sg.surrogate(model, x, theta - e, norm, 16, draw()).sum()
                ) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(grad_proxy, fd_proxy, rtol=1e-6, atol=1e-8)
    # the proxy radius of an isotropic θ is the isotropic surrogate
    iso = torch.full((2, 4), 0.4, dtype=torch.float64)
    torch.testing.assert_close(
        sg.surrogate(model, x, iso, norm, 16, draw()), sg.surrogate(model, x, iso[:, 0], norm, 16, draw())
    )


# --------------------------------------------------------------------------- DDRS finds known optima


def _evaluate(model, x, sigma, norm):
    with torch.no_grad():
        return sg.surrogate(model, x, sigma, norm, 20000, make_generator(123, "cpu"))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ddrs_reaches_the_known_best_sigma_of_a_band_classifier(norm):
    """At x = 0 of the band |x₀| < a, for the hard classifier p_A(σ) = P(|σε| < a).

    ℓ1 (ε ~ U[-1, 1]): p_A = min(1, a/σ), R = σ(2p_A - 1) = min(σ, 2a - σ): best σ = a, R = a.
    ℓ2 (Gaussian, ψ clamped at 1 - c): R = σΦ⁻¹(min(2Φ(a/σ) - 1, 1 - c)) rises as 3.09σ up to
    σ* = a/Φ⁻¹(1 - c/2), then falls: best σ = σ*, R ≈ 0.94 a. Starting below and above σ*,
    DDRS must climb to it from both sides.
    """
    a = 1.0
    model, x = Band(a, k=50.0), torch.zeros(2, 1)
    if norm == "l1":
        best, start, lr, samples, tol_sigma, min_radius = a, [0.05, 1.6], 0.02, 64, 0.05, 0.95 * a
    else:
        best, start, lr, samples, tol_sigma, min_radius = (
            a / normal.ppf(1 - sg.PSI_CLAMP / 2),
            [0.05, 0.8],
            0.01,
            256,
            0.15,
            0.75 * a,
        )
    sigma0 = torch.tensor(start)
    sigma = sg.ddrs_sigma(
        model,
        x,
        sigma0,
        norm,
        iterations=150,
        lr=lr,
        samples=samples,
        sigma_min=0.01,
        generator=make_generator(0, "cpu"),
    )
    before, after = _evaluate(model, x, sigma0, norm), _evaluate(model, x, sigma, norm)
    assert (sigma - best).abs().max() < tol_sigma, (sigma, best)
    assert (after > before + 0.2).all() and (after > min_radius).all(), (before, after)
    assert (after <= _evaluate(model, x, torch.full((2,), best), norm) + 0.02).all()


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ddrs_radius_approaches_but_never_exceeds_the_linear_margin(norm):
    """Linear classifier, margin m = (wᵀx + b)/‖w‖ (w axis-aligned, so ℓ1 and ℓ2 distances agree).

    Every sound certificate is ≤ m, and for a sharp linear classifier R(σ) rises to m with σ.
    """
    w = torch.tensor([1.0, 0.0, 0.0, 0.0])
    model, x = SoftLinear(w, b=0.0, k=40.0), torch.tensor([[0.5, 0.1, -0.2, 0.3]] * 2)
    sigma0 = torch.tensor([0.03, 0.06])
    sigma = sg.ddrs_sigma(
        model, x, sigma0, norm, iterations=60, lr=0.04, samples=64, sigma_min=0.01, generator=make_generator(1, "cpu")
    )
    before, after = _evaluate(model, x, sigma0, norm), _evaluate(model, x, sigma, norm)
    assert (sigma > sigma0).all()
    assert (after > before + 0.2).all() and (after > 0.85 * 0.5).all() and (after < 0.5 + 0.01).all(), (before, after)


def test_ddrs_keeps_sigma_above_sigma_min_and_leaves_the_model_alone():
    model, x = _small_cnn(), torch.rand(3, 1, 4, 4)
    flags = [p.requires_grad for p in model.parameters()]
    seen = []
    sigma = sg.ddrs_sigma(
        model,
        x,
        torch.tensor([0.02, 0.3, 0.001]),
        "l2",
        iterations=5,
        lr=5.0,
        samples=8,
        sigma_min=0.05,
        generator=make_generator(0, "cpu"),
        callback=lambda s, v: seen.append(v),
    )
    assert len(seen) == 5 and all((v >= 0.05).all() for v in seen) and (sigma >= 0.05).all()
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    start = torch.tensor([0.3, 0.2, 0.4])
    assert torch.equal(
        sg.ddrs_sigma(model, x, start, "l2", iterations=0, lr=1.0, samples=4, sigma_min=0.01, generator=None), start
    )


# --------------------------------------------------------------------------- ANCER


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ancer_never_leaves_the_isotropic_start_and_grows_the_proxy_radius(norm):
    """Linear classifier leaning on dimension 0: θ₀ should stay (projection active), the others grow."""
    w = torch.tensor([1.0, 0.3, 0.0, 0.0])
    model, x = SoftLinear(w, b=0.0, k=30.0), torch.tensor([[0.3, 0.2, 0.1, -0.1], [0.25, -0.3, 0.0, 0.2]])
    theta0 = torch.full((2, 4), 0.2 if norm == "l2" else 0.4)
    steps = []
    theta = ancer.ancer_theta(
        model,
        x,
        theta0,
        norm,
        iterations=40,
        lr=0.04,
        samples=64,
        kappa=2.0,
        generator=make_generator(0, "cpu"),
        callback=lambda s, t: steps.append(t.clone()),
    )
    assert len(steps) == 40
    for t in steps:  # θ ≥ θ_init after every step
        assert (t >= theta0).all()
    # the projection was active: Adam moves every coordinate by ~lr on its first step, so a
    # coordinate sitting exactly at θ0 was pushed below it and put back
    assert (steps[0] == theta0).any() and (steps[0] > theta0).any()
    assert (theta[:, 2:] > 0.6).all()  # dimensions the classifier ignores get much more noise
    before, after = _evaluate(model, x, theta0, norm), _evaluate(model, x, theta, norm)
    assert (after > before + 0.05).all(), (before, after)


def test_ancer_projects_onto_a_per_coordinate_start():
    model, x = _small_cnn(), torch.rand(2, 1, 4, 4)
    theta0 = 0.1 + torch.rand(2, 16, generator=torch.Generator().manual_seed(0))
    steps = []
    ancer.ancer_theta(
        model,
        x,
        theta0,
        "l2",
        iterations=6,
        lr=0.1,
        samples=8,
        kappa=2.0,
        generator=make_generator(0, "cpu"),
        callback=lambda s, t: steps.append(t.clone()),
    )
    assert all((t >= theta0).all() for t in steps)
    with pytest.raises(Exception, match="positive"):
        ancer.ancer_theta(model, x, -theta0, "l2", iterations=1, lr=0.1, samples=2, kappa=2.0, generator=None)


# --------------------------------------------------------------------------- batch / shard invariance


def _gens(idx, seed=0):
    return [make_generator(stream_seed(seed, int(i), "optimize"), "cpu") for i in idx]


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_per_input_generators_make_results_batch_independent(norm):
    model, x, idx = _small_cnn(), torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(3)), np.arange(10, 15)
    kw = dict(iterations=4, lr=0.05, samples=8)
    sigma0 = torch.full((5,), 0.3)
    joint = sg.ddrs_sigma(model, x, sigma0, norm, sigma_min=0.01, generator=_gens(idx), **kw)
    alone = torch.cat(
        [
            sg.ddrs_sigma(
                model, x[i : i + 1], sigma0[i : i + 1], norm, sigma_min=0.01, generator=_gens(idx[i : i + 1]), **kw
            )
            for i in range(5)
        ]
    )
    torch.testing.assert_close(joint, alone, rtol=1e-6, atol=1e-7)
    # the check has teeth: one shared generator for the batch draws different noise
    shared = sg.ddrs_sigma(model, x, sigma0, norm, sigma_min=0.01, generator=make_generator(0, "cpu"), **kw)
    assert not torch.allclose(shared, alone, rtol=1e-4)

    theta0 = joint.unsqueeze(1).expand(5, 16)
    joint_t = ancer.ancer_theta(model, x, theta0, norm, kappa=2.0, generator=_gens(idx), **kw)
    alone_t = torch.cat(
        [
            ancer.ancer_theta(
                model, x[i : i + 1], theta0[i : i + 1], norm, kappa=2.0, generator=_gens(idx[i : i + 1]), **kw
            )
            for i in range(5)
        ]
    )
    torch.testing.assert_close(joint_t, alone_t, rtol=1e-6, atol=1e-7)


def test_optimize_shard_does_not_depend_on_batch_size_or_sharding():
    model, x, idx = (
        _small_cnn(),
        torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(4)),
        np.array([3, 7, 8, 20, 21]),
    )
    spec = ModelSpec("gaussian", "fixed", "l2", 0.25, ("ddrs", "ancer"))

    def cfg(bs):
        return {
            "seed": 0,
            "ddrs": {
                "iterations": 3,
                "lr": 0.05,
                "samples": 8,
                "batch_size": bs,
                "sigma0": None,
                "sigma_min": 0.01,
                "sigma_max": None,
                "precision": "float32",
                **NO_STOP,
            },
            "ancer": {
                "iterations": 3,
                "lr": 0.05,
                "samples": 8,
                "batch_size": bs,
                "kappa": 2.0,
                "precision": "float32",
                "sigma_max": None,
                **NO_STOP,
            },
        }

    whole = optimize.optimize_shard(cfg(5), spec, "ddrs", model, x, idx, "cpu", progress=False)
    assert whole["idx"].dtype == torch.int64 and whole["theta"].dtype == torch.float32
    assert whole["time"].dtype == torch.float64 and whole["evals"].dtype == torch.int64
    assert whole["theta"].shape == (5, 16) and (whole["evals"] == 3 * 2 * 8).all() and (whole["time"] > 0).all()
    assert torch.equal(whole["idx"], torch.from_numpy(idx))
    assert (whole["theta"] == whole["theta"][:, :1]).all()  # ddrs: σ broadcast
    parts = [
        optimize.optimize_shard(cfg(2), spec, "ddrs", model, x[s], idx[s], "cpu", progress=False)
        for s in (slice(0, 3), slice(3, 5))
    ]
    torch.testing.assert_close(whole["theta"], torch.cat([p["theta"] for p in parts]), rtol=1e-6, atol=1e-7)

    anc = optimize.optimize_shard(cfg(5), spec, "ancer", model, x, idx, "cpu", init=whole["theta"], progress=False)
    anc2 = optimize.optimize_shard(
        cfg(2), spec, "ancer", model, x, idx, "cpu", init=whole["theta"].numpy(), progress=False
    )
    torch.testing.assert_close(anc["theta"], anc2["theta"], rtol=1e-6, atol=1e-7)
    assert (anc["theta"] >= whole["theta"]).all()
    with pytest.raises(Exception, match="init"):
        optimize.optimize_shard(cfg(5), spec, "ancer", model, x, idx, "cpu", progress=False)


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("optimize_cli")
    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    cfg["data"]["dataset"] = "digits"
    cfg["model"]["arch"] = "digits_cnn"
    cfg["test"].update(start=0, step=1, limit=6)
    cfg["models"] = [
        {"objective": "gaussian", "sigma_mode": "fixed", "norm": "l1", "sigmas": [0.5], "methods": ["ddrs", "ancer"]}
    ]
    cfg["ddrs"].update(iterations=2, samples=4, batch_size=4, precision="float32")  # DDRS: central difference
    cfg["ancer"].update(iterations=2, samples=4, batch_size=4)
    (tmp / "params.yaml").write_text(yaml.safe_dump(cfg))
    prepare({**cfg["data"], "seed": cfg["seed"]}, tmp / "data")
    save_torch(tmp / "model.pt", {"arch": "digits_cnn", "state_dict": make_model(cfg).state_dict()})
    return tmp


def _run(tmp, *extra, shard="1-of-2"):
    return cli.main(
        [
            "optimize-sigma",
            "--config",
            str(tmp / "params.yaml"),
            "--model",
            "gaussian-fixed-l1-0.5",
            "--checkpoint",
            str(tmp / "model.pt"),
            "--data",
            str(tmp / "data"),
            "--shard",
            shard,
            "--threads",
            "1",
            "--no-progress",
            *extra,
        ]
    )


def test_cli_writes_theta_files_that_certify_can_read(cli_setup, capsys):
    tmp = cli_setup
    assert _run(tmp, "--method", "ddrs", "--out", str(tmp / "ddrs.pt")) == 0
    idx = np.arange(3, 6)  # shard 1 of 2 of six test inputs
    theta, t, e = load_theta(tmp / "ddrs.pt", idx, 64)
    assert (theta > 0).all() and (e == 2 * 2 * 4).all() and (t > 0).all()  # 2 steps, 4 draws each forwarded at σ ± h
    assert _run(tmp, "--method", "ancer", "--init", str(tmp / "ddrs.pt"), "--out", str(tmp / "ancer.pt")) == 0
    theta_a, t_a, e_a = load_theta(tmp / "ancer.pt", idx, 64)
    assert (theta_a >= theta - 1e-7).all()
    assert (e_a == e + 2 * 4).all() and (t_a > t).all()  # ancer's cost includes the ddrs start
    assert set(load_torch(tmp / "ancer.pt")) == {"idx", "theta", "time", "evals"}
    # errors are one line, exit status 2
    assert _run(tmp, "--method", "ancer", "--out", str(tmp / "x.pt")) == 2
    assert (
        _run(tmp, "--method", "ancer", "--init", str(tmp / "ddrs.pt"), "--out", str(tmp / "x.pt"), shard="0-of-2") == 2
    )
    assert _run(tmp, "--method", "ddrs", "--init", str(tmp / "ddrs.pt"), "--out", str(tmp / "x.pt")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("smoothcert optimize-sigma: error:") for line in err)
    assert not (tmp / "x.pt").exists()


# --------------------------------------------------------------------------- precision


def test_precision_names_resolve_and_bad_ones_fail():
    assert sg.resolve_precision("float32", "cpu") is None
    assert sg.resolve_precision("bfloat16", "cpu") is torch.bfloat16
    assert sg.resolve_precision("auto", "cpu") in (None, torch.bfloat16)
    with pytest.raises(SmoothcertError, match="precision"):
        sg.resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_bfloat16_search_lands_where_float32_does(norm):
    """The optimizers may run the model in bfloat16: σ / θ come out float32, near the float32 ones, and
    as good when scored in float32; float64 inputs (the gradient checks) are never autocast."""
    model, x, idx = _small_cnn(), torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(5)), np.arange(6)
    kw = dict(iterations=15, lr=0.05, samples=16, sigma_min=0.01)
    s0 = torch.full((6,), 0.3)
    s32 = sg.ddrs_sigma(model, x, s0, norm, generator=_gens(idx), **kw)
    s16 = sg.ddrs_sigma(model, x, s0, norm, generator=_gens(idx), amp=torch.bfloat16, **kw)
    assert s16.dtype == torch.float32
    assert not torch.equal(s16, s32)  # bfloat16 really ran
    torch.testing.assert_close(s16, s32, rtol=0.05, atol=0.01)

    def score(scale):
        with torch.no_grad():
            return float(sg.surrogate(model, x, scale, norm, 512, make_generator(9, "cpu")).mean())

    assert score(s16) >= score(s32) - 0.01 * abs(score(s32))
    t32 = ancer.ancer_theta(
        model,
        x,
        s32.unsqueeze(1).expand(6, 16),
        norm,
        iterations=5,
        lr=0.05,
        samples=16,
        kappa=2.0,
        generator=_gens(idx),
    )
    t16 = ancer.ancer_theta(
        model,
        x,
        s32.unsqueeze(1).expand(6, 16),
        norm,
        iterations=5,
        lr=0.05,
        samples=16,
        kappa=2.0,
        generator=_gens(idx),
        amp=torch.bfloat16,
    )
    assert t16.dtype == torch.float32 and (t16 >= s32.unsqueeze(1) - 1e-7).all()
    # Adam's normalized steps turn small gradient differences into ±lr moves of single θᵢ: compare on average
    assert float((t16 - t32).abs().mean()) < 0.01 and score(t16) >= score(t32) - 0.02 * abs(score(t32))

    m64, x64 = _mlp64(), x.double().reshape(6, 1, 2, 8)[..., :2, :2]
    a = sg.ddrs_sigma(m64, x64, s0.double(), norm, generator=_gens(idx), **kw)
    b = sg.ddrs_sigma(m64, x64, s0.double(), norm, generator=_gens(idx), amp=torch.bfloat16, **kw)
    assert a.dtype == torch.float64 and torch.equal(a, b)
