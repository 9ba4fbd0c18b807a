"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019), batched over many inputs.

``count_classes`` is the Monte Carlo engine: it evaluates the base classifier on
noisy copies of several inputs per forward pass and accumulates class counts on
the device (``bincount``), so memory is bounded by the batch size, never by n.
``certify_batch`` and ``predict_batch`` are the paper's CERTIFY and PREDICT for
many inputs at once, each with its own σ (scalar, per input, or per dimension θ);
:class:`Smooth` is the call-compatible port of locuslab/smoothing's ``core.Smooth``.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from smoothcert.engine import noise as noise_mod
from smoothcert.engine import stats
from smoothcert.engine.certificates import ABSTAIN


@dataclass
class Certified:
    """The classifier actually smoothed, and the space its radius holds in: the smoothing noise is added to
    ``to_space(x)``; a radius R there is a radius ``radius_factor``·R for x (a method's wrapper proves it);
    one draw costs ``evals_per_draw`` base-classifier evaluations."""

    classifier: nn.Module
    to_space: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    radius_factor: float = 1.0
    evals_per_draw: int = 1


@dataclass
class Sampling:
    """How Monte Carlo draws are made: noise kind, forward batch size, chunk size, device, AMP."""

    kind: str = "gaussian"
    batch_size: int = 1000
    chunk: int = 1000
    device: str | torch.device = "cpu"
    amp: bool = False


def count_classes(
    model: nn.Module,
    x: torch.Tensor,
    scale,
    num: int,
    num_classes: int,
    seeds: list[int],
    sampling: Sampling,
    progress=None,
    first_chunk: int = 0,
) -> np.ndarray:
    """Counts of the base classifier's argmax over ``num`` noisy draws per input.

    ``x``: (B, *shape) inputs; ``scale``: σ, (B,) or (B, *shape); ``seeds``: one
    generator seed per input. Returns int64 counts of shape (B, num_classes).
    Draws for input i depend only on ``seeds[i]`` and ``sampling.chunk``: its j-th chunk is
    draw j of ``noise.make_generator(seeds[i])`` (:func:`noise.fill_standard`), turned into
    x + σ ⊙ ε as ε·σ, then + x (the same float operations whatever the batching).

    The draws form one stream of rows, input after input. Every forward pass takes exactly
    ``sampling.batch_size`` rows of the stream (several small inputs, or part of one large n;
    only the last pass is shorter). Row r of the stream belongs to input r // num, so counts are
    accumulated on the device (``index_add_``, no host sync) without per-chunk bookkeeping.
    On CPU the noise of the next forward pass is drawn and shifted by the noise thread pool while
    the current one runs (two staging buffers; a chunk that straddles two passes is drawn once
    into a chunk-sized scratch buffer); on other devices it is drawn in place before each pass.
    Memory is O(batch_size + chunk) rows whatever n and B.
    ``first_chunk`` continues each input's stream: its chunks are draws first_chunk, first_chunk + 1, ...
    of the generator, so counting n₁ = m·chunk draws, then n₂ more from first_chunk = m, sees exactly the
    first n₁ + n₂ draws of one call with ``num`` = n₁ + n₂ (sequential certification relies on it).
    """
    device = torch.device(sampling.device)
    b = x.shape[0]
    if num <= 0 or b == 0:
        return np.zeros((b, num_classes), dtype=np.int64)
    if device.type == "cpu":
        return _count_cpu(model, x, scale, num, num_classes, seeds, sampling, progress, first_chunk)
    return _count_device(model, x, scale, num, num_classes, seeds, sampling, progress, first_chunk)


def _votes(flat: torch.Tensor, index: torch.Tensor, logits: torch.Tensor, ones: torch.Tensor) -> None:
    """Add one vote per row at ``index + argmax`` (index: owner·num_classes, overwritten).

    A draw with NaN/inf logits votes for no class: it can only lower nA (towards abstaining); so does
    one whose finite logits overflow when summed (beyond 3e38). Fast path: when every logit is finite
    and num_classes·max|logit| cannot overflow, all rows vote (one min/max pass over the logits);
    else each row votes iff its sum is finite.
    """
    index.add_(logits.max(1).indices)  # the first maximal class, as argmax(1), at 2/3 of its cost on CPU
    lo, hi = torch.aminmax(logits)
    lo, hi = float(lo), float(hi)
    bound = torch.finfo(logits.dtype).max / (2 * max(1, logits.shape[1]))
    if -bound < lo and hi < bound:  # False for NaN
        flat.index_add_(0, index, ones[: len(index)])
    else:
        flat.index_add_(0, index, torch.isfinite(logits.sum(1)).to(torch.int64))


def _votes_np(flat: np.ndarray, owner: np.ndarray, logits: np.ndarray, lock: threading.Lock) -> None:
    """:func:`_votes` in numpy, for the noise threads (torch reductions there would start OpenMP teams of
    their own); ``owner``: owner·num_classes per row, ascending; the addition into ``flat`` holds ``lock``."""
    cls = logits.argmax(1)  # the first maximal class
    bound = np.finfo(logits.dtype).max / (2 * max(1, logits.shape[1]))
    lo, hi = logits.min(), logits.max()
    idx = owner + cls
    if not (-bound < lo and hi < bound):  # NaN, inf or overflow somewhere: rows whose sum is not finite do not vote
        idx = idx[np.isfinite(logits.sum(1, dtype=logits.dtype))]
    if not len(idx):
        return
    base = int(owner[0])
    part = np.bincount(idx - base, minlength=int(owner[-1]) - base + logits.shape[1])
    with lock:
        flat[base : base + len(part)] += part


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, enabled=True) if enabled else contextlib.nullcontext()


def noise_threads() -> int:
    """Threads drawing noise one forward pass ahead in :func:`count_classes` on CPU: the cores torch's
    intra-op threads leave free (0 when they use them all: the noise is then drawn just before each
    pass, in the calling thread), or ``SMOOTHCERT_NOISE_THREADS``."""
    env = os.environ.get("SMOOTHCERT_NOISE_THREADS")
    if env is not None and env.strip():
        return max(0, int(env))
    return max(0, noise_mod.cores() - torch.get_num_threads())


def _count_cpu(model, x, scale, num, num_classes, seeds, sampling, progress, first_chunk=0) -> np.ndarray:
    """count_classes on CPU (see there): two staging buffers; the noise of pass t + 1 is drawn by the
    noise threads while pass t runs and pass t's votes are counted there too, or, with no core to spare,
    everything runs in this thread, pass by pass."""
    b, shape = x.shape[0], tuple(x.shape[1:])
    d = int(np.prod(shape))
    x = x.detach().to("cpu", torch.float32).contiguous()
    s = noise_mod.broadcast_scale(scale, b, shape, "cpu")
    xs = x.reshape(b, d).numpy()
    ss = np.ascontiguousarray(s.reshape(b, -1).numpy())  # (b, 1) or (b, d)
    keys = [noise_mod.key_of(sd) for sd in seeds]
    chunk = min(int(sampling.chunk), num)
    sizes = noise_mod.chunk_sizes(num, chunk)
    starts = np.cumsum([0] + sizes)  # chunk boundaries within an input
    rows = max(1, int(sampling.batch_size))
    total = b * num
    passes = -(-total // rows)
    width = min(total, rows)
    counts = torch.zeros((b, num_classes), dtype=torch.int64)
    flat = counts.view(-1)
    bufs = [torch.empty((width, *shape)) for _ in range(min(2, passes))]
    index = [torch.empty(width, dtype=torch.int64) for _ in range(min(3, passes))]  # owner·num_classes per row
    ones = torch.ones(width, dtype=torch.int64)
    threads = min(noise_threads(), noise_mod.POOL_SIZE - 2)  # prepare + its groups + two countings at once
    ex = noise_mod.pool() if threads else None
    st = {"scratch": None, "carry": None}  # scratch: chunk-sized buffer; carry: (start row, rows) of the chunk in it
    lock = threading.Lock()

    def shift_rows(view: np.ndarray, start: int) -> None:
        """x + σ ⊙ ε in place for stream rows [start, start + len(view)) (whole or partial inputs): ε·σ,
        then + x (the float operations of noise.noisy_copies), in at most three broadcast pieces."""
        m, r = len(view), 0
        j = start // num
        if start % num:  # the rest of input j
            r = min(m, (j + 1) * num - start)
            np.multiply(view[:r], ss[j], out=view[:r])
            np.add(view[:r], xs[j], out=view[:r])
            j += 1
        k = (m - r) // num
        if k:  # whole inputs j .. j + k - 1
            body = view[r : r + k * num].reshape(k, num, d)
            np.multiply(body, ss[j : j + k, None, :], out=body)
            np.add(body, xs[j : j + k, None, :], out=body)
            r, j = r + k * num, j + k
        if r < m:  # the first rows of input j
            np.multiply(view[r:], ss[j], out=view[r:])
            np.add(view[r:], xs[j], out=view[r:])

    def draw_rows(parts: list, view: np.ndarray, start: int) -> None:
        noise_mod.draw_parts(parts, sampling.kind)
        shift_rows(view, start)

    def prepare(t: int) -> None:
        """Noise of forward pass t (stream rows [t·rows, ...)) into bufs[t % 2], and its owners' offsets."""
        lo, hi = t * rows, min(total, (t + 1) * rows)
        buf = bufs[t % 2].view(width, d).numpy()
        flat_buf = buf.reshape(-1)
        np.multiply(np.arange(lo, hi, dtype=np.int64) // num, num_classes, out=index[t % len(index)].numpy()[: hi - lo])
        cur = lo
        if st["carry"] is not None:  # the rest of a chunk drawn (and shifted) into scratch for an earlier pass
            c0, c = st["carry"]
            take = min(hi, c0 + c) - cur
            buf[:take] = st["scratch"][cur - c0 : cur - c0 + take]
            cur += take
            if c0 + c <= hi:
                st["carry"] = None
        chunks, late = [], None  # (parts, first row in buf, rows) of the chunks wholly in this pass; a straddler
        while cur < hi:
            i, r = divmod(cur, num)
            k = int(np.searchsorted(starts, r, side="right")) - 1
            c = sizes[k]
            if cur + c <= hi:
                chunks.append(
                    (noise_mod.parts_of(keys[i], first_chunk + k, flat_buf, (cur - lo) * d, c * d), cur - lo, c)
                )
            else:  # it straddles the end of this pass: drawn whole into scratch, its head copied here
                if st["scratch"] is None:
                    st["tensor"] = torch.empty((chunk, d))  # chunk-sized, allocated once
                    st["scratch"] = st["tensor"].numpy()
                sc = st["scratch"][:c]
                late = (noise_mod.parts_of(keys[i], first_chunk + k, sc.reshape(-1)), sc, cur, buf[cur - lo : hi - lo])
                st["carry"] = (cur, c)
            cur += c
        groups = [
            ([q for p, _, _ in g for q in p], buf[g[0][1] : g[-1][1] + g[-1][2]], lo + g[0][1])
            for g in noise_mod.split_weighted(chunks, [c for _, _, c in chunks], max(1, threads))
        ]
        futures = [ex.submit(draw_rows, *g) for g in groups[1:]] if threads > 1 else []
        for g in groups[:1] if threads > 1 else groups:
            draw_rows(*g)
        if late is not None:
            parts, sc, start, dest = late
            draw_rows(parts, sc, start)
            dest[:] = sc[: len(dest)]
        for f in futures:
            f.result()

    def count(t: int, logits: np.ndarray) -> None:
        _votes_np(flat.numpy(), index[t % len(index)].numpy()[: len(logits)], logits, lock)

    reported = 0

    def report(done_rows: int) -> None:
        nonlocal reported
        done = done_rows // num
        if progress is not None and done > reported:
            progress.update(done - reported)
            reported = done

    with torch.inference_mode():
        if not threads:
            for t in range(passes):
                prepare(t)
                m = min(total, (t + 1) * rows) - t * rows
                with _autocast(torch.device("cpu"), sampling.amp):
                    logits = model(bufs[t % 2][:m])
                _votes(flat, index[t % len(index)][:m], logits, ones)
                report(t * rows + m)
            return counts.numpy()
        job = ex.submit(prepare, 0)
        counting = []
        for t in range(passes):
            job.result()
            if t >= 2:  # pass t - 2's counting reads the owners that prepare(t + 1) overwrites
                counting[t - 2].result()
                report((t - 1) * rows)
            job = ex.submit(prepare, t + 1) if t + 1 < passes else None
            m = min(total, (t + 1) * rows) - t * rows
            batch = bufs[t % 2][:m]
            with _autocast(torch.device("cpu"), sampling.amp):
                logits = model(batch)
            logits = logits.detach()
            if logits.dtype not in (torch.float32, torch.float64, torch.float16):
                logits = logits.float()  # bfloat16 (autocast): numpy has none
            if logits.untyped_storage().data_ptr() == batch.untyped_storage().data_ptr():
                logits = logits.clone()  # a view of the staging buffer, which prepare(t + 2) overwrites
            counting.append(ex.submit(count, t, logits.numpy()))
        for f in counting[-2:]:
            f.result()
        report(total)
    return counts.numpy()


def _count_device(model, x, scale, num, num_classes, seeds, sampling, progress, first_chunk=0) -> np.ndarray:
    """count_classes on an accelerator: each chunk drawn in place on the device before its pass."""
    device = torch.device(sampling.device)
    b, shape = x.shape[0], tuple(x.shape[1:])
    counts = torch.zeros((b, num_classes), dtype=torch.int64, device=device)
    x = x.to(device, torch.float32)
    s = noise_mod.broadcast_scale(scale, b, shape, device)
    chunk = min(int(sampling.chunk), num)
    sizes = noise_mod.chunk_sizes(num, chunk)
    rows = max(1, int(sampling.batch_size))
    total = b * num
    # A whole chunk is always appended behind fewer than ``rows`` pending rows.
    buf = torch.empty((min(total, rows + chunk - 1), *shape), device=device)
    step = torch.arange(min(total, rows), dtype=torch.int64, device=device)
    flat = counts.view(-1)
    pending = counted = reported = 0  # rows staged in buf; stream rows counted; inputs reported

    def shift(batch: torch.Tensor, start: int) -> None:
        """x + σ ⊙ ε in place for stream rows [start, start + len(batch)): ε·σ, then + x (the same float
        operations whatever the batching), in at most three broadcast pieces: the tail of one input, whole
        inputs viewed as (k, num, ...), the head of another."""
        m, r = len(batch), 0
        j = start // num
        if start % num:  # the rest of input j
            r = min(m, (j + 1) * num - start)
            batch[:r].mul_(s[j]).add_(x[j])
            j += 1
        k = (m - r) // num
        if k:  # whole inputs j .. j + k - 1
            body = batch[r : r + k * num].view(k, num, *shape)
            body.mul_(s[j : j + k].unsqueeze(1)).add_(x[j : j + k].unsqueeze(1))
            r, j = r + k * num, j + k
        if r < m:  # the first rows of input j
            batch[r:].mul_(s[j]).add_(x[j])

    def forward(lo: int, m: int) -> None:
        nonlocal counted
        batch = buf[lo : lo + m]
        owner = torch.div(step[:m] + counted, num, rounding_mode="floor")
        shift(batch, counted)
        with torch.autocast(device.type, enabled=sampling.amp):
            logits = model(batch)
        # a draw with NaN/inf logits votes for no class: it can only lower nA (towards abstaining). The row
        # sum is non-finite iff a logit is (or, beyond 3e38, when finite ones overflow: also no vote), and
        # costs one reduction instead of isfinite's four elementwise passes over the logits.
        votes = torch.isfinite(logits.sum(1)).to(torch.int64)
        flat.index_add_(0, owner.mul_(num_classes).add_(logits.argmax(1)), votes)
        counted += m

    def flush(final: bool) -> None:
        nonlocal pending, reported
        q = 0
        while pending - q >= rows or (final and pending > q):
            m = min(rows, pending - q)
            forward(q, m)
            q += m
        if q and pending > q:  # fewer than rows <= q rows left: the copy never overlaps
            buf[: pending - q].copy_(buf[q:pending])
        pending -= q
        if progress is not None and counted // num > reported:
            progress.update(counted // num - reported)
            reported = counted // num

    with torch.inference_mode():
        for i in range(b):
            gen = noise_mod.make_generator(seeds[i], device)
            gen.calls = first_chunk
            for c in sizes:
                noise_mod.fill_standard(buf[pending : pending + c], sampling.kind, gen)
                pending += c
                if pending >= rows:
                    flush(final=False)
        flush(final=True)
    return counts.cpu().numpy()


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
    """CERTIFY for a batch: guess cA from n0 draws, bound p̲A from n fresh draws.

    Guarantee (Cohen et al. Thm. 1 / Yang et al. for uniform ℓ1): for each input,
    with probability ≥ 1 - alpha over the estimation draws, either the result is
    ABSTAIN or the smoothed classifier is constant (= ``predict``) on the region
    {δ : ‖δ ⊘ θ‖_p < gap}. Abstains whenever p̲A < 1/2.
    Returns arrays ``predict``, ``count`` (nA), ``pA_lower`` and ``gap``.
    """
    sel = count_classes(model, x, scale, n0, num_classes, seeds_select, sampling)
    guess = sel.argmax(1)
    est = count_classes(model, x, scale, n, num_classes, seeds_estimate, sampling, progress)
    n_a = est[np.arange(len(guess)), guess]
    p_lower = np.atleast_1d(stats.lower_confidence_bound(n_a, n, alpha))
    certified = p_lower > 0.5
    gap = np.where(certified, stats.gap(np.where(certified, p_lower, 0.75), norm), 0.0)
    return {
        "predict": np.where(certified, guess, ABSTAIN).astype(np.int64),
        "count": n_a.astype(np.int64),
        "pA_lower": p_lower.astype(float),
        "gap": gap.astype(float),
    }


def _rounds(model, x, scale, num_classes: int, seeds: list[int], sampling: Sampling, checkpoints, running: np.ndarray):
    """Advance the inputs still ``running`` (a mask the caller updates between rounds) checkpoint by checkpoint.

    Yields ``(k, n_k, idx, counts)``: the class counts (len(idx), num_classes) of draws n_{k-1} … n_k of each input
    ``idx`` still running, the continuation of its own stream (``first_chunk``), all in one :func:`count_classes`
    call so that forward batches stay full. Checkpoints but the last must be whole chunks.
    """
    cks = np.asarray(checkpoints, dtype=np.int64)
    chunk = int(sampling.chunk)
    assert all(c % chunk == 0 for c in cks[:-1]), "checkpoints must be multiples of the chunk"
    prev = 0
    for k, n_k in enumerate(cks):
        idx = np.flatnonzero(running)
        if not len(idx):
            return
        sub = scale if not torch.is_tensor(scale) or scale.ndim == 0 else scale[torch.as_tensor(idx)]
        est = count_classes(
            model,
            x[torch.as_tensor(idx)],
            sub,
            int(n_k - prev),
            num_classes,
            [seeds[i] for i in idx],
            sampling,
            first_chunk=prev // chunk,
        )
        yield k, int(n_k), idx, est
        prev = int(n_k)


@dataclass(frozen=True)
class SequentialPlan:
    """What sequential CERTIFY aims for and when it may stop.

    ``checkpoints``: the estimation draw counts at which an input may stop (fixed before any draw; multiples
    of the sampling chunk but for the last); ``cs``: the confidence sequence, valid simultaneously over them
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
    Returns :func:`certify_batch`'s arrays plus ``n`` (estimation draws used per input).
    """
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
    certified = low > 0.5
    gap = np.where(certified, stats.gap(np.where(certified, low, 0.75), norm), 0.0)
    return {
        "predict": np.where(certified, guess, ABSTAIN).astype(np.int64),
        "count": counts,
        "pA_lower": low.astype(float),
        "gap": gap.astype(float),
        "n": used,
    }


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


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ² I).

    Call-compatible with locuslab/smoothing's ``core.Smooth``: ``predict(x, n, alpha,
    batch_size)`` and ``certify(x, n0, n, alpha, batch_size)`` take one input x
    of shape (C, H, W). Each call draws fresh noise from a seeded stream.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        base_classifier: nn.Module,
        num_classes: int,
        sigma: float,
        seed: int | None = None,
        device: str | torch.device | None = None,
        kind: str = "gaussian",
    ):
        self.base_classifier = base_classifier
        self.num_classes = num_classes
        self.sigma = sigma
        self.kind = kind
        self.norm = "l2" if kind == "gaussian" else "l1"
        if device is None:
            device = next(base_classifier.parameters(), torch.empty(0)).device
        self.device = torch.device(device)
        self.seed = int(torch.randint(0, 2**62, (1,)).item()) if seed is None else int(seed)
        self._calls = 0

    def _seeds(self, stream: str) -> list[int]:
        self._calls += 1
        return [noise_mod.stream_seed(self.seed, self._calls, stream)]

    def _sampling(self, batch_size: int) -> Sampling:
        return Sampling(kind=self.kind, batch_size=batch_size, chunk=batch_size, device=self.device)

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int) -> tuple[int, float]:
        """Return (cA, radius) with radius σ·Φ⁻¹(p̲A), or (ABSTAIN, 0.0).

        With probability ≥ 1 - alpha, g is constant = cA on the ℓ2 ball of that radius around x.
        """
        out = certify_batch(
            self.base_classifier,
            x.unsqueeze(0),
            self.sigma,
            self.num_classes,
            n0,
            n,
            alpha,
            self.norm,
            self._seeds("select"),
            self._seeds("estimate"),
            self._sampling(batch_size),
        )
        pred = int(out["predict"][0])
        return pred, (float(self.sigma * out["gap"][0]) if pred != ABSTAIN else 0.0)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Return g(x) or ABSTAIN; a class other than g(x) is returned with probability ≤ alpha."""
        return int(
            predict_batch(
                self.base_classifier,
                x.unsqueeze(0),
                self.sigma,
                self.num_classes,
                n,
                alpha,
                self._seeds("predict"),
                self._sampling(batch_size),
            )[0]
        )

    def _schedule(self, n_max: int, batch_size: int) -> tuple[tuple[int, ...], Sampling]:
        """Checkpoints doubling from c = gcd(batch_size, n_max) to n_max, and sampling in chunks of c."""
        from smoothcert.engine import sequential

        chunk = math.gcd(int(batch_size), int(n_max))
        cks = tuple(int(c) * chunk for c in sequential.schedule(1, n_max // chunk, 2.0))
        return cks, Sampling(kind=self.kind, batch_size=batch_size, chunk=chunk, device=self.device)

    def certify_sequential(
        self,
        x: torch.Tensor,
        n0: int,
        n_max: int,
        alpha: float,
        batch_size: int,
        radius: float | None = None,
        *,
        precision: float = 0.1,
    ) -> tuple[int, float, int]:
        """CERTIFY with early stopping (:func:`certify_sequential_batch`): (cA or ABSTAIN, radius, draws used).

        ``radius=None``: estimate mode (stop once σ·gap(p̲A) is within ``precision`` of the upper radius);
        a number: decide whether x is certified at that radius. Either way the returned radius is σ·Φ⁻¹(p̲A) at
        the stopping time: with probability ≥ 1 − alpha, g is constant = cA on that ℓ2 ball (ℓ1 for uniform
        noise). Checkpoints double from gcd(batch_size, n_max) up to n_max (a union bound over them).
        """
        from smoothcert.engine import sequential

        cks, sampling = self._schedule(n_max, batch_size)
        plan = SequentialPlan(cks, sequential.UnionCP(cks), None if radius is None else (float(radius),), precision)
        out = certify_sequential_batch(
            self.base_classifier,
            x.unsqueeze(0),
            self.sigma,
            self.num_classes,
            n0,
            alpha,
            self.norm,
            self._seeds("select"),
            self._seeds("estimate"),
            sampling,
            plan,
            np.array([self.sigma]),
        )
        pred = int(out["predict"][0])
        return pred, (float(self.sigma * out["gap"][0]) if pred != ABSTAIN else 0.0), int(n0 + out["n"][0])

    def predict_sequential(self, x: torch.Tensor, n_max: int, alpha: float, batch_size: int) -> tuple[int, int]:
        """PREDICT with early stopping (:func:`predict_sequential_batch`): (g(x) or ABSTAIN, draws used); a class
        other than g(x) is returned with probability ≤ alpha. Checkpoints double from gcd(batch_size, n_max)."""
        cks, sampling = self._schedule(n_max, batch_size)
        out = predict_sequential_batch(
            self.base_classifier,
            x.unsqueeze(0),
            self.sigma,
            self.num_classes,
            alpha,
            self._seeds("predict"),
            sampling,
            cks,
        )
        return int(out["predict"][0]), int(out["n"][0])
