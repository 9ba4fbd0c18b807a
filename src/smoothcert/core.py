"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019), batched over many inputs.

``count_classes`` is the Monte Carlo engine: it evaluates the base classifier on
noisy copies of several inputs per forward pass and accumulates class counts on
the device (``bincount``), so memory is bounded by the batch size, never by n.
``certify_batch`` and ``predict_batch`` are the paper's CERTIFY and PREDICT for
many inputs at once, each with its own σ (scalar, per input, or per dimension θ);
:class:`Smooth` is the call-compatible port of locuslab/smoothing's ``core.Smooth``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from smoothcert import noise as noise_mod
from smoothcert import stats

ABSTAIN = -1


@dataclass
class Sampling:
    """How Monte Carlo draws are made: noise kind, forward batch size, chunk size, device, AMP."""

    kind: str = "gaussian"
    batch_size: int = 1000
    chunk: int = 1000
    device: str | torch.device = "cpu"
    amp: bool = False


def count_classes(model: nn.Module, x: torch.Tensor, scale, num: int, num_classes: int,
                  seeds: list[int], sampling: Sampling, progress=None) -> np.ndarray:
    """Counts of the base classifier's argmax over ``num`` noisy draws per input.

    ``x``: (B, *shape) inputs; ``scale``: σ, (B,) or (B, *shape); ``seeds``: one
    generator seed per input. Returns int64 counts of shape (B, num_classes).
    Draws for input i depend only on ``seeds[i]`` and ``sampling.chunk``.

    The draws form one stream of rows, input after input: each input's standard
    noise is drawn chunk by chunk by its own generator straight into a staging
    buffer allocated once, and turned into x + σ ⊙ ε in place (ε·σ, then + x: the
    same float operations as drawing input by input) just before its forward pass.
    Every forward pass takes exactly ``sampling.batch_size`` rows of the stream
    (several small inputs, or part of one large n; only the last pass is shorter).
    Row r of the stream belongs to input r // num, so counts are accumulated on the
    device (``index_add_``, no host sync) without per-chunk bookkeeping. Memory is
    O(batch_size + chunk) rows whatever n and B.
    """
    device = torch.device(sampling.device)
    b, shape = x.shape[0], tuple(x.shape[1:])
    counts = torch.zeros((b, num_classes), dtype=torch.int64, device=device)
    if num <= 0 or b == 0:
        return counts.cpu().numpy()
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
            body = batch[r:r + k * num].view(k, num, *shape)
            body.mul_(s[j:j + k].unsqueeze(1)).add_(x[j:j + k].unsqueeze(1))
            r, j = r + k * num, j + k
        if r < m:  # the first rows of input j
            batch[r:].mul_(s[j]).add_(x[j])

    def forward(lo: int, m: int) -> None:
        nonlocal counted
        batch = buf[lo:lo + m]
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
            buf[:pending - q].copy_(buf[q:pending])
        pending -= q
        if progress is not None and counted // num > reported:
            progress.update(counted // num - reported)
            reported = counted // num

    with torch.inference_mode():
        for i in range(b):
            gen = noise_mod.make_generator(seeds[i], device)
            for c in sizes:
                noise_mod.fill_standard(buf[pending:pending + c], sampling.kind, gen)
                pending += c
                if pending >= rows:
                    flush(final=False)
        flush(final=True)
    return counts.cpu().numpy()


def certify_batch(model: nn.Module, x: torch.Tensor, scale, num_classes: int, n0: int, n: int, alpha: float,
                  norm: str, seeds_select: list[int], seeds_estimate: list[int], sampling: Sampling,
                  progress=None) -> dict[str, np.ndarray]:
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


def predict_batch(model: nn.Module, x: torch.Tensor, scale, num_classes: int, n: int, alpha: float,
                  seeds: list[int], sampling: Sampling) -> np.ndarray:
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


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + ε) = c), ε ~ N(0, σ² I).

    Call-compatible with locuslab/smoothing's ``core.Smooth``: ``predict(x, n, alpha,
    batch_size)`` and ``certify(x, n0, n, alpha, batch_size)`` take one input x
    of shape (C, H, W). Each call draws fresh noise from a seeded stream.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, base_classifier: nn.Module, num_classes: int, sigma: float, seed: int | None = None,
                 device: str | torch.device | None = None, kind: str = "gaussian"):
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
        out = certify_batch(self.base_classifier, x.unsqueeze(0), self.sigma, self.num_classes, n0, n, alpha,
                            self.norm, self._seeds("select"), self._seeds("estimate"), self._sampling(batch_size))
        pred = int(out["predict"][0])
        return pred, (float(self.sigma * out["gap"][0]) if pred != ABSTAIN else 0.0)

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Return g(x) or ABSTAIN; a class other than g(x) is returned with probability ≤ alpha."""
        return int(predict_batch(self.base_classifier, x.unsqueeze(0), self.sigma, self.num_classes, n, alpha,
                                 self._seeds("predict"), self._sampling(batch_size))[0])
