"""Memory-based certification: sound certificates for data-dependent smoothing.

With a per-input σ/θ, the certificate of input x alone does not certify the
data-dependent classifier: a nearby input may be smoothed with another θ and
answer another class. The memory classifier fixes this (Alfarra et al., DDRS;
Eiras et al., ANCER): inputs are processed in test-set (idx) order and every
certified region is recorded. For a new input x of predicted class c with region
Rₓ = {z : ‖(z − x) ⊘ θₓ‖_p ≤ g}:

1. if x lies in a recorded region of another class k, answer k, with the largest
   copy of that region's shape centred at x that fits inside it (``inside``);
2. else shrink g until Rₓ is disjoint from every recorded region of another
   class (``shrunk``), or abstain when nothing is left (``abstained``);
3. overlaps with regions of the same class are allowed;
4. record the region answered with.

Guarantee (the invariant tests check independently): recorded regions of
different classes never intersect, and every answered region lies in the set
where the memory classifier answers its class.

Geometry. Regions are axis-aligned ellipsoids (``l2``) or generalized
cross-polytopes (``l1``). Every shrink uses a *lower bound* on the distance
    d_k = min { ‖(z − x) ⊘ θₓ‖_p : z ∈ R_k },
so Rₓ with gap below d_k is disjoint from R_k. The bound is exact in exact
arithmetic (ℓ1: fractional-knapsack LP solution evaluated through its dual;
ℓ2: the Lagrange dual of the convex QP, maximized with scipy's vectorized
Newton) and is valid for *any* multiplier, so solver inaccuracy can only
shrink more, never less; a relative safety margin covers rounding.
Vectorized screens (centre distance vs. largest semi-axes, in each norm) rule
out most pairs before the dual is evaluated.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize

from smoothcert.engine import stats
from smoothcert.engine.certificates import MEMORY_ACTIONS
from smoothcert.errors import require

ACTIONS = MEMORY_ACTIONS
_SAFETY = 1e-9  # relative margin applied to every computed gap (covers rounding)
_ROUND = 1e-12  # relative floating error allowance inside the dual bounds
_CHUNK = 64  # pairs solved together in the branch-and-bound refinement
_BLOCK = 256  # regions screened together, in ascending order of the screen-0 bound


# ---------------------------------------------------------------------------------------------------------------
# Geometry (vectorized over recorded regions k)
# ---------------------------------------------------------------------------------------------------------------


def _check_norm(norm: str) -> None:
    require(norm in stats.NORMS, f"unknown norm {norm!r}; allowed: {list(stats.NORMS)}")


def region_gauge(points: np.ndarray, centers: np.ndarray, thetas: np.ndarray, norm: str) -> np.ndarray:
    """‖(z − c_k) ⊘ θ_k‖_p for points z (broadcast against (m, d) centres): z ∈ R_k iff this ≤ g_k."""
    u = np.abs(points - centers) / thetas
    return np.sqrt(np.einsum("...j,...j->...", u, u)) if norm == "l2" else u.sum(-1)


def distance_lower_bound(
    x: np.ndarray,
    theta_x: np.ndarray,
    centers: np.ndarray,
    thetas: np.ndarray,
    gaps: np.ndarray,
    norm: str,
    exact: bool = True,
    newton_iter: int = 100,
) -> np.ndarray:
    """Lower bound on d_k = min {‖(z − x) ⊘ θₓ‖_p : z ∈ R_k} for each region k (0 when x ∈ R_k).

    Exact up to rounding (tight), and never above d_k: Rₓ with any gap < bound is disjoint from R_k.

    ℓ2: weak duality, q(λ) = Σ_j λ w_j v_j Δ_j² / (w_j + λ v_j) − λ g_k² ≤ d_k² for every λ ≥ 0
    (w = θₓ⁻², v = θ_k⁻², Δ = x − c_k); λ is the root of q'(λ) = 0 (strong duality), found by
    ``scipy.optimize.newton`` started left of the root (q' is convex and decreasing there, so Newton
    rises monotonically to it); ``exact=False`` evaluates q only at the isotropic guess λ̂ (one
    vectorized pass, still a valid bound, used as a screen).
    ℓ1: the LP min Σ δ_j/θₓⱼ s.t. Σ (|Δ_j| − δ_j)/θ_kj ≤ g_k, 0 ≤ δ_j ≤ |Δ_j|
    is a fractional knapsack (cheapest ratio θ_kj/θₓⱼ first); its value is evaluated through the dual
    L(μ) = μE − Σ_j R_j max(0, μ − κ_j) at the critical ratio, a lower bound for any μ ≥ 0.
    """
    _check_norm(norm)
    centers = np.atleast_2d(np.asarray(centers, dtype=float))
    thetas = np.atleast_2d(np.asarray(thetas, dtype=float))
    gaps = np.atleast_1d(np.asarray(gaps, dtype=float))
    x = np.asarray(x, dtype=float)
    theta_x = np.asarray(theta_x, dtype=float)
    m = len(centers)
    out = np.zeros(m)
    if m == 0:
        return out
    delta = np.abs(x - centers)
    if norm == "l1":
        cap = delta / thetas  # R_j: reduction available on axis j
        excess = cap.sum(1) - gaps  # E: how far outside R_k (in its gauge)
        ratio = thetas / theta_x  # κ_j: cost per unit reduction
        rows = np.flatnonzero(excess > 0)
        if len(rows):
            order = np.argsort(ratio[rows], axis=1, kind="stable")
            r_sorted = np.take_along_axis(cap[rows], order, 1)
            k_sorted = np.take_along_axis(ratio[rows], order, 1)
            crit = np.minimum((np.cumsum(r_sorted, 1) < excess[rows, None]).sum(1), cap.shape[1] - 1)
            mu = k_sorted[np.arange(len(rows)), crit]
            hinge = cap[rows] * np.maximum(0.0, mu[:, None] - ratio[rows])
            value = mu * excess[rows] - hinge.sum(1)
            err = _ROUND * mu * (2 * cap[rows].sum(1) + gaps[rows])
            out[rows] = np.maximum(0.0, value - err)
        return out
    vd = delta**2 / thetas**2  # v_j Δ_j²  (v = θ_k⁻²)
    ratio = (theta_x / thetas) ** 2  # r_j = v_j / w_j  (w = θₓ⁻²)
    g2 = gaps**2
    rho2 = vd.sum(1)
    point = np.flatnonzero((gaps <= 0) & (rho2 > 0))  # R_k = {c_k}: the distance is ‖(x − c_k) ⊘ θₓ‖₂
    out[point] = np.sqrt((delta[point] ** 2 / theta_x**2).sum(1)) * (1.0 - _ROUND)
    rows = np.flatnonzero((rho2 > g2) & (gaps > 0))  # x outside R_k (q'(0) > 0)
    if len(rows):
        vd, ratio, g2, rho2 = vd[rows], ratio[rows], g2[rows], rho2[rows]
        # λ̂: the exact multiplier when θₓ and θ_k are isotropic, with r replaced by its vΔ²-weighted mean
        lam0 = (np.sqrt(rho2 / g2) - 1.0) * rho2 / (vd * ratio).sum(1)
        if exact:

            def slope(lam):  # q'(λ); reported as 0 once |q'| ≤ 1e-12 g² (relative stop, then dp = 0)
                value = (vd / (1.0 + lam[:, None] * ratio) ** 2).sum(1) - g2
                return np.where(np.abs(value) <= 1e-12 * g2, 0.0, value)

            def curvature(lam):
                return -2.0 * (vd * ratio / (1.0 + lam[:, None] * ratio) ** 3).sum(1)

            start = np.where(slope(lam0) >= 0, lam0, 0.0)  # left of the root: Newton then rises monotonically
            lam = start
            if len(rows) == 1:  # scipy's vectorized Newton needs two or more starts
                start, vd, ratio, g2 = (np.repeat(a, 2, 0) for a in (start, vd, ratio, g2))
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                try:
                    lam = optimize.newton(slope, start, fprime=curvature, maxiter=newton_iter, tol=1e-300)[: len(rows)]
                except RuntimeError:  # none converged: keep the (valid, looser) starting multipliers
                    pass
            vd, ratio, g2 = vd[: len(rows)], ratio[: len(rows)], g2[: len(rows)]
            lam = np.where(np.isfinite(lam) & (lam > 0), lam, 0.0)
        else:
            lam = lam0
        terms = (lam[:, None] * vd / (1.0 + lam[:, None] * ratio)).sum(1)
        q = terms - lam * g2 - _ROUND * (terms + lam * g2)
        out[rows] = np.sqrt(np.maximum(q, 0.0))
    return out


def may_intersect(c1, theta1, g1, c2, theta2, g2, norm: str) -> bool:
    """Conservative intersection test of two closed regions: False only if they are provably disjoint."""
    c1, theta1, c2, theta2 = (np.asarray(a, dtype=float) for a in (c1, theta1, c2, theta2))
    if g1 <= 0:  # R1 is the point c1
        return bool(region_gauge(c1, c2, theta2, norm) <= g2 * (1.0 + _SAFETY) + 0.0)
    bound = distance_lower_bound(c1, theta1, c2[None], theta2[None], [max(g2, 0.0)], norm)[0]
    return not bound > g1


def inscribed_gap(x: np.ndarray, center: np.ndarray, theta: np.ndarray, gap: float, norm: str) -> float:
    """Largest g' (≤, by a safety margin) with {‖(z − x) ⊘ θ‖_p ≤ g'} ⊆ {‖(z − c) ⊘ θ‖_p ≤ gap}.

    Exact for norm balls in the θ-scaled space: g' = gap − ‖(x − c) ⊘ θ‖_p (triangle inequality, tight
    along the ray from c through x); ≤ 0 when x is not strictly inside.
    """
    s = region_gauge(np.asarray(x, float), np.asarray(center, float), np.asarray(theta, float), norm)
    return float(_inscribed(s, np.asarray(gap, float)))


def _inscribed(gauge: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """gap − gauge, lowered by the rounding allowance and the safety margin (≤ 0: not strictly inside)."""
    value = gap - gauge * (1.0 + _ROUND) - _ROUND * gap
    return np.where(value > 0, value * (1.0 - _SAFETY), value)


# ---------------------------------------------------------------------------------------------------------------
# The memory
# ---------------------------------------------------------------------------------------------------------------


class Memory:
    """Recorded certified regions, grown one input at a time (in idx order).

    State arrays (first ``len(self)`` rows valid): ``idx``, ``center`` (n, d), ``label``, ``theta`` (n, d),
    ``gap`` (final). Invariant: regions of different labels are pairwise disjoint (see module docstring).
    """

    def __init__(self, norm: str, d: int, capacity: int = 1024, answer_abstained: bool = False):
        _check_norm(norm)
        require(int(d) >= 1, f"memory dimension must be >= 1, got {d}")
        self.norm, self.d, self.n = norm, int(d), 0
        self.answer_abstained = answer_abstained
        cap = max(1, int(capacity))
        self._idx = np.zeros(cap, dtype=np.int64)
        self._center = np.zeros((cap, self.d))
        self._label = np.zeros(cap, dtype=np.int64)
        self._theta = np.ones((cap, self.d))
        self._gap = np.zeros(cap)
        self._extent = np.zeros(cap)  # max_j θ_kj g_k: R_k ⊆ {‖z − c_k‖_p ≤ extent}
        self._sqnorm = np.zeros(cap)  # ‖c_k‖²
        self.last_theta = np.ones(self.d)  # θ of the region answered by the last process() call

    def __len__(self) -> int:
        return self.n

    idx = property(lambda self: self._idx[: self.n])
    center = property(lambda self: self._center[: self.n])
    label = property(lambda self: self._label[: self.n])
    theta = property(lambda self: self._theta[: self.n])
    gap = property(lambda self: self._gap[: self.n])

    def arrays(self) -> dict:
        """Copies of the recorded regions: ``idx, center, label, theta, gap`` and the scalar ``norm``."""
        out = {k: getattr(self, k).copy() for k in ("idx", "center", "label", "theta", "gap")}
        return out | {"norm": np.str_(self.norm)}

    def _record(self, idx: int, center: np.ndarray, label: int, theta: np.ndarray, gap: float) -> None:
        if self.n == len(self._idx):  # full: double every array (θ padded with ones, the rest with zeros)
            for name in ("_idx", "_center", "_label", "_theta", "_gap", "_extent", "_sqnorm"):
                old = getattr(self, name)
                pad = np.ones_like(old) if name == "_theta" else np.zeros_like(old)
                setattr(self, name, np.concatenate([old, pad]))
        i = self.n
        self._idx[i], self._center[i], self._label[i] = idx, center, label
        self._theta[i], self._gap[i], self._extent[i] = theta, gap, float(theta.max()) * gap
        self._sqnorm[i] = float(center @ center)
        self.n += 1

    def _check_input(self, center, theta, gap):
        center = np.asarray(center, dtype=float).reshape(-1)
        theta = np.asarray(theta, dtype=float).reshape(-1)
        require(
            center.shape == (self.d,) and theta.shape == (self.d,),
            f"memory input has {center.size} coordinates and {theta.size} θ values, expected {self.d}",
        )
        require(np.isfinite(center).all(), "memory input centre holds NaN or inf")
        require(np.isfinite(theta).all() and (theta > 0).all(), "memory input θ holds NaN, inf or non-positive values")
        require(np.isfinite(gap) and gap >= 0, f"memory input gap {gap} is not a finite non-negative number")
        return center, theta, float(gap)

    def process(
        self, idx: int, center, label: int, theta, gap: float, candidates: np.ndarray | None = None
    ) -> tuple[int, float, str]:
        """Decide the memory classifier's answer for one input and record it; return (label, gap, action).

        ``label`` is the per-input certified prediction (−1: abstained, passed through unrecorded unless
        ``answer_abstained``). The region answered with is centred at ``center`` with the returned gap and
        θ = ``theta`` — except for ``inside``, where θ is that of the containing region (see
        :attr:`last_theta`). Every non-abstained answer is recorded.

        ``candidates`` (memory positions; default: all) limits the regions looked at. Sound only if every
        region left out is provably disjoint from this input's region and does not contain its centre, or
        lies inside a candidate of its own class with the same θ (as :func:`candidate_pairs` ensures).
        """
        center, theta, gap = self._check_input(center, theta, gap)
        label = int(label)
        self.last_theta = theta
        if label < 0 and not self.answer_abstained:
            return label, 0.0, "none"
        rows = np.arange(self.n) if candidates is None else np.asarray(candidates, dtype=np.int64)
        if len(rows):
            # screen 0 (one pass over the rows): R_k ⊆ {‖z − c_k‖_p ≤ extent_k} and
            # ‖(z − x) ⊘ θₓ‖_p ≥ ‖z − x‖_p / max θₓ. ℓ2: ‖x − c_k‖₂ from ‖x‖² + ‖c_k‖² − 2 xᵀc_k (BLAS),
            # lowered by a bound on its rounding error, so it never overestimates the distance.
            whole = candidates is None
            centers = self._center[: self.n] if whole else self._center[rows]
            if self.norm == "l2":
                xx = float(center @ center)
                sqn = self._sqnorm[: self.n] if whole else self._sqnorm[rows]
                sq = sqn + xx - 2.0 * (centers @ center)
                sq -= 4.0 * (self.d + 2) * np.finfo(float).eps * (sqn + xx)
                dist = np.sqrt(np.maximum(sq, 0.0))
            else:
                dist = np.abs(centers - center).sum(1)
            ext = self._extent[rows]
            near_mask = dist - ext <= _SAFETY * (dist + ext)
            reach_mask = dist - ext - _SAFETY * (dist + ext) < gap * float(theta.max())
            keep = np.flatnonzero((self._label[rows] != label) & (near_mask | reach_mask))
            other, dist, ext = rows[keep], dist[keep], ext[keep]
            near_mask, reach_mask = near_mask[keep], reach_mask[keep]
        else:
            other = np.zeros(0, dtype=np.int64)
        if len(other):
            # 1. inside a recorded region of another class (only possible where dist <= extent)
            near = other[near_mask]
            if len(near):
                g_in = _inscribed(
                    region_gauge(center, self._center[near], self._theta[near], self.norm), self._gap[near]
                )
                if (g_in > 0).any():
                    log_size = np.log(np.maximum(g_in, 1e-300)) + np.log(self._theta[near]).mean(1)
                    size = np.where(g_in > 0, log_size, -np.inf)
                    best = int(np.argmax(size))  # largest answered region (first on ties)
                    k = near[best]
                    self.last_theta = self._theta[k].copy()
                    self._record(idx, center, int(self._label[k]), self.last_theta, float(g_in[best]))
                    return int(self._label[k]), float(g_in[best]), "inside"
            if label < 0:  # abstained input outside every other-class region: nothing to certify
                return label, 0.0, "none"
            if gap <= 0:  # a point region: only its own centre may not touch another class
                if (
                    region_gauge(center, self._center[near], self._theta[near], self.norm)
                    <= self._gap[near] * (1.0 + _SAFETY)
                ).any():
                    return -1, 0.0, "abstained"
                self._record(idx, center, label, theta, 0.0)
                return label, 0.0, "none"
            # 2. shrink against other-class regions: more screens, then dual bounds
            cand = other[reach_mask]
            dr, er = dist[reach_mask], ext[reach_mask]
            lb0 = (dr - er - _SAFETY * (dr + er)) / float(theta.max())
            new_gap = self._shrink_against(center, theta, gap, cand, lb0)
            if new_gap < gap:
                if not new_gap > 0:
                    return -1, 0.0, "abstained"
                self._record(idx, center, label, theta, new_gap)
                return label, new_gap, "shrunk"
        if label < 0:
            return label, 0.0, "none"
        self._record(idx, center, label, theta, gap)
        return label, gap, "none"

    def _shrink_against(self, center, theta, gap, cand, lb0) -> float:
        """Largest safe gap ≤ ``gap`` keeping the region at ``center`` disjoint from regions ``cand``.

        Every test compares a lower bound on d_k, lowered by the safety margin, with the current best gap,
        so a region is skipped only when provably disjoint. Regions are visited in ascending order of their
        screen-0 bound ``lb0``, in blocks, until that bound reaches the best gap so far. In a block, screen 1:
        in θₓ-scaled space R_k lies in the p-ball of radius g_k max_j θ_kj/θₓⱼ; ℓ1 survivors then get the
        exact bound; ℓ2 survivors pass screen 2 (the dual at a guessed multiplier) and are solved exactly
        in ascending screen-2 order (branch and bound).
        """
        order = np.argsort(lb0, kind="stable")
        cand, lb0 = cand[order], lb0[order]
        best, start = gap, 0
        while start < len(cand) and lb0[start] < best:
            stop = start + int(np.searchsorted(lb0[start : start + _BLOCK], best, side="left"))
            best = self._refine(center, theta, cand[start:stop], best)
            start = stop
        return best

    def _refine(self, center, theta, cand, best) -> float:
        scaled = np.abs(center - self._center[cand]) / theta
        reach = np.sqrt((scaled**2).sum(1)) if self.norm == "l2" else scaled.sum(1)
        half = self._gap[cand] * (self._theta[cand] / theta).max(1)
        cand = cand[reach - half - _SAFETY * (reach + half) < best]
        if not len(cand):
            return best
        args = (center, theta)
        if self.norm == "l1":  # the exact bound is one vectorized pass already
            bound = distance_lower_bound(*args, self._center[cand], self._theta[cand], self._gap[cand], "l1")
            return min(best, float(bound.min()) * (1.0 - _SAFETY))
        lb = distance_lower_bound(*args, self._center[cand], self._theta[cand], self._gap[cand], "l2", exact=False) * (
            1.0 - _SAFETY
        )
        keep = lb < best
        cand, lb = cand[keep], lb[keep]
        order = np.argsort(lb, kind="stable")
        cand, lb = cand[order], lb[order]
        start, chunk = 0, 8
        while start < len(cand) and lb[start] < best:
            stop = start + int(np.searchsorted(lb[start : start + chunk], best, side="left"))
            batch = cand[start:stop]
            bound = distance_lower_bound(*args, self._center[batch], self._theta[batch], self._gap[batch], "l2")
            best = min(best, float(bound.min()) * (1.0 - _SAFETY))
            start, chunk = stop, _CHUNK
        return best


# ---------------------------------------------------------------------------------------------------------------
# Whole tables
# ---------------------------------------------------------------------------------------------------------------

_PAIR_BLOCK_ELEMENTS = 1 << 22  # distance-matrix entries per block of the first pass (32 MB of float64)


def candidate_pairs(
    centers: np.ndarray, thetas: np.ndarray, gaps: np.ndarray, labels: np.ndarray, norm: str
) -> tuple[np.ndarray, np.ndarray]:
    """The vectorized first pass: for every input i, the earlier inputs j < i whose regions may matter to it.

    Returns CSR arrays (``indptr`` (n + 1,), ``indices``): the j of input i are
    ``indices[indptr[i]:indptr[i + 1]]``, ascending. Kept: labels[j] ≥ 0, labels[j] ≠ labels[i], and
    ‖c_i − c_j‖_p ≤ e_i + e_j (up to a rounding margin), with e = gap · max θ (0 for labels < 0). Every
    other pair is provably irrelevant to :meth:`Memory.process`: R_i ⊆ {‖z − c_i‖_p ≤ e_i} and region j
    as recorded (gap shrunk or not, same θ) ⊆ {‖z − c_j‖_p ≤ e_j}, so the two regions are disjoint and
    neither contains the other's centre. (Regions recorded as ``inside`` are not covered: they lie in a
    region of their class with the same θ, which is the one to look at; see :func:`run_memory`.)

    How: with the rounding-lowered squared distance s_ij = ‖c_i‖² + ‖c_j‖² − 2 c_iᵀc_j, the test
    s_ij ≤ (e_i + e_j)² is the sign of one inner product of augmented vectors, so a block of pairs costs
    one BLAS product and one comparison. ℓ1 uses ‖v‖₁ ≥ ‖v‖₂ and ‖v‖₁ ≥ ‖v‖₂² / ‖v‖∞ (‖v‖∞ ≤ the
    centres' coordinate range R: s_ij ≤ R(e_i + e_j), a second product), then checks the survivors
    exactly. Time O(n²d) in BLAS (a small constant) plus O(close pairs · d).
    """
    _check_norm(norm)
    c = np.asarray(centers, dtype=float)
    n, d = c.shape
    lab = np.asarray(labels, dtype=np.int64)
    ext = np.where(lab >= 0, np.asarray(gaps, float) * np.asarray(thetas, float).max(1), 0.0)
    indptr = np.zeros(n + 1, dtype=np.int64)
    if n < 2:
        return indptr, np.zeros(0, np.int64)
    sqn = np.einsum("ij,ij->i", c, c)
    # keep (i, j) when c_iᵀc_j + e_i e_j − A_i/2 − A_j/2 ≥ −tol, A = ‖c‖² − e²: that is ‖c_i − c_j‖² ≤ (e_i + e_j)²
    # up to rounding; tol covers the rounding of every product and sum involved (generously)
    scale = float(sqn.max() + ext.max() ** 2) + 1.0
    tol = 1e-9 * scale + 8.0 * (d + 4) * np.finfo(float).eps * scale
    one = np.ones((n, 1))
    half = lambda a: -0.5 * a[:, None]  # noqa: E731
    tests = [
        (np.hstack([c, ext[:, None], half(sqn - ext**2), one]), np.hstack([c, ext[:, None], one, half(sqn - ext**2)]))
    ]
    if norm == "l1":
        span = float((c.max(0) - c.min(0)).max()) * (1.0 + 1e-9)  # ≥ ‖c_i − c_j‖∞
        tests.append((np.hstack([c, half(sqn - span * ext), one]), np.hstack([c, one, half(sqn - span * ext)])))
    rows_i, rows_j = [], []
    block = max(1, _PAIR_BLOCK_ELEMENTS // n)
    for i0 in range(1, n, block):
        i1 = min(n, i0 + block)
        keep = None
        for left, right in tests:
            ok = (left[i0:i1] @ right[:i1].T) >= -tol
            keep = ok if keep is None else keep & ok
        ii, jj = np.nonzero(keep)
        ii += i0
        sel = (jj < ii) & (lab[jj] >= 0) & (lab[jj] != lab[ii])
        rows_i.append(ii[sel])
        rows_j.append(jj[sel])
    ii, jj = np.concatenate(rows_i), np.concatenate(rows_j)
    if norm == "l1" and len(ii):  # exact ℓ1 distances for the survivors, in chunks
        step = max(1, _PAIR_BLOCK_ELEMENTS // d)
        l1 = np.concatenate([np.abs(c[ii[a : a + step]] - c[jj[a : a + step]]).sum(1) for a in range(0, len(ii), step)])
        reach = ext[ii] + ext[jj]
        sel = l1 * (1.0 - 4.0 * d * np.finfo(float).eps) - reach <= 1e-9 * (l1 + reach)
        ii, jj = ii[sel], jj[sel]
    np.cumsum(np.bincount(ii, minlength=n), out=indptr[1:])
    return indptr, jj.astype(np.int64)


def run_memory(
    idx: np.ndarray,
    predict: np.ndarray,
    gap: np.ndarray,
    centers: np.ndarray,
    thetas: np.ndarray,
    norm: str,
    answer_abstained: bool = False,
) -> tuple[dict, dict]:
    """Run the memory over certificates (``idx``, ``predict``, ``gap`` (n,), ``centers`` and ``thetas`` (n, d)).

    Inputs are processed in idx order. Returns ``(answers, regions)``: ``answers`` holds ``order`` (the
    permutation sorting the inputs by idx) and, in that order, ``predict`` and ``gap`` of the region answered
    with, its θ (``theta``: an earlier region's for ``inside``) and the ``memory`` action (one of
    :data:`ACTIONS`); ``regions`` the recorded regions (see :meth:`Memory.arrays`). Deterministic. The table
    columns are the caller's (:func:`smoothcert.engine.certificates.certificate`).

    Time: the vectorized first pass (:func:`candidate_pairs`) finds, for all inputs at once, the few earlier
    regions that can matter; the sequential pass then looks only at those, so it grows with n plus the
    number of close pairs of different classes rather than with n².
    """
    _check_norm(norm)
    idx = np.asarray(idx)
    centers = np.asarray(centers, dtype=float)
    thetas = np.asarray(thetas, dtype=float)
    n = len(idx)
    require(
        centers.ndim == 2 and centers.shape[0] == n and thetas.shape == centers.shape,
        f"memory needs centres and θ of shape (rows, d) = ({n}, d); got {centers.shape} and {thetas.shape}",
    )
    require(len(np.unique(idx)) == n, "certificate table lists an input (idx) more than once")
    order = np.argsort(idx, kind="stable")
    idx, centers, thetas = idx[order], centers[order], thetas[order].copy()
    gaps = np.asarray(gap, dtype=float)[order]
    predict = np.asarray(predict, dtype=np.int64)[order]
    require(np.isfinite(gaps).all() and (gaps >= 0).all(), "certificate table has NaN or negative gaps")
    mem = Memory(norm, centers.shape[1], capacity=max(16, n), answer_abstained=answer_abstained)
    new_pred, new_gap, action = np.empty(n, np.int64), np.empty(n), np.empty(n, dtype=object)
    start_gaps = np.where(predict >= 0, gaps, 0.0)
    indptr, earlier = candidate_pairs(centers, thetas, start_gaps, predict, norm)
    # memory position of input i's region, -1 while unrecorded or recorded as ``inside`` (such a region lies
    # in an earlier region of its class with the same θ, which dominates it in every later test)
    position = np.full(n, -1, dtype=np.int64)
    for i in range(n):
        cand = position[earlier[indptr[i] : indptr[i + 1]]]
        new_pred[i], new_gap[i], action[i] = mem.process(
            int(idx[i]), centers[i], int(predict[i]), thetas[i], start_gaps[i], candidates=cand[cand >= 0]
        )
        if action[i] == "inside":
            thetas[i] = mem.last_theta
        elif new_pred[i] >= 0 and action[i] != "abstained":
            position[i] = len(mem) - 1
    answers = {"order": order, "predict": new_pred, "gap": new_gap, "theta": thetas, "memory": action}
    return answers, mem.arrays()
