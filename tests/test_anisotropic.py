"""Anisotropic certificates (ANCER's region {δ : ‖δ ⊘ θ‖_p ≤ gap}) against exact answers.

For a linear classifier f(x) = 1[wᵀx + b > 0] everything is known in closed form:
under ε ~ N(0, diag θ²), wᵀε ~ N(0, ‖θ ⊙ w‖²), so p_A = Φ(|wᵀx + b| / ‖θ ⊙ w‖), and the
distance from x to the decision boundary in the θ-scaled ℓ2 metric is exactly
|wᵀx + b| / ‖θ ⊙ w‖. Under ε ~ U[-θ, θ] the θ-scaled ℓ1 distance is |wᵀx + b| / ‖θ ⊙ w‖_∞.
Each check is paired with a deliberately wrong variant that it must reject.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import gammaln
from scipy.stats import norm
from torch import nn

from smoothcert.engine import stats
from smoothcert.engine.certify import certify_batch
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling


class Linear(nn.Module):
    """Hard binary linear classifier on (B, d) inputs: logits (0, wᵀx + b)."""

    def __init__(self, w, b: float):
        super().__init__()
        self.w = torch.as_tensor(w, dtype=torch.float32)
        self.b = float(b)

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


W = np.array([1.0, -2.0, 0.5])
B = 0.1
THETA = np.array([[0.2, 0.6, 1.0], [1.0, 0.1, 0.4], [0.5, 0.5, 0.5], [0.5, 0.1, 0.5]])
DIST = np.array([0.4, 0.8, 1.2, -0.6])  # signed exact θ-scaled ℓ2 distance to the boundary


def _inputs(w, theta, dist, scale_norm):
    """x on the line along w whose signed θ-scaled distance to the boundary is ``dist``."""
    mu = dist * np.linalg.norm(theta * w, ord=scale_norm, axis=1)
    return ((mu - B)[:, None] * w[None, :] / (w @ w)).astype(np.float32)


def _certify(model, x, theta, n, norm_name, seed=0):
    seeds = lambda s: [stream_seed(seed, i, s) for i in range(len(x))]  # noqa: E731
    kind = stats.NOISE_OF_NORM[norm_name]
    return certify_batch(
        model,
        torch.from_numpy(x),
        torch.as_tensor(theta, dtype=torch.float32),
        2,
        100,
        n,
        0.001,
        norm_name,
        seeds("select"),
        seeds("estimate"),
        Sampling(kind=kind, batch_size=100_000, chunk=10_000),
    )


def test_l2_smoothed_probability_is_the_exact_one_per_dimension():
    model, x = Linear(W, B), _inputs(W, THETA, DIST, 2)
    n = 100_000
    out = _certify(model, x, THETA, n, "l2")
    p_hat = out["count"] / n
    exact = norm.cdf(np.abs(DIST))
    sd = np.sqrt(exact * (1 - exact) / n)
    assert (np.abs(p_hat - exact) < 5 * sd).all(), (p_hat, exact)
    # teeth: θ applied to the wrong dimensions (reversed) gives a visibly different probability
    wrong = norm.cdf(np.abs(DIST) * np.linalg.norm(THETA * W, axis=1) / np.linalg.norm(THETA[:, ::-1] * W, axis=1))
    assert (np.abs(p_hat - wrong) > 5 * sd).any()


def test_l2_certified_ellipsoid_lies_within_the_exact_region_and_approaches_it():
    model, x = Linear(W, B), _inputs(W, THETA, DIST, 2)
    label = (DIST > 0).astype(int)
    exact = np.abs(DIST)
    deficits = []
    for n in (1_000, 10_000, 100_000):
        out = _certify(model, x, THETA, n, "l2")
        assert (out["predict"] == label).all()
        gap = out["gap"]
        assert (gap <= exact).all(), (n, gap, exact)
        deficits.append(exact - gap)
        # the worst point of the certified ellipsoid, δ* = -sign(μ)·gap·θ⊙(θ⊙w)/‖θ⊙w‖, keeps the class
        tw = THETA * W
        delta = -np.sign(DIST)[:, None] * gap[:, None] * THETA * tw / np.linalg.norm(tw, axis=1, keepdims=True)
        np.testing.assert_allclose(np.linalg.norm(delta / THETA, axis=1), gap, rtol=1e-9)
        pred = model(torch.from_numpy((x + 0.999 * delta).astype(np.float32))).argmax(1).numpy()
        assert (pred == label).all()
        # and so do random points on its boundary
        u = np.random.default_rng(n).standard_normal((500, 3))
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        for i in range(len(x)):
            pts = x[i] + 0.999 * gap[i] * THETA[i] * u
            assert (model(torch.from_numpy(pts.astype(np.float32))).argmax(1).numpy() == label[i]).all()
    deficits = np.array(deficits)
    assert (deficits[0] > deficits[1]).all() and (deficits[1] > deficits[2]).all()
    assert (deficits[2] < 0.03).all(), deficits[2]
    # isotropic ℓ2 radius from the anisotropic certificate: min θ · gap, never the proxy gmean(θ) · gap
    euclid = np.abs(DIST) * np.linalg.norm(THETA * W, axis=1) / np.linalg.norm(W)  # exact ℓ2 distance |μ|/‖w‖
    assert (THETA.min(1) * gap <= euclid).all()
    gmean = np.exp(np.log(THETA).mean(1))
    assert (gmean * gap > euclid).any()  # teeth: the proxy radius is not a certified ℓ2 radius here


@pytest.mark.parametrize("w", [np.array([0.0, 2.0, 0.0]), W], ids=["axis-aligned", "general"])
def test_l1_certified_cross_polytope_lies_within_the_exact_region(w):
    """U[-θ, θ] noise, region {‖δ ⊘ θ‖₁ ≤ 2(p̲A - ½)}; exact θ-scaled ℓ1 distance |μ| / ‖θ ⊙ w‖_∞.

    For an axis-aligned w, p_A = ½ + |μ| / (2θ_j|w_j|) exactly, so the certificate is tight
    and must approach the exact distance as n grows.
    """
    dist = np.array([0.3, 0.6, 0.8, -0.5])
    model, x = Linear(w, B), _inputs(w, THETA, dist, np.inf)
    label = (dist > 0).astype(int)
    deficits = []
    for n in (1_000, 10_000, 100_000):
        out = _certify(model, x, THETA, n, "l1")
        assert (out["predict"] == label).all()
        assert (out["gap"] <= np.abs(dist)).all(), (out["gap"], dist)
        deficits.append(np.abs(dist) - out["gap"])
        # the worst vertex of the certified cross-polytope keeps the class
        j = np.argmax(np.abs(THETA * w), axis=1)
        delta = np.zeros_like(x, dtype=float)
        delta[np.arange(len(x)), j] = -np.sign(dist * w[j]) * out["gap"] * THETA[np.arange(len(x)), j]
        assert (model(torch.from_numpy((x + 0.999 * delta).astype(np.float32))).argmax(1).numpy() == label).all()
    if np.count_nonzero(w) == 1:
        assert (deficits[2] < 0.02).all() and (deficits[0] > deficits[2]).all(), deficits
    # teeth: the ℓ2 gap Φ⁻¹(p̲A) would overclaim here
    assert (stats.gap(out["pA_lower"], "l2") > np.abs(dist)).any()


# --------------------------------------------------------------------------- volumes


def _mc_log_volume(theta, gap, p, n=400_000, seed=0):
    """log volume of {‖δ ⊘ θ‖_p ≤ gap} by uniform sampling of its bounding box [-gap θ, gap θ]."""
    rng = np.random.default_rng(seed)
    half = gap * theta
    delta = rng.uniform(-half, half, size=(n, len(theta)))
    inside = np.linalg.norm(delta / theta, ord=p, axis=1) <= gap
    return np.log(inside.mean()) + np.log(2 * half).sum(), np.sqrt((1 - inside.mean()) / inside.sum())


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("norm_name,p", [("l2", 2), ("l1", 1)])
def test_region_log_volume_matches_monte_carlo(d, norm_name, p):
    theta = np.array([0.3, 1.2, 0.7])[:d]
    gap = 0.7
    mc, rel_sd = _mc_log_volume(theta, gap, p)
    got = float(stats.region_log_volume(theta, gap, norm_name))
    assert abs(got - mc) < max(5 * rel_sd, 0.01), (got, mc)
    # teeth: the other norm's formula, or an isotropic ball of radius min θ·gap, is far outside the tolerance
    other = "l1" if norm_name == "l2" else "l2"
    assert abs(float(stats.region_log_volume(theta, gap, other)) - mc) > 10 * max(5 * rel_sd, 0.01)
    assert abs(float(stats.region_log_volume(np.full(d, theta.min()), gap, norm_name)) - mc) > 10 * max(
        5 * rel_sd, 0.01
    )


def test_region_log_volume_matches_closed_forms():
    r = 0.8  # σ · gap
    sigma, gap = 0.5, 1.6
    ball = {1: 2 * r, 2: np.pi * r**2, 3: 4 / 3 * np.pi * r**3, 4: np.pi**2 / 2 * r**4, 5: 8 * np.pi**2 / 15 * r**5}
    for d, vol in ball.items():
        assert np.isclose(stats.region_log_volume(np.full(d, sigma), gap, "l2"), np.log(vol), rtol=1e-12)
        cross = (2 * r) ** d / np.exp(gammaln(d + 1))
        assert np.isclose(stats.region_log_volume(np.full(d, sigma), gap, "l1"), np.log(cross), rtol=1e-12)
    # ellipsoid with semi-axes gap·θᵢ: |unit ball| · ∏ gap θᵢ (d = 3: 4/3 π abc)
    theta = np.array([[0.2, 0.5, 1.1], [0.3, 0.3, 0.3]])
    expected = np.log(4 / 3 * np.pi * np.prod(gap * theta, axis=1))
    np.testing.assert_allclose(stats.region_log_volume(theta, np.array([gap, gap]), "l2"), expected, rtol=1e-12)
    # cross-polytope with half-diagonals gap·θᵢ: 2^d ∏ gap θᵢ / d!
    np.testing.assert_allclose(
        stats.region_log_volume(theta, gap, "l1"), np.log(8 * np.prod(gap * theta, axis=1) / 6), rtol=1e-12
    )
    # an empty region (abstain, gap ≤ 0) has log volume -inf
    assert np.all(stats.region_log_volume(theta, np.array([0.0, -0.3]), "l2") == -np.inf)
