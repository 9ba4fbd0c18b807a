"""Closed-form checks of the statistics: Clopper-Pearson, radii, App. D bound, volumes."""

import numpy as np
import pytest
from scipy.stats import binom, norm

from smoothcert.engine import stats


def test_clopper_pearson_all_successes_closed_form():
    # P(X = n | p) = p^n, so the one-sided (1 - alpha) lower bound is alpha^(1/n).
    for n, alpha in [(10, 0.05), (100, 0.001), (1000, 0.01)]:
        assert stats.lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n), rel=1e-9)


def test_clopper_pearson_is_exact_tail_inversion():
    # The bound p solves P(X >= k | p) = alpha for 0 < k < n.
    n, k, alpha = 200, 150, 0.001
    p = stats.lower_confidence_bound(k, n, alpha)
    assert binom.sf(k - 1, n, p) == pytest.approx(alpha, rel=1e-6)
    assert stats.lower_confidence_bound(0, n, alpha) == 0.0


def test_clopper_pearson_is_statsmodels_bit_for_bit():
    # The engine computes the Beta quantile itself (scipy.special) to keep scipy.stats out of every job's imports;
    # it must equal the reference library's exact interval to the last bit, at every count, n and alpha.
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(0)
    n = rng.integers(1, 200_000, 5_000)
    k = np.minimum((rng.random(5_000) * (n + 1)).astype(int), n)
    alpha = 10 ** rng.uniform(-8, -1, 5_000)
    ref, _ = proportion_confint(k, n, alpha=2 * alpha, method="beta")
    assert np.array_equal(stats.lower_confidence_bound(k, n, alpha), np.nan_to_num(ref, nan=0.0))
    assert isinstance(stats.lower_confidence_bound(3, 10, 0.01), float)


def test_normal_quantile_is_scipy_stats():
    p = np.linspace(1e-9, 1 - 1e-9, 1001)
    assert np.array_equal(stats.gap(p, "l2"), norm.ppf(p))
    assert np.array_equal(stats.p_of_gap(norm.ppf(p), "l2"), norm.cdf(norm.ppf(p)))


def test_clopper_pearson_vectorized_matches_scalar():
    counts = np.array([0, 5, 50, 99, 100])
    vec = stats.lower_confidence_bound(counts, 100, 0.01)
    assert np.allclose(vec, [stats.lower_confidence_bound(int(c), 100, 0.01) for c in counts])


def test_l2_radius_is_sigma_times_inverse_normal():
    assert stats.radius(0.5, norm.cdf(1.0), "l2") == pytest.approx(0.5)
    assert stats.radius(0.25, norm.cdf(2.0), "l2") == pytest.approx(0.5)
    assert stats.radius(1.0, 0.5, "l2") == pytest.approx(0.0)


def test_l1_uniform_radius():
    # Uniform noise U[-σ, σ]: ℓ1 radius 2σ(p̲A - 1/2).
    assert stats.radius(0.5, 0.9, "l1") == pytest.approx(0.4)
    assert stats.radius(2.0, 0.5, "l1") == pytest.approx(0.0)


def test_unknown_norm_rejected():
    with pytest.raises(ValueError):
        stats.gap(0.9, "linf")


def test_log_volume_ball_and_cross_polytope():
    # Unit disc area π, unit ℓ1 ball in 2-D area 2, 3-D ℓ1 ball volume 4/3.
    assert np.exp(stats.region_log_volume(np.ones(2), 1.0, "l2")) == pytest.approx(np.pi)
    assert np.exp(stats.region_log_volume(np.ones(2), 1.0, "l1")) == pytest.approx(2.0)
    assert np.exp(stats.region_log_volume(np.ones(3), 1.0, "l1")) == pytest.approx(4 / 3)
    # ellipse with semi-axes 2·0.5 and 3·0.5: π·1·1.5
    assert np.exp(stats.region_log_volume(np.array([2.0, 3.0]), 0.5, "l2")) == pytest.approx(np.pi * 1.5)
    assert stats.region_log_volume(np.ones(2), 0.0, "l2") == -np.inf


def test_appendix_d_bound_hand_computed():
    hits = np.array([1] * 90 + [0] * 10, dtype=bool)
    q = binom.ppf(0.999, 100, 0.001)  # = 1 (P(X=0) = 0.905, P(X<=1) = 0.9954, P(X<=2) = 0.99985)
    assert q == 2.0
    assert stats.certified_accuracy_lower_bound(hits, 0.001, rho=0.001) == pytest.approx(0.88)
    assert stats.certified_accuracy_lower_bound(np.zeros(0, bool), 0.001) == 0.0


def test_binomial_pvalue_symmetric():
    assert stats.binomial_pvalue(50, 50) == pytest.approx(1.0)
    assert stats.binomial_pvalue(100, 0) < 1e-20
