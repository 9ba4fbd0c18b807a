"""Confidence sequences for sequential certification (smoothcert.engine.sequential).

The coverage checks are exact: a dynamic programme over the Bernoulli path carries the
distribution of the success count from checkpoint to checkpoint, removes (and adds up) the
mass of paths whose bound has already crossed the true p, and so gives
P_p(exists checkpoint k: lower_k > p) with no Monte-Carlo error.

Tightness at n = 100,000, alpha = 0.001 (one-sided lower bounds; from our own run, see
``test_tightness_against_fixed_n``; UnionCP over schedule(100, 100_000, 2), K = 11 checkpoints):

    c/n     fixed-N CP   UnionCP    BetaMixture(1/2,1/2)   OneSidedBetaMixture(1)
    0.999   0.998651     0.998570   0.998403               0.998524
    0.6     0.595201     0.594187   0.592117               0.592536
    1.0     0.999931     0.999907   0.999868               0.999909

so on a known finite schedule UnionCP is the tightest of the sequential bounds at n_max (the
price of sequential validity vs fixed-N CP is ~0.6% (0.999) and ~1.1% (0.6) of the ℓ2 radius
σΦ⁻¹(p̲)); the mixtures cost ~1-3% but need no schedule and no n_max (valid at every n);
the one-sided mixture is the best at c = n.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import beta as beta_dist
from scipy.stats import binom, norm
from statsmodels.stats.proportion import proportion_confint

from smoothcert.engine.sequential import (
    BetaMixture,
    ConfidenceSequence,
    OneSidedBetaMixture,
    UnionCP,
    decide,
    estimate_done,
    schedule,
)

ALPHA = 0.05
SCHED = schedule(10, 200, 1.5)  # 10, 15, 22, 34, 51, 76, 114, 171, 200
EVERY_N = np.arange(1, 201)  # the mixtures are valid at every n: check all of them
P_GRID = (0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)


class PerCheckpointCP(ConfidenceSequence):
    """DELIBERATELY BROKEN: exact CP at full alpha at every checkpoint, no union over checkpoints."""

    def lower(self, counts, ns, alpha):
        c, n = np.broadcast_arrays(np.asarray(counts, float), np.asarray(ns, float))
        return np.where(c > 0, beta_dist.ppf(alpha, np.maximum(c, 1), n - c + 1), 0.0)


def bound_tables(cs: ConfidenceSequence, ns, alpha: float) -> dict:
    """{n: (lower[c], upper[c]) for c = 0..n}, computed in one vectorized call per side."""
    ns = np.asarray(ns)
    cc = np.concatenate([np.arange(n + 1) for n in ns])
    nn = np.concatenate([np.full(n + 1, n) for n in ns])
    lo = cs.lower(cc, nn, alpha)
    hi = cs.upper(cc, nn, alpha)
    out, start = {}, 0
    for n in ns:
        out[int(n)] = (lo[start : start + n + 1], hi[start : start + n + 1])
        start += n + 1
    return out


def crossing_probability(tables: dict, p: float, side: str) -> float:
    """Exact P_p(exists checkpoint n in tables: lower_n > p) (side 'lower') or upper_n < p ('upper')."""
    dist = np.array([1.0])  # distribution of the count at n_prev over paths not yet crossed
    n_prev, crossed = 0, 0.0
    for n in sorted(tables):
        m = n - n_prev
        dist = np.convolve(dist, binom.pmf(np.arange(m + 1), m, p))
        lo, hi = tables[n]
        bad = lo > p if side == "lower" else hi < p
        crossed += dist[bad].sum()
        dist[bad] = 0.0
        n_prev = n
    return float(crossed)


def worst_case_ps(tables: dict, side: str, k: int = 150) -> np.ndarray:
    """Candidate worst-case p: crossing probability jumps at bound values, so the sup over p is
    approached just on the near side of them; take a spread of such points plus a grid."""
    vals = np.unique(np.concatenate([tables[n][0 if side == "lower" else 1] for n in tables]))
    vals = vals[(vals > 1e-3) & (vals < 1 - 1e-3)]
    pick = vals[np.linspace(0, vals.size - 1, min(k, vals.size)).astype(int)]
    near = pick - 1e-12 if side == "lower" else pick + 1e-12
    return np.concatenate([near, P_GRID])


SOUND = {
    "UnionCP": (lambda: UnionCP(SCHED), SCHED),
    "BetaMixture": (lambda: BetaMixture(), EVERY_N),
    "BetaMixture(1,1)": (lambda: BetaMixture(1.0, 1.0), EVERY_N),
    "OneSidedBetaMixture": (lambda: OneSidedBetaMixture(), EVERY_N),
}


@pytest.fixture(scope="module")
def tables():
    return {name: bound_tables(make(), ns, ALPHA) for name, (make, ns) in SOUND.items()}


# ----------------------------------------------------------------------------- schedule
def test_schedule_geometric_and_ends():
    s = schedule(100, 100_000, 2.0)
    assert s.dtype.kind == "i" and s[0] == 100 and s[-1] == 100_000
    assert np.all(np.diff(s) > 0)
    assert s.tolist() == [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 100_000]
    assert schedule(7, 7, 2.0).tolist() == [7]
    t = schedule(10, 30, 1.01)  # rounding duplicates dropped
    assert t[0] == 10 and t[-1] == 30 and np.all(np.diff(t) > 0)
    assert SCHED.tolist() == [10, 15, 22, 34, 51, 76, 114, 171, 200]
    for bad in [(0, 10, 2.0), (10, 5, 2.0), (10, 20, 1.0)]:
        with pytest.raises(ValueError):
            schedule(*bad)


# ----------------------------------------------------------------------------- coverage (exact)
@pytest.mark.parametrize("name", list(SOUND))
@pytest.mark.parametrize("side", ["lower", "upper"])
def test_time_uniform_coverage_exact(tables, name, side):
    """P_p(bound crosses p at ANY checkpoint) <= alpha, exactly, over a grid and near-worst-case p."""
    tab = tables[name]
    worst = max(crossing_probability(tab, p, side) for p in worst_case_ps(tab, side))
    assert worst <= ALPHA + 1e-9, (name, side, worst)


def test_check_has_power_against_no_union_over_checkpoints():
    """CP at full alpha at each checkpoint (no union over stopping times) must fail the same check."""
    broken = bound_tables(PerCheckpointCP(), SCHED, ALPHA)
    sound = bound_tables(UnionCP(SCHED), SCHED, ALPHA)
    probs = {p: crossing_probability(broken, p, "lower") for p in (0.2, 0.5, 0.8)}
    for p, prob in probs.items():
        assert prob > 2 * ALPHA, (p, prob)  # clearly above alpha (about 0.12-0.15)
        assert crossing_probability(sound, p, "lower") <= ALPHA
    # and at any single fixed n it is a correct (1 - alpha) bound: the failure is only the union
    for n in SCHED:
        assert crossing_probability({int(n): broken[int(n)]}, 0.5, "lower") <= ALPHA


def test_mixture_valid_at_every_n_but_union_only_at_checkpoints():
    cs = UnionCP(SCHED)
    with pytest.raises(ValueError, match="checkpoints"):
        cs.lower(5, 12, ALPHA)
    BetaMixture().lower(5, 12, ALPHA)  # any n is fine
    OneSidedBetaMixture().lower(5, 12, ALPHA)


# ----------------------------------------------------------------------------- reductions
def test_union_cp_single_checkpoint_is_clopper_pearson():
    n = 1000
    cs = UnionCP([n])
    c = np.arange(n + 1)
    for alpha in (0.001, 0.05):
        lo_ref, hi_ref = proportion_confint(c, n, alpha=2 * alpha, method="beta")
        assert np.array_equal(cs.lower(c, n, alpha), np.nan_to_num(lo_ref, nan=0.0))  # bit for bit
        assert np.array_equal(cs.upper(c, n, alpha), np.nan_to_num(hi_ref, nan=1.0))


def test_union_cp_splits_alpha_evenly():
    cs = UnionCP(SCHED)
    single = UnionCP([51])
    assert cs.lower(30, 51, 0.09) == pytest.approx(single.lower(30, 51, 0.01))
    with pytest.raises(ValueError):
        UnionCP(SCHED, weights=np.full(SCHED.size, 0.2))  # sums to > 1


@pytest.mark.parametrize("c,n", [(0, 10), (3, 10), (10, 10), (37, 50), (120, 200)])
def test_beta_mixture_closed_form_matches_integral(c, n):
    a, b, p = 0.5, 0.5, 0.4

    def integrand(q):
        return beta_dist.pdf(q, a, b) * (q / p) ** c * ((1 - q) / (1 - p)) ** (n - c)

    ref = integrate.quad(integrand, 0, 1, points=[c / n], limit=200, epsabs=0)[0]
    assert BetaMixture(a, b).log_martingale(p, c, n) == pytest.approx(np.log(ref), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("c,n,p", [(3, 10, 0.1), (10, 10, 0.6), (37, 50, 0.5), (190, 200, 0.9)])
@pytest.mark.parametrize("a", [1.0, 3.0])
def test_one_sided_mixture_closed_form_matches_integral(c, n, p, a):
    def prior(q):
        return a * q ** (a - 1) / (1 - p**a)  # Beta(a, 1) conditioned on q > p

    def integrand(q):
        return prior(q) * (q / p) ** c * ((1 - q) / (1 - p)) ** (n - c)

    ref = integrate.quad(integrand, p, 1, points=[max(c / n, p)], limit=200, epsabs=0)[0]
    assert OneSidedBetaMixture(a).log_martingale(p, c, n) == pytest.approx(np.log(ref), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("cs", [BetaMixture(), OneSidedBetaMixture()], ids=["two", "one"])
def test_mixture_bound_is_the_boundary_and_conservative(cs):
    """M_n(lower) ~= 1/alpha, and M_n >= 1/alpha just below the returned bound (no overshoot)."""
    thr = np.log(1 / ALPHA)
    c = np.array([5, 50, 150, 199])
    n = 200
    lo = cs.lower(c, n, ALPHA)
    np.testing.assert_allclose(cs.log_martingale(lo, c, n), thr, atol=1e-6)
    assert np.all(cs.log_martingale(lo * (1 - 1e-9), c, n) >= thr)
    # the set below the bound is excluded everywhere (the monotonicity the inf relies on)
    for ci, li in zip(c, lo):
        grid = np.linspace(li * 1e-3, li, 400, endpoint=False)
        assert np.all(cs.log_martingale(grid, ci, n) >= thr)


# ----------------------------------------------------------------------------- sanity
@pytest.mark.parametrize(
    "make", [lambda: UnionCP(SCHED), BetaMixture, OneSidedBetaMixture], ids=["union", "mix", "onesided"]
)
def test_bounds_bracket_the_estimate_and_are_monotone(make):
    cs = make()
    for n in (10, 51, 200):
        c = np.arange(n + 1)
        lo, hi = cs.lower(c, n, ALPHA), cs.upper(c, n, ALPHA)
        assert np.all((0 <= lo) & (lo <= c / n) & (c / n <= hi) & (hi <= 1))
        assert lo[0] == 0.0 and hi[-1] == 1.0
        assert np.all(np.diff(lo) > 0) and np.all(np.diff(hi) > 0)
        assert np.all(cs.lower(c, n, ALPHA / 10) <= lo)  # smaller alpha, wider
    assert cs.lower(np.array([[1, 2], [3, 4]]), 10, ALPHA).shape == (2, 2)
    with pytest.raises(ValueError):
        cs.lower(11, 10, ALPHA)


def test_decide_and_estimate_done():
    cs = UnionCP(SCHED)
    codes = decide(cs, np.array([200, 100, 5]), 200, threshold=0.5, alpha=ALPHA)
    assert codes.tolist() == [1, 0, -1]

    def radius(p):
        return norm.ppf(p)

    done = estimate_done(
        BetaMixture(),
        np.array([10, 180, 100_000, 99_900]),
        np.array([200, 200, 100_000, 100_000]),
        ALPHA,
        radius,
        rel_precision=0.1,
    )
    # abstain certain; loose at n=200; c = n: upper = 1 gives infinite radius; tight at 1e5
    assert done.tolist() == [True, False, False, True]


def test_vectorized_speed_is_adequate():
    """Not a timing assert: 1000 inputs at n = 100,000 go through every CS (see module docstring)."""
    c = np.random.default_rng(0).integers(0, 100_001, 1000)
    for cs in (UnionCP(schedule(100, 100_000, 2.0)), BetaMixture(), OneSidedBetaMixture()):
        lo, hi = cs.lower(c, 100_000, 1e-3), cs.upper(c, 100_000, 1e-3)
        assert np.all(lo <= c / 100_000) and np.all(hi >= c / 100_000)


def test_tightness_against_fixed_n():
    """The numbers in the module docstring; sequential validity costs tightness at a fixed n."""
    n, alpha = 100_000, 1e-3
    union = UnionCP(schedule(100, n, 2.0))
    rows = {}
    for c in (99_900, 60_000, 100_000):
        fixed = float(UnionCP([n]).lower(c, n, alpha))
        rows[c] = [fixed] + [float(cs.lower(c, n, alpha)) for cs in (union, BetaMixture(), OneSidedBetaMixture())]
        print(c / n, " ".join(f"{v:.6f}" for v in rows[c]))
        assert max(rows[c][1:]) <= fixed
    # on a known finite schedule the union of exact CP bounds is tightest except at c = n
    assert rows[99_900][1] == max(rows[99_900][1:]) and rows[60_000][1] == max(rows[60_000][1:])
    assert rows[100_000][3] >= rows[100_000][1]
    assert rows[99_900][1] == pytest.approx(0.998570, abs=2e-6)
    assert rows[60_000][1] == pytest.approx(0.594187, abs=2e-6)
