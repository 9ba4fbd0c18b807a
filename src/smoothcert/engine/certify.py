"""CERTIFY and PREDICT (Cohen, Rosenfeld & Kolter 2019) for many inputs at once, fixed-N and sequential.

Each input has its own σ (scalar, per input, or per dimension θ). :func:`certify` runs CERTIFY as a
:class:`Draws` says (n draws, or a sequential plan); :func:`certify_batch` / :func:`certify_sequential_batch`
are its two forms, :func:`predict_batch` / :func:`predict_sequential_batch` PREDICT's. The draws are counted by
:func:`smoothcert.engine.sampling.count_classes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from smoothcert.engine import stats
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.sampling import Sampling, count_classes


@dataclass
class Certified:
    """The classifier actually smoothed, and the space its radius holds in: the smoothing noise is added to
    ``to_space(x)``; a radius R there is a radius ``radius_factor``·R for x (a method's wrapper proves it);
    one draw costs ``evals_per_draw`` base-classifier evaluations."""

    classifier: nn.Module
    to_space: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    radius_factor: float = 1.0
    evals_per_draw: int = 1


@dataclass(frozen=True)
class Draws:
    """How CERTIFY draws for a batch — the options object of :func:`certify`: ``n0`` selection draws, then ``n``
    estimation draws — or, with a sequential ``plan``, as many as it says — at level ``alpha``, for the
    certificate of ``norm``; ``sampling`` says how the draws are made."""

    n0: int
    alpha: float
    norm: str
    sampling: Sampling
    n: int = 0
    plan: SequentialPlan | None = None


def certify_batch(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num_classes: int,
    n0: int,
    n: int,
    alpha: float,
    norm: str,
    seeds_select: list[int],
    seeds_estimate: list[int],
    sampling: Sampling,
    progress=None,
) -> dict[str, np.ndarray]:
    """CERTIFY for a batch: guess cA from n0 draws, bound p̲A from n fresh draws (the public, locuslab-like form of
    :func:`certify` with ``Draws(n0, alpha, norm, sampling, n=n)``).

    Guarantee (Cohen et al. Thm. 1 / Yang et al. for uniform ℓ1): for each input,
    with probability ≥ 1 - alpha over the estimation draws, either the result is
    ABSTAIN or the smoothed classifier is constant (= ``predict``) on the region
    {δ : ‖δ ⊘ θ‖_p < gap}. Abstains whenever p̲A < 1/2.
    Returns arrays ``predict``, ``count`` (nA), ``pA_lower`` and ``gap``.
    """
    draws = Draws(n0, alpha, norm, sampling, n=n)
    return _certify_fixed(model, x, scale, num_classes, (seeds_select, seeds_estimate), draws, progress)


def _certify_fixed(model, x, scale, num_classes: int, seeds: tuple, draws: Draws, progress=None) -> dict:
    """:func:`certify_batch`'s CERTIFY with ``draws.n`` estimation draws."""
    sel = count_classes(model, x, scale, draws.n0, num_classes, seeds[0], draws.sampling)
    guess = sel.argmax(1)
    est = count_classes(model, x, scale, draws.n, num_classes, seeds[1], draws.sampling, progress)
    n_a = est[np.arange(len(guess)), guess]
    p_lower = np.atleast_1d(stats.lower_confidence_bound(n_a, draws.n, draws.alpha))
    predict, gap = _decided(guess, p_lower, draws.norm)
    return {"predict": predict, "count": n_a.astype(np.int64), "pA_lower": p_lower.astype(float), "gap": gap}


def _decided(guess: np.ndarray, p_lower: np.ndarray, norm: str) -> tuple[np.ndarray, np.ndarray]:
    """CERTIFY's answer from the guess cA and p̲A: ``predict`` (cA, or ABSTAIN unless p̲A > 1/2) and ``gap``
    (the certified gap of p̲A; 0 for an abstention — the one place an abstention's gap is set)."""
    certified = p_lower > 0.5
    gap = np.where(certified, stats.gap(np.where(certified, p_lower, 0.75), norm), 0.0)
    return np.where(certified, guess, ABSTAIN).astype(np.int64), gap.astype(float)


def _rounds(model, x, scale, num_classes: int, seeds: list[int], sampling: Sampling, checkpoints, running: np.ndarray):
    """Advance the inputs still ``running`` (a mask the caller updates between rounds) checkpoint by checkpoint.

    Yields ``(k, n_k, idx, counts)``: the class counts (len(idx), num_classes) of draws n_{k-1} … n_k of each input
    ``idx`` still running, the continuation of its own stream (``first_chunk``), all in one :func:`count_classes`
    call so that forward batches stay full. Any increasing checkpoints will do: round k is drawn in chunks of
    min(``sampling.chunk``, n_k − n_{k-1}) draws, continuing the generator's calls where round k − 1 left them,
    so an input's draws depend on its seed, the chunk and the checkpoints only — never on the batch size or on
    which inputs share a round. (Checkpoints that are whole chunks give the stream of one fixed-n call.)
    """
    cks = np.asarray(checkpoints, dtype=np.int64)
    prev = call = 0
    for k, n_k in enumerate(cks):
        idx = np.flatnonzero(running)
        if not len(idx):
            return
        num = int(n_k - prev)
        chunk = min(int(sampling.chunk), num)
        sub = scale if not torch.is_tensor(scale) or scale.ndim == 0 else scale[torch.as_tensor(idx)]
        est = count_classes(
            model,
            x[torch.as_tensor(idx)],
            sub,
            num,
            num_classes,
            [seeds[i] for i in idx],
            replace(sampling, chunk=chunk),
            first_chunk=call,
        )
        yield k, int(n_k), idx, est
        prev, call = int(n_k), call + -(-num // chunk)


@dataclass(frozen=True)
class SequentialPlan:
    """What sequential CERTIFY aims for and when it may stop.

    ``checkpoints``: the estimation draw counts at which an input may stop (fixed before any draw, increasing;
    they need not be whole chunks: :func:`_rounds`); ``cs``: the confidence sequence, valid simultaneously over them
    (:mod:`smoothcert.engine.sequential`); ``radii``: decide-at-radius targets (None: estimate mode, which stops
    once the radius of the lower bound is within ``precision`` (relative) of the radius of the upper bound, the
    latter taken as the radius the whole budget ``checkpoints[-1]`` would certify if pA were at its upper bound).
    """

    checkpoints: tuple[int, ...]
    cs: object
    radii: tuple[float, ...] | None = None
    precision: float = 0.0


def certify_sequential_batch(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num_classes: int,
    n0: int,
    alpha: float,
    norm: str,
    seeds_select: list[int],
    seeds_estimate: list[int],
    sampling: Sampling,
    plan: SequentialPlan,
    radius_scale: np.ndarray,
    progress=None,
) -> dict[str, np.ndarray]:
    """CERTIFY with early stopping: guess cA from n0 draws, then draw for p̲A until the plan says stop.

    Guarantee: the estimation draws are independent of the selection draws, so cA is fixed before them, and
    the confidence sequence's lower side holds at every checkpoint with probability ≥ 1 − alpha; at the
    (data-dependent) checkpoint where an input stops, p̲A is therefore a valid lower bound and the certificate
    is that of :func:`certify_batch` at level alpha. Stopping rules may read both sides of the sequence: a
    "not certified at r" decision errs with probability ≤ alpha too, but only the lower side underwrites a
    certificate. ``radius_scale`` (B,): the factor from gap to radius per input (σ, or min θ times the
    method's radius factor), which turns target radii into thresholds on pA. Stopping rules: decide — every
    radius certified (p̲A above its threshold) or out of reach (even with pA at its upper bound, the whole
    budget n_max would not certify it); estimate — the radius of p̲A is within ``precision`` of the radius the
    whole budget would give at that upper bound; both — abstention certain.
    All inputs still running advance to the next checkpoint together, in one :func:`count_classes` call, so
    forward batches stay full; each input's draws are the first n of its own stream (``first_chunk``), so
    results do not depend on which inputs share a call, on the batch size or on sharding.
    Returns :func:`certify_batch`'s arrays plus ``n`` (estimation draws used per input). The public form of
    :func:`certify` with ``Draws(n0, alpha, norm, sampling, plan=plan)``.
    """
    draws = Draws(n0, alpha, norm, sampling, plan=plan)
    return _certify_sequential(
        model, x, scale, num_classes, (seeds_select, seeds_estimate), draws, radius_scale, progress
    )


def _certify_sequential(model, x, scale, num_classes: int, seeds: tuple, draws: Draws, radius_scale, progress=None):
    """:func:`certify_sequential_batch`'s CERTIFY, drawing as ``draws.plan`` says."""
    n0, alpha, norm, sampling, plan = draws.n0, draws.alpha, draws.norm, draws.sampling, draws.plan
    seeds_select, seeds_estimate = seeds
    b = x.shape[0]
    sel = count_classes(model, x, scale, n0, num_classes, seeds_select, sampling)
    guess = sel.argmax(1)
    counts = np.zeros(b, dtype=np.int64)
    used = np.zeros(b, dtype=np.int64)
    low = np.zeros(b)
    running = np.ones(b, dtype=bool)
    s = np.asarray(radius_scale, dtype=float)
    n_max, last = int(plan.checkpoints[-1]), len(plan.checkpoints) - 1
    if plan.radii is not None:
        thresholds = np.stack([stats.p_of_gap(np.asarray(r) / s, norm) for r in plan.radii], 1)  # (B, R)
    rounds = _rounds(model, x, scale, num_classes, seeds_estimate, sampling, plan.checkpoints, running)
    for k, n_k, idx, est in rounds:
        counts[idx] += est[np.arange(len(idx)), guess[idx]]
        used[idx] = n_k
        c, n = counts[idx], np.full(len(idx), n_k)
        lo = plan.cs.lower(c, n, alpha)
        low[idx] = lo
        if k == last:  # the budget is spent
            done = np.ones(len(idx), dtype=bool)
        else:
            # the bound the whole budget would give if pA were as large as the upper bound allows: what is not
            # certifiable even then is settled as "no" (fixed N = n_max would not certify it either, w.p. ≥ 1 − α)
            hi = plan.cs.upper(c, n, alpha)
            reach = plan.cs.lower(np.floor(hi * n_max), np.full(len(idx), n_max), alpha)
            if plan.radii is not None:  # every radius settled, or abstention certain
                th = thresholds[idx]
                done = ((lo[:, None] > th) | (reach[:, None] <= th)).all(1) | (reach <= 0.5)
            else:  # the radius is within precision of the most the budget could give, or abstention certain
                r_lo = np.where(lo > 0.5, stats.gap(np.maximum(lo, 0.5), norm), 0.0)
                r_hi = stats.gap(np.maximum(reach, 0.5), norm)
                done = (reach <= 0.5) | (r_lo >= (1.0 - plan.precision) * r_hi)
        running[idx[done]] = False
        if progress is not None:
            progress.update(int(done.sum()))
    predict, gap = _decided(guess, low, norm)
    return {"predict": predict, "count": counts, "pA_lower": low.astype(float), "gap": gap, "n": used}


def predict_batch(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num_classes: int,
    n: int,
    alpha: float,
    seeds: list[int],
    sampling: Sampling,
) -> np.ndarray:
    """PREDICT for a batch: the top class, or ABSTAIN unless a two-sided binomial test rejects a tie.

    Guarantee (Cohen et al. Prop. 1): the probability of returning a class other
    than the smoothed classifier's is at most alpha. Draws with non-finite logits
    (which vote for no class) are counted for the runner-up, the worst case.
    """
    counts = count_classes(model, x, scale, n, num_classes, seeds, sampling)
    invalid = n - counts.sum(1)
    out = np.full(len(counts), ABSTAIN, dtype=np.int64)
    for i, row in enumerate(counts):
        top2 = np.argsort(-row, kind="stable")[:2]
        n_a, n_b = row[top2[0]], row[top2[1]] + invalid[i]
        if n_a > 0 and stats.binomial_pvalue(n_a, n_b) <= alpha:
            out[i] = top2[0]
    return out


def predict_sequential_batch(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num_classes: int,
    alpha: float,
    seeds: list[int],
    sampling: Sampling,
    checkpoints,
) -> dict[str, np.ndarray]:
    """PREDICT with early stopping: at each checkpoint n_k (fixed in advance), the two-sided binomial test of
    the top two counts at level alpha / K; the top class as soon as it rejects, ABSTAIN if it never does.

    Guarantee: each test returns a class other than g(x) with probability ≤ alpha / K (Cohen et al. Prop. 1,
    Hung & Fithian 2019), so over the K checkpoints the probability of ever returning a wrong class is
    ≤ alpha (union bound). Draws with non-finite logits count for the runner-up, as in :func:`predict_batch`.
    Returns ``predict`` and ``n`` (draws used per input).
    """
    b = x.shape[0]
    counts = np.zeros((b, num_classes), dtype=np.int64)
    out = np.full(b, ABSTAIN, dtype=np.int64)
    used = np.zeros(b, dtype=np.int64)
    running = np.ones(b, dtype=bool)
    for _, n_k, idx, est in _rounds(model, x, scale, num_classes, seeds, sampling, checkpoints, running):
        counts[idx] += est
        used[idx] = n_k
        for i in idx:
            row = counts[i]
            top2 = np.argsort(-row, kind="stable")[:2]
            n_a, n_b = row[top2[0]], row[top2[1]] + (n_k - row.sum())
            if n_a > 0 and stats.binomial_pvalue(n_a, n_b) <= alpha / len(checkpoints):
                out[i], running[i] = top2[0], False
    return {"predict": out, "n": used}


def certify(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num_classes: int,
    seeds: tuple,
    draws: Draws,
    radius_scale=None,
    progress=None,
) -> dict[str, np.ndarray]:
    """CERTIFY as ``draws`` says: ``n`` draws (:func:`certify_batch`'s guarantee), or the sequential ``plan``
    (:func:`certify_sequential_batch`'s; ``radius_scale`` (B,): gap-to-radius factor per input, for its target
    radii). ``seeds``: (selection seeds, estimation seeds), one per input. Returns their arrays, ``n``
    (estimation draws per input) included in both forms."""
    if draws.plan is None:
        out = _certify_fixed(model, x, scale, num_classes, seeds, draws, progress)
        out["n"] = np.full(len(x), draws.n, dtype=np.int64)
        return out
    return _certify_sequential(model, x, scale, num_classes, seeds, draws, radius_scale, progress)
