"""Sampling and counting: the Monte Carlo engine of randomized smoothing, on the CPU and on a device.

:func:`count_classes` evaluates the base classifier on noisy copies of several inputs per forward pass and
accumulates class counts (on the device with ``index_add_``; on the CPU with the noise of the next pass drawn
by a thread pool while the current one runs), so memory is bounded by the batch size, never by n. Input i's
draws depend only on its seed and the chunk size (:class:`Sampling`), never on the batch it shares.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from smoothcert.engine import noise as noise_mod


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
        # the ends run here, not on a noise thread: nothing overlaps them, and a thread's wake-up would be waited on
        job = None
        prepare(0)
        counting = []
        for t in range(passes):
            if job is not None:
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
            if t + 1 < passes:
                counting.append(ex.submit(count, t, logits.numpy()))
            else:
                count(t, logits.numpy())
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
