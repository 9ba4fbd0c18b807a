"""Performance invariants of the Monte Carlo engine that do not need a clock.

* memory: the peak of live torch storage during ``count_classes`` is set by the
  forward batch size (and chunk), never by n or by the number of inputs;
* batching: every forward pass holds exactly ``batch_size`` rows but the last,
  runs under ``torch.inference_mode`` and never builds an autograd graph;
* determinism: counts are the same for any batch size, any grouping of inputs and
  any progress callback, since the noise of input i depends only on its seed and chunk.

Memory is measured with a ``TorchDispatchMode`` that sees every tensor an aten op
returns (factory functions included): it adds each new storage's bytes when it
appears and subtracts them when the storage is freed (a finalizer on the storage,
which survives while any view of it lives), so ``peak`` is the exact high-water
mark of the torch memory created inside the block, independent of the allocator.
"""

from __future__ import annotations

import weakref

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling, count_classes

SHAPE = (1, 8, 8)
ROW_BYTES = 4 * int(np.prod(SHAPE))


# When the counting threads release a pass's logits is timing-dependent: under load the high-water mark moves by
# a few small buffers (seen: 4 KiB). An engine that kept O(n) or O(B·n) memory would differ by megabytes.
SLACK = 16 * 1024


class LiveTorchBytes(TorchDispatchMode):
    """High-water mark of the bytes held by torch storages created while the mode is active.

    Outputs that share memory with an op's inputs (views, in-place ops) are not new
    memory; neither are the caller's tensors (x, σ) when the engine first slices them.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0
        self._seen: set[int] = set()

    def _free(self, ptr: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.discard(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or ptr in self._seen or ptr in inputs:
                continue  # an empty tensor, or a view / in-place result of memory already counted or not ours
            self._seen.add(ptr)
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self.largest = max(self.largest, nbytes)
            weakref.finalize(storage, self._free, ptr, nbytes)
        return out


class PixelVote(nn.Module):
    """A cheap K-class classifier: logits are the first K pixels (so the forward costs nothing)."""

    def __init__(self, k: int = 4):
        super().__init__()
        self.k = k
        self.sizes: list[int] = []
        self.inference: list[bool] = []
        self.grad: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        self.inference.append(torch.is_inference_mode_enabled())
        self.grad.append(torch.is_grad_enabled())
        return x.flatten(1)[:, : self.k]


def _inputs(b: int, seed: int = 0) -> tuple[torch.Tensor, list[int]]:
    x = torch.rand(b, *SHAPE, generator=torch.Generator().manual_seed(seed))
    return x, [stream_seed(seed, i, "estimate") for i in range(b)]


def _peak(n: int, batch_size: int, chunk: int, b: int = 2, scale=0.5) -> LiveTorchBytes:
    x, seeds = _inputs(b)
    model = PixelVote()
    with LiveTorchBytes() as mem:
        counts = count_classes(model, x, scale, n, model.k, seeds, Sampling(batch_size=batch_size, chunk=chunk))
    assert (counts.sum(1) == n).all()
    return mem


def test_peak_memory_does_not_grow_with_n():
    small = _peak(10_000, batch_size=256, chunk=256)
    large = _peak(100_000, batch_size=256, chunk=256)
    assert abs(large.peak - small.peak) <= SLACK
    # An O(n) engine would hold 100,000 rows (25.6 MB here); this one holds about two batches.
    assert large.peak <= 3 * 256 * ROW_BYTES + 64 * 1024
    assert large.largest <= 2 * 256 * ROW_BYTES


def test_peak_memory_does_not_grow_with_the_number_of_inputs():
    few = _peak(2_000, batch_size=256, chunk=256, b=2)
    many = _peak(2_000, batch_size=256, chunk=256, b=64)
    # Only the (B, K) count table grows with B.
    assert many.peak - few.peak <= 64 * 4 * 8 + SLACK


def test_peak_memory_many_small_inputs_per_batch_is_bounded():
    # n0-like draws: 32 inputs share each forward pass.
    theta = torch.rand(400, *SHAPE) + 0.1
    small = _peak(32, batch_size=1024, chunk=32, b=200, scale=theta[:200])
    large = _peak(32, batch_size=1024, chunk=32, b=400, scale=theta)
    assert large.peak - small.peak <= 200 * 4 * 8 + SLACK  # the count table
    assert large.peak <= 5 * 1024 * ROW_BYTES + 64 * 1024


def test_peak_memory_follows_the_batch_size():
    # The measure is not vacuous: it sees the staging buffer grow with the forward batch.
    small = _peak(20_000, batch_size=256, chunk=256)
    large = _peak(20_000, batch_size=2048, chunk=256)
    assert large.peak > 4 * small.peak
    assert large.peak <= 3 * (2048 + 256) * ROW_BYTES + 64 * 1024


def test_peak_memory_with_per_dimension_scale_is_bounded():
    theta = torch.rand(3, *SHAPE) + 0.1
    small = _peak(5_000, batch_size=256, chunk=100, b=3, scale=theta)
    large = _peak(50_000, batch_size=256, chunk=100, b=3, scale=theta)
    assert abs(large.peak - small.peak) <= SLACK


@pytest.mark.parametrize(
    "b,n,batch_size,chunk",
    [(5, 1000, 400, 300), (3, 100, 1000, 100), (1, 2500, 1000, 1000), (7, 64, 100, 64), (2, 1000, 128, 1000)],
)
def test_every_forward_pass_is_full_but_the_last(b, n, batch_size, chunk):
    x, seeds = _inputs(b)
    model = PixelVote()
    count_classes(model, x, 0.5, n, model.k, seeds, Sampling(batch_size=batch_size, chunk=chunk))
    assert sum(model.sizes) == b * n
    assert all(m == batch_size for m in model.sizes[:-1])
    assert 0 < model.sizes[-1] <= batch_size
    assert len(model.sizes) == -(-b * n // batch_size)


def test_forward_runs_in_inference_mode_without_grad():
    x, seeds = _inputs(2)
    model = PixelVote()
    count_classes(model, x, 0.5, 500, model.k, seeds, Sampling(batch_size=128, chunk=100))
    assert all(model.inference) and not any(model.grad)


class Progress:
    def __init__(self):
        self.total = 0
        self.updates = 0

    def update(self, k: int) -> None:
        assert k > 0
        self.total += k
        self.updates += 1


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 40),
    n=st.integers(1, 300),
    chunk=st.integers(1, 400),
    batch_a=st.integers(1, 1500),
    batch_b=st.integers(1, 1500),
    kind=st.sampled_from(["gaussian", "uniform"]),
    scale=st.sampled_from(["scalar", "per_input", "per_dim"]),
)
def test_counts_do_not_depend_on_batch_size_or_grouping(b, n, chunk, batch_a, batch_b, kind, scale):
    x, seeds = _inputs(b, seed=n)
    gen = torch.Generator().manual_seed(b)
    sigma = {
        "scalar": 0.3,
        "per_input": torch.rand(b, generator=gen) + 0.1,
        "per_dim": torch.rand(b, *SHAPE, generator=gen) + 0.1,
    }[scale]
    model = PixelVote()
    progress = Progress()
    a = count_classes(
        model, x, sigma, n, model.k, seeds, Sampling(kind=kind, batch_size=batch_a, chunk=chunk), progress
    )
    c = count_classes(model, x, sigma, n, model.k, seeds, Sampling(kind=kind, batch_size=batch_b, chunk=chunk))
    split = b // 2
    parts = [
        count_classes(
            model,
            x[lo:hi],
            sigma if scale == "scalar" else sigma[lo:hi],
            n,
            model.k,
            seeds[lo:hi],
            Sampling(kind=kind, batch_size=batch_b, chunk=chunk),
        )
        for lo, hi in ((0, split), (split, b))
    ]
    assert np.array_equal(a, c)
    assert np.array_equal(a, np.concatenate(parts))
    assert (a.sum(1) == n).all()
    assert progress.total == b


@pytest.mark.parametrize("b,n,batch_size", [(3, 250, 170), (40, 30, 900)])  # few / many inputs per forward pass
def test_counts_match_input_by_input_reference(b, n, batch_size):
    """The engine's noise for input i is its generator's chunks, in order: check against a direct loop."""
    from smoothcert.engine import noise

    chunk = 100
    x, seeds = _inputs(b)
    sigma = torch.linspace(0.2, 1.0, b)
    model = PixelVote()
    got = count_classes(model, x, sigma, n, model.k, seeds, Sampling(batch_size=batch_size, chunk=chunk))
    want = np.zeros_like(got)
    for i in range(b):
        gen = noise.make_generator(seeds[i], "cpu")
        for c in noise.chunk_sizes(n, chunk):
            eps = noise.fill_standard(torch.empty((c, *SHAPE)), "gaussian", gen)
            pred = model(eps * sigma[i] + x[i]).argmax(1)
            want[i] += np.bincount(pred.numpy(), minlength=model.k)
    assert np.array_equal(got, want)
