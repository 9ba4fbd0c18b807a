"""MACER, SmoothAdv and the data-dependent σ updater on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothcert.training.models import build_model
from smoothcert.training.objectives import (
    OBJECTIVES,
    SIGMA_UPDATERS,
    TrainContext,
    macer,
    macer_terms,
    smoothadv,
    smoothadv_attack,
    smoothadv_epsilon,
    soft_smoothed_loss,
)

KINDS = ("gaussian", "uniform")


class ConstantLogits(nn.Module):
    """Ignores its input: every row gets the same logits, so ψ = softmax(logits) exactly."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.as_tensor(logits, dtype=torch.float32))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def _toy(n=32, seed=0):
    """Two separable classes of 4×4 images in [0, 1] (bright left half vs bright right half)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.2 * torch.rand(n, 1, 4, 4, generator=gen)
    x[y == 0, :, :, :2] += 0.7
    x[y == 1, :, :, 2:] += 0.7
    return x.clamp(0, 1), y


def _digits_model(seed=0):
    torch.manual_seed(seed)
    return build_model("digits_cnn", 1, 10, 8, [0.3], [0.4])


def _ctx(cfg, epoch=0, seed=0):
    return TrainContext(cfg=cfg, epoch=epoch, generator=torch.Generator().manual_seed(seed))


def test_registries_name_every_objective():
    assert set(OBJECTIVES) == {"gaussian", "macer", "smoothadv"}
    assert set(SIGMA_UPDATERS) == {"dd"}


@pytest.mark.parametrize("kind", KINDS)
def test_macer_terms_match_closed_form(kind):
    logits = torch.tensor([2.0, 1.5, -1.0])
    sigma = torch.tensor([0.25, 0.5, 1.0])
    y = torch.tensor([0, 1, 0])  # inputs 0 and 2 correct, input 1 wrong
    rows = logits.expand(3 * 2, -1)  # m = 2 identical draws per input
    lbd, gamma, beta = 3.0, 8.0, 0.5
    total, ce, hinge = macer_terms(rows, y, sigma, kind, m=2, lbd=lbd, gamma=gamma, beta=beta)
    psi = torch.softmax(logits, 0).double()
    soft = torch.softmax(beta * logits, 0).double()
    assert torch.allclose(ce.double(), -psi[y].log(), atol=1e-6)
    if kind == "gaussian":
        xi = norm.ppf(soft[0].item()) - norm.ppf(soft[1].item())
        expected = [0.25 / 2 * (gamma - xi), 0.0, 1.0 / 2 * (gamma - xi)]
    else:
        xi = (soft[0] - soft[1]).item()
        expected = [0.25 * (1 - xi), 0.0, 1.0 * (1 - xi)]
    assert hinge.tolist() == pytest.approx(expected, rel=1e-5)
    assert torch.allclose(total, ce + lbd * hinge)


def test_macer_saturated_probabilities_stay_finite_and_leave_the_hinge():
    model = ConstantLogits([400.0, -400.0, 0.0])
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.long)
    cfg = {"macer": {"m": 3, "lbd": 6.0, "gamma": 8.0, "beta": 16.0}}
    loss, logits = macer(model, x, y, torch.full((4,), 0.5), "gaussian", _ctx(cfg))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(model.logits.grad).all()
    _, _, hinge = macer_terms(logits, y, torch.full((4,), 0.5), "gaussian", m=3, lbd=6.0, gamma=8.0, beta=16.0)
    assert (hinge == 0).all()  # gap ≈ 9.5 after clamping: beyond γ, as an infinite gap is in MACER
    # wrong on every input: -log ψ_y is clamped, still finite
    loss, _ = macer(model, x, torch.ones(4, dtype=torch.long), torch.full((4,), 0.5), "gaussian", _ctx(cfg))
    assert torch.isfinite(loss)


@pytest.mark.parametrize("kind", KINDS)
def test_macer_gradient_is_finite_and_sgd_lowers_the_loss(kind):
    x, y = _toy()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    cfg = {"macer": {"m": 4, "lbd": 6.0, "gamma": 8.0, "beta": 16.0}}
    sigma = torch.linspace(0.1, 0.4, len(x))

    def loss_fn():  # the same noise every evaluation: a deterministic function of the weights
        return macer(model, x, y, sigma, kind, _ctx(cfg, seed=1))[0]

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    start = loss_fn().item()
    for _ in range(15):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert loss_fn().item() < start - 0.05


def test_macer_radius_term_uses_per_sample_sigma():
    model = ConstantLogits([1.0, 0.0])
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.long)
    cfg = {"macer": {"m": 1, "lbd": 1.0, "gamma": 8.0, "beta": 1.0}}
    small, _ = macer(model, x, y, torch.tensor([0.1, 0.1]), "gaussian", _ctx(cfg))
    large, _ = macer(model, x, y, torch.tensor([0.1, 0.9]), "gaussian", _ctx(cfg))
    xi = 2 * norm.ppf(1 / (1 + math.exp(-1.0)))  # Φ⁻¹(ψ₁) - Φ⁻¹(1 - ψ₁)
    assert (large - small).item() == pytest.approx(0.5 * 0.8 / 2 * (8.0 - xi), rel=1e-5)


def test_smoothadv_epsilon_warmup():
    assert [smoothadv_epsilon(0.5, 2, e) for e in range(4)] == [0.0, 0.25, 0.5, 0.5]
    assert smoothadv_epsilon(0.5, 0, 0) == 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_smoothadv_attack_raises_soft_loss_within_budget(kind):
    model = _digits_model()
    model.train()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(24, 1, 8, 8, generator=gen)
    x[:, :, :2] = 0.0  # pixels on the box boundary
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 10, (24,), generator=gen)
    noise = 0.25 * torch.randn(24, 4, 1, 8, 8, generator=gen)
    if kind == "uniform":
        noise = 0.25 * (2 * torch.rand(24, 4, 1, 8, 8, generator=gen) - 1)
    before = [p.detach().clone() for p in model.parameters()]
    eps = 0.5
    x_adv = smoothadv_attack(model, x, y, noise, eps, steps=4, generator=gen)
    assert model.training  # mode restored
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert not x_adv.requires_grad
    assert (x_adv.flatten(1) - x.flatten(1)).norm(dim=1).max().item() <= eps + 1e-5
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    model.eval()
    with torch.no_grad():
        clean, adv = soft_smoothed_loss(model, x, y, noise), soft_smoothed_loss(model, x_adv, y, noise)
    assert adv.mean() > clean.mean() + 0.01
    assert (adv >= clean - 1e-6).float().mean() >= 0.9


def test_smoothadv_objective_shapes_and_zero_budget():
    model = _digits_model()
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6)
    cfg = {"smoothadv": {"m": 3, "epsilon": 0.5, "steps": 2, "warmup": 2}}
    loss, logits = smoothadv(model, x, y, torch.full((6,), 0.25), "gaussian", _ctx(cfg, epoch=1))
    assert logits.shape == (18, 10) and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # epoch 0 of the warm-up: ε = 0, i.e. cross-entropy over m plain noisy copies of x
    loss0, logits0 = smoothadv(model, x, y, torch.full((6,), 0.25), "gaussian", _ctx(cfg, epoch=0, seed=3))
    noise = 0.25 * torch.randn(6, 3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(logits0, model((x.unsqueeze(1) + noise).reshape(18, 1, 8, 8)), atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_dd_updater_refines_sigma_without_touching_the_model(kind):
    model = _digits_model()
    model.train()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8)
    sigma = torch.tensor([0.001, 0.25, 0.25, 0.5, 0.5, 0.25, 0.1, 0.3])
    cfg = {"data_dependent": {"steps": 3, "lr": 0.5, "samples": 4, "sigma_min": 0.01}}
    before = [p.detach().clone() for p in model.parameters()]
    new = SIGMA_UPDATERS["dd"](model, x, y, sigma, kind, _ctx(cfg))
    again = SIGMA_UPDATERS["dd"](model, x, y, sigma, kind, _ctx(cfg))
    assert new.shape == (8,) and not new.requires_grad
    assert torch.equal(new, again)  # seeded by ctx.generator
    assert (new >= 0.01).all() and not torch.equal(new, sigma)
    assert model.training
    assert all(p.grad is None and p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    cfg0 = {"data_dependent": {"steps": 0, "lr": 0.5, "samples": 4, "sigma_min": 0.01}}
    assert torch.equal(SIGMA_UPDATERS["dd"](model, x, y, sigma, kind, _ctx(cfg0)), sigma.clamp_min(0.01))
