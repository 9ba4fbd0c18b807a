"""Anytime-valid confidence sequences for a binomial proportion (sequential certification).

Setting: X_1, X_2, ... i.i.d. Bernoulli(p) (p = pA = P(f(x+ε) = cA), with cA fixed *before*
these draws, e.g. from a separate selection sample as in Cohen et al. 2019). ``count`` is the
number of successes among the first ``n`` draws. A confidence sequence (CS) at level alpha gives
bounds with

    P_p( exists k : lower(count_{n_k}, n_k, alpha) > p ) <= alpha          (lower side)
    P_p( exists k : upper(count_{n_k}, n_k, alpha) < p ) <= alpha          (upper side)

simultaneously over every checkpoint n_k of a schedule fixed before seeing data, so the bound
is valid at any data-dependent stopping time on that schedule. Each side is a separate
alpha-event; both hold together with probability >= 1 - 2 alpha (>= 1 - alpha for
:class:`BetaMixture`, whose two sides come from one set).

Implemented:

* :class:`UnionCP` -- exact one-sided Clopper-Pearson at each of the K checkpoints of a known
  finite schedule, alpha split over checkpoints (evenly by default; union bound).
* :class:`BetaMixture` -- Robbins' method of mixtures with a Beta(a, b) prior (the
  beta-binomial conjugate mixture; Howard et al. 2021): by Ville's inequality valid at *every*
  n, no schedule or n_max needed. Two-sided set; each side used at level alpha.
* :class:`OneSidedBetaMixture` -- the same with the prior truncated to the alternative side
  (q > p for the lower bound), which tightens the bound a lot when p is near 0 or 1.

Pure numpy/scipy. All root finding is a vectorized bisection on monotone functions that
returns the conservative end of the final bracket (never a bound tighter than the exact one).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import numpy as np
from scipy.special import betaincc, betainccinv, betaln, xlog1py, xlogy

from smoothcert.engine.stats import lower_confidence_bound

__all__ = [
    "schedule",
    "ConfidenceSequence",
    "UnionCP",
    "BetaMixture",
    "OneSidedBetaMixture",
    "decide",
    "estimate_done",
]

_BISECT_ITERS = 64  # halves [0, 1] to below float spacing; bracket end is returned


def schedule(n_min: int, n_max: int, ratio: float) -> np.ndarray:
    """Geometric checkpoints n_min, ~n_min·ratio, ~n_min·ratio², ..., n_max.

    Strictly increasing int64; the first is ``n_min`` and the last exactly ``n_max``
    (appended if the geometric sequence does not land on it). Rounding duplicates
    (ratio close to 1) are dropped. Deterministic: it must not depend on the data.
    """
    n_min, n_max = int(n_min), int(n_max)
    if n_min < 1 or n_max < n_min:
        raise ValueError(f"need 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")
    if not ratio > 1.0:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    k = np.arange(int(np.ceil(np.log(n_max / n_min) / np.log(ratio))) + 1)
    pts = np.round(n_min * ratio ** k.astype(float)).astype(np.int64)
    pts = np.unique(np.clip(pts, n_min, n_max))
    if pts[-1] != n_max:
        pts = np.append(pts, n_max)
    return pts


def _as_counts(counts, ns) -> tuple[np.ndarray, np.ndarray]:
    c, n = np.broadcast_arrays(np.asarray(counts), np.asarray(ns))
    if np.any(n < 1) or np.any(c < 0) or np.any(c > n):
        raise ValueError("need 0 <= counts <= ns and ns >= 1")
    if np.any(c != np.round(c)) or np.any(n != np.round(n)):
        raise ValueError("counts and ns must be integers")
    return c.astype(float), n.astype(float)


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _bisect(fn: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vectorized bisection for fn(lo) > 0 >= fn(hi) style sign changes; returns (lo, hi) bracket.

    ``fn(x) > 0`` must hold on [lo, root) and ``fn(x) <= 0`` on (root, hi] (monotone sign).
    """
    lo, hi = lo.copy(), hi.copy()
    for _ in range(_BISECT_ITERS):
        mid = 0.5 * (lo + hi)
        pos = fn(mid) > 0
        lo = np.where(pos, mid, lo)
        hi = np.where(pos, hi, mid)
    return lo, hi


class ConfidenceSequence(abc.ABC):
    """A time-uniform confidence sequence for a Bernoulli mean.

    ``lower(counts, ns, alpha)`` / ``upper(counts, ns, alpha)`` are vectorized (broadcast) over
    inputs. Guarantee (each side separately): for every p, with probability >= 1 - alpha the
    bound holds at *every* allowed n simultaneously -- every n for the mixtures, every
    checkpoint of ``self.checkpoints`` for :class:`UnionCP`. ``counts`` must be the success
    count among the first ``ns`` i.i.d. draws of one input.
    """

    #: True when lower and upper at level alpha come from one set, i.e. hold *jointly* w.p. >= 1 - alpha.
    joint_two_sided: bool = False
    #: The checkpoints at which the bounds may be evaluated; None means any n.
    checkpoints: np.ndarray | None = None

    @abc.abstractmethod
    def lower(self, counts, ns, alpha: float) -> np.ndarray:
        """Lower bound: P(exists allowed n: lower > p) <= alpha."""

    def upper(self, counts, ns, alpha: float) -> np.ndarray:
        """Upper bound: P(exists allowed n: upper < p) <= alpha (by symmetry: 1 - lower of 1 - p)."""
        c, n = _as_counts(counts, ns)
        return 1.0 - self.lower(n - c, n, alpha)


class UnionCP(ConfidenceSequence):
    """Clopper-Pearson at each checkpoint of a fixed finite schedule, union bound over checkpoints.

    At checkpoint k the one-sided exact CP bound at level alpha·w_k is used, with
    ``weights`` w_k >= 0, sum w_k <= 1 (default: 1/K each). Each per-checkpoint bound fails with
    probability <= alpha·w_k, so by the union bound the bound fails at *some* checkpoint with
    probability <= alpha. Evaluating at an n not in the schedule is refused (it would be unsound).
    The even split is chosen because the schedule is finite and known before sampling; it needs
    n_max, unlike a summable split (e.g. 6/(π² k²)), and is tighter at late checkpoints.
    """

    def __init__(self, checkpoints, weights=None):
        cp = np.asarray(checkpoints, dtype=np.int64)
        if cp.ndim != 1 or cp.size == 0 or np.any(np.diff(cp) <= 0) or cp[0] < 1:
            raise ValueError("checkpoints must be a non-empty strictly increasing 1-d array of positive ints")
        w = np.full(cp.size, 1.0 / cp.size) if weights is None else np.asarray(weights, dtype=float)
        if w.shape != cp.shape or np.any(w < 0) or w.sum() > 1.0 + 1e-12:
            raise ValueError("weights must be >= 0, one per checkpoint, summing to at most 1")
        self.checkpoints = cp
        self.weights = w

    def _level(self, n: np.ndarray, alpha: float) -> np.ndarray:
        idx = np.searchsorted(self.checkpoints, n)
        idx_c = np.minimum(idx, self.checkpoints.size - 1)
        if np.any(self.checkpoints[idx_c] != n):
            bad = np.unique(n[self.checkpoints[idx_c] != n])[:5]
            raise ValueError(f"UnionCP is only valid at its checkpoints; got n = {bad.tolist()}")
        return alpha * self.weights[idx_c]

    def lower(self, counts, ns, alpha: float) -> np.ndarray:
        """Exact CP lower bound at level alpha·w_k (0 when count = 0): the Beta(c, n - c + 1) quantile at a."""
        alpha = _check_alpha(alpha)
        c, n = _as_counts(counts, ns)
        a = self._level(n, alpha)
        return np.where(a > 0, lower_confidence_bound(c, n, a), 0.0)

    def upper(self, counts, ns, alpha: float) -> np.ndarray:
        """Exact CP upper bound at level alpha·w_k (1 when count = n): the Beta(c + 1, n - c) quantile at 1 - a."""
        alpha = _check_alpha(alpha)
        c, n = _as_counts(counts, ns)
        a = self._level(n, alpha)
        with np.errstate(invalid="ignore"):
            out = betainccinv(c + 1.0, np.where(c < n, n - c, 1.0), a)
        return np.where((c < n) & (a > 0), out, 1.0)


class BetaMixture(ConfidenceSequence):
    """Beta-binomial conjugate mixture CS (Robbins' method of mixtures), valid at every n.

    For fixed p, M_n(p) = ∫ Π_i q^{X_i}(1-q)^{1-X_i} / p^{X_i}(1-p)^{1-X_i} dBeta(a,b)(q)
    = B(a+c, b+n-c) / (B(a,b) p^c (1-p)^{n-c}) is a nonnegative P_p-martingale with M_0 = 1,
    so by Ville's inequality P_p(exists n: M_n(p) >= 1/alpha) <= alpha. The CS is
    C_n = {p : M_n(p) < 1/alpha}; log M_n is convex in p with minimum <= 0 at c/n, so C_n is an
    interval [lower, upper] and lower <= p <= upper holds at all n *jointly* w.p. >= 1 - alpha
    (each side used alone at level alpha is therefore sound but conservative).
    """

    joint_two_sided = True

    def __init__(self, a: float = 0.5, b: float = 0.5):
        if not (a > 0 and b > 0):
            raise ValueError("prior parameters a, b must be > 0")
        self.a, self.b = float(a), float(b)

    def log_martingale(self, p, counts, ns) -> np.ndarray:
        """log M_n(p) (broadcast over p, counts, ns)."""
        c, n = _as_counts(counts, ns)
        p = np.asarray(p, dtype=float)
        return betaln(self.a + c, self.b + n - c) - betaln(self.a, self.b) - xlogy(c, p) - xlog1py(n - c, -p)

    def lower(self, counts, ns, alpha: float) -> np.ndarray:
        """inf C_n: the root of log M_n(p) = log(1/alpha) on [0, c/n] (0 when c = 0)."""
        return self._side(counts, ns, alpha, lower=True)

    def upper(self, counts, ns, alpha: float) -> np.ndarray:
        """sup C_n: the root of log M_n(p) = log(1/alpha) on [c/n, 1] (1 when c = n)."""
        return self._side(counts, ns, alpha, lower=False)

    def _side(self, counts, ns, alpha, lower):
        alpha = _check_alpha(alpha)
        c, n = _as_counts(counts, ns)
        thr = np.log(1.0 / alpha)
        phat = c / n
        if lower:
            # log M decreasing on [0, phat]; > thr near 0 when c > 0.
            lo, hi = _bisect(lambda p: self.log_martingale(p, c, n) - thr, np.zeros_like(phat), phat)
            return np.where(c > 0, lo, 0.0)
        # increasing on [phat, 1]: search with the sign flipped, keep the upper (conservative) end.
        lo, hi = _bisect(lambda p: thr - self.log_martingale(p, c, n), phat, np.ones_like(phat))
        return np.where(c < n, hi, 1.0)


class OneSidedBetaMixture(ConfidenceSequence):
    """One-sided mixture CS with the prior truncated to the alternative, valid at every n.

    Lower bound: for fixed p the prior is π_p = Beta(a, 1) (density ∝ q^{a-1}, a >= 1)
    conditioned on q > p, so M⁺_n(p) = E_{q~π_p}[Π_i LR_i(q, p)]
    = B(a+c, n-c+1)·I^c_p(a+c, n-c+1) / (B(a,1)·(1 - p^a)·p^c (1-p)^{n-c})
    (I^c the regularized upper incomplete beta) is a nonnegative P_p-martingale with M_0 = 1;
    Ville gives P_p(exists n: M⁺_n(p) >= 1/alpha) <= alpha, i.e. p >= inf{p' : M⁺_n(p') < 1/alpha}
    at all n w.p. >= 1 - alpha.

    Computing that infimum: d log M⁺/dp = h(p)(1 - 1/M⁺) + (np - c)/(p(1-p)) with h the
    prior's hazard, and p(1-p)h(p) <= p for Beta(a, 1), a >= 1; so M⁺ is strictly decreasing on
    (0, p*] with p* = c/(n+1). If M⁺(p*) < 1/alpha the infimum is the unique root in (0, p*)
    (bisection, lower bracket end returned); otherwise the infimum is >= p* and p* is returned.
    The upper bound is the mirror image (prior Beta(1, a) truncated to q < p), 1 - lower(n-c).
    Each side holds at level alpha; jointly at 1 - 2 alpha.
    """

    def __init__(self, a: float = 1.0):
        if not a >= 1.0:
            raise ValueError("a must be >= 1 (the monotonicity argument needs it)")
        self.a = float(a)

    def log_martingale(self, p, counts, ns) -> np.ndarray:
        """log M⁺_n(p) for the lower side (broadcast over p, counts, ns; 0 < p < 1)."""
        c, n = _as_counts(counts, ns)
        p = np.asarray(p, dtype=float)
        a = self.a
        with np.errstate(divide="ignore"):
            log_tail = np.log(betaincc(a + c, n - c + 1.0, p))
            log_prior_mass = np.log(-np.expm1(a * np.log(p)))  # log(1 - p^a)
        return betaln(a + c, n - c + 1.0) + np.log(a) + log_tail - log_prior_mass - xlogy(c, p) - xlog1py(n - c, -p)

    def lower(self, counts, ns, alpha: float) -> np.ndarray:
        """inf{p : M⁺_n(p) < 1/alpha} (or the conservative p* = c/(n+1)); 0 when c = 0."""
        alpha = _check_alpha(alpha)
        c, n = _as_counts(counts, ns)
        thr = np.log(1.0 / alpha)
        pstar = c / (n + 1.0)
        safe = np.where(c > 0, pstar, 0.5)  # avoid p = 0 for c = 0 rows (masked below)
        above = self.log_martingale(safe, c, n) >= thr
        lo, _ = _bisect(lambda p: self.log_martingale(p, c, n) - thr, np.zeros_like(safe), safe)
        out = np.where(above, safe, lo)
        return np.where(c > 0, out, 0.0)


def decide(cs: ConfidenceSequence, counts, ns, threshold: float, alpha: float) -> np.ndarray:
    """Sequential test of p > threshold at the current checkpoint(s): +1, -1 or 0 per input.

    +1 (certify: lower > threshold), -1 (stop, not certifiable: upper < threshold), 0 (continue).
    Guarantee: for any stopping rule on the allowed checkpoints, P(ever +1 while p <= threshold)
    <= alpha and P(ever -1 while p >= threshold) <= alpha (each is a failure of one side of the CS).
    A wrong -1 only costs power; the certificate's soundness rests on the +1 side.
    """
    lo = cs.lower(counts, ns, alpha)
    hi = cs.upper(counts, ns, alpha)
    return np.where(lo > threshold, 1, np.where(hi < threshold, -1, 0)).astype(np.int8)


def estimate_done(
    cs: ConfidenceSequence,
    counts,
    ns,
    alpha: float,
    radius_of_p: Callable[[np.ndarray], np.ndarray],
    rel_precision: float,
) -> np.ndarray:
    """Stop when the radius is pinned down: radius_of_p(lower) >= (1 - rel_precision)·radius_of_p(upper).

    ``radius_of_p`` must be non-decreasing (e.g. σ·Φ⁻¹(p) for ℓ2). Also done when
    radius_of_p(upper) <= 0 (the input will abstain). Since both sides of the CS hold at all
    checkpoints w.p. >= 1 - 2 alpha (1 - alpha if ``cs.joint_two_sided``), the true radius lies in
    [radius_of_p(lower), radius_of_p(upper)] at the stopping time with that probability; the
    certified radius to report is radius_of_p(lower), sound at level alpha on its own.
    """
    r_lo = np.asarray(radius_of_p(cs.lower(counts, ns, alpha)), dtype=float)
    r_hi = np.asarray(radius_of_p(cs.upper(counts, ns, alpha)), dtype=float)
    return (r_hi <= 0) | (r_lo >= (1.0 - rel_precision) * r_hi)
