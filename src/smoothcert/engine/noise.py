"""The one noise sampler every method plugs into: seeded, per input, device-aware, 64-bit keyed.

Each test input ``idx`` owns independent random streams (selection, estimation,
prediction, σ-optimization, ...) keyed by ``stream_seed(seed, idx, stream)`` only, so
results do not depend on how inputs are sharded or batched.

Streams (CPU). A generator made by :func:`make_generator` is a key (the whole seed, up to
128 bits: no truncation to 32 bits as in torch's CPU ``manual_seed``) and a call counter.
Its k-th draw (one :func:`fill_standard` call, i.e. one chunk of ``count_classes``) of n
values is cut into blocks of :data:`BLOCK` values; block j is drawn from its own numpy
``SFC64`` bit generator whose state is the output of the counter-based ``Philox4x64-10``
(numpy) at key = seed, counter = (k, j) — Philox used as a keyed hash, as ``SeedSequence``
would be, but cheap enough per block; numpy's SFC64 mixing rounds are then run as in its
own seeding. Distinct (seed, call, block) give distinct Philox counters/keys, so distinct
initial states (for one seed, different counters map to different outputs: Philox is a
bijection) and, with 192 random state bits, streams that do not overlap. The values of a
draw depend on (seed, k, n) only: never on the buffer they land in, the threads, the batch.

Values. Gaussian: Box–Muller on 24-bit uniforms, u₁ = (k₁ + 1)·2⁻²⁴ ∈ (0, 1],
θ = 2π·k₂·2⁻²⁴, r = √(−2 ln u₁); a block of n values holds r·cos θ of its pairs first, then
r·sin θ (as torch's CPU ``normal_`` does, tails reach |z| ≤ 5.77). Uniform U[−1, 1): k·2⁻²³ − 1
from the top 24 bits of a 32-bit word, exact. Float32 throughout (also when filling float64).
The transform is vectorized numpy over the padded concatenation of many blocks, each padded to
a multiple of :data:`_PAD` pairs so that every element goes through the same SIMD code path;
numpy's random and array kernels release the GIL, so :func:`fill_many` spreads blocks over a
small thread pool.

CUDA: torch's CUDA generator (Philox, takes the full 64-bit seed) draws in place; the k-th
draw reseeds it with a 64-bit value hashed from (key, k) by the same Philox, so CUDA streams are
keyed the same way but hold other values than CPU ones (as before this change).

The object returned by :func:`make_generator` is a ``torch.Generator`` too (for torch functions
such as ``torch.rand(..., generator=g)``): that part is seeded with a 64-bit hash of the key, which
torch's CPU generator still truncates to 32 bits — used only for augmentation choices, never for
the smoothing noise. A plain ``torch.Generator`` (or None) passed to :func:`fill_standard` draws with
torch's own ``normal_``/``uniform_``, as before.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

STREAMS = {"select": 0, "estimate": 1, "predict": 2, "optimize": 3, "train": 4, "attack": 5, "patches": 6}
KINDS = ("gaussian", "uniform")
VERSION = 2  # of the noise streams: 1 = torch CPU mt19937 seeded with 32 bits; 2 = this module's keyed streams
BLOCK = 1 << 16  # values per independently keyed block of one draw
_PAD = 64  # pairs (gaussian) / values (uniform) each block is padded to a multiple of in the vector transform
_M64 = (1 << 64) - 1
_S24 = np.float32(2.0**-24)
_S23 = np.float32(2.0**-23)
_TWO_PI_24 = np.float32(2.0 * np.pi * 2.0**-24)
_CUDA_TAG = 1  # Philox counter word 1 for deriving CUDA seeds (CPU blocks use word 1 = 0)


def _words(value: int, n: int, what: str) -> list[int]:
    """``value`` as exactly ``n`` little-endian 32-bit words (negative values modulo 2**64, as torch's seeds)."""
    v = int(value)
    if v < 0:
        if v < -(1 << 63):
            raise ValueError(f"{what} {value} is below -2**63")
        v += 1 << 64
    if v >= 1 << (32 * n):
        raise ValueError(f"{what} {value} does not fit in {32 * n} bits")
    return [(v >> (32 * k)) & 0xFFFFFFFF for k in range(n)]


def stream_seed(seed: int, idx: int, stream: str) -> int:
    """A 63-bit seed for ``(seed, idx, stream)`` via numpy's SeedSequence hashing.

    The triple is encoded in a fixed number of 32-bit words (seed: 4, idx: 2, stream: 1) before hashing, so
    distinct triples are distinct inputs to the hash (a variable-length encoding would make e.g. (2³³, 0) and
    (0, 2) the same word list); distinct outputs then hold but for hash collisions, ~N²/2⁶⁴ among N streams.
    """
    words = _words(seed, 4, "seed") + _words(idx, 2, "input index") + [STREAMS[stream]]
    state = np.random.SeedSequence(np.array(words, dtype=np.uint32)).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


def key_of(seed: int) -> tuple[int, int]:
    """The 128-bit Philox key of ``seed`` (two 64-bit words): the seed's own bits, so distinct seeds in
    [-2⁶³, 2¹²⁸) have distinct keys (negative seeds are taken modulo 2⁶⁴, as torch's ``manual_seed`` does)."""
    s = int(seed)
    if s < 0:
        if s < -(1 << 63):
            raise ValueError(f"seed {seed} is below -2**63")
        s += 1 << 64
    if s >= 1 << 128:
        raise ValueError(f"seed {seed} does not fit in 128 bits")
    return s & _M64, s >> 64


class _Bits(threading.local):
    """Per-thread numpy bit generators (their state is reset for every block)."""

    def __init__(self):
        self.philox = np.random.Philox(key=0)
        self.pstate = self.philox.state
        self.sfc = np.random.SFC64(0)
        self.sstate = self.sfc.state
        self.words = np.zeros(4, dtype=np.uint64)
        self.scratch: dict[str, np.ndarray] = {}

    def buffer(self, name: str, size: int, dtype) -> np.ndarray:
        """A reused per-thread scratch array of at least ``size`` elements (its first ``size``)."""
        buf = self.scratch.get(name)
        if buf is None or buf.size < size:
            buf = self.scratch[name] = np.empty(max(size, 2 * (0 if buf is None else buf.size)), dtype=dtype)
        return buf[:size]

    def _philox(self, key: tuple[int, int], counter: tuple[int, int, int, int], count: int) -> np.ndarray:
        st = self.pstate
        st["state"]["key"][:] = key
        st["state"]["counter"][:] = counter
        st["buffer_pos"], st["has_uint32"], st["uinteger"] = 4, 0, 0
        self.philox.state = st
        return self.philox.random_raw(count)

    def raw(self, key: tuple[int, int], call: int, block: int, count: int) -> np.ndarray:
        """``count`` 64-bit words of stream (key, call, block)."""
        w = self.words
        w[:3] = self._philox(key, (0, 0, block, call), 3)
        w[3] = 1
        st = self.sstate
        st["state"]["state"] = w
        st["has_uint32"], st["uinteger"] = 0, 0
        self.sfc.state = st
        self.sfc.random_raw(12)  # the mixing rounds of numpy's own SFC64 seeding
        return self.sfc.random_raw(count)

    def seed64(self, key: tuple[int, int], call: int) -> int:
        return int(self._philox(key, (0, _CUDA_TAG, 0, call), 1)[0])


_bits = _Bits()


def cuda_seed(seed: int, call: int) -> int:
    """The 64-bit seed of draw ``call`` of generator ``seed`` on CUDA."""
    return _bits.seed64(key_of(seed), int(call))


class NoiseGenerator(torch.Generator):
    """A seeded noise stream: ``key`` (the whole seed) and ``calls``, the number of draws made so far.

    Also a ``torch.Generator`` on ``device`` (seeded with a hash of the key) for torch's own random
    functions; :func:`fill_standard` does not use that part on CPU.
    """

    def __new__(cls, seed: int, device: torch.device | str = "cpu"):
        return super().__new__(cls, device=torch.device(device))

    def __init__(self, seed: int, device: torch.device | str = "cpu"):
        super().__init__()
        self.seed = int(seed)
        self.key = key_of(self.seed)
        self.calls = 0
        self.manual_seed(_bits.seed64(self.key, (1 << 64) - 1))

    def take(self) -> int:
        """The index of the next draw (and count it)."""
        k = self.calls
        self.calls += 1
        return k


def make_generator(seed: int, device: torch.device | str) -> NoiseGenerator:
    """A :class:`NoiseGenerator` for ``seed`` (all of its bits) on ``device``."""
    return NoiseGenerator(seed, device)


# ------------------------------------------------------------------------------------------ CPU kernels
def block_sizes(n: int) -> list[int]:
    """Values per block of one draw of ``n`` values."""
    full, rest = divmod(int(n), BLOCK)
    return [BLOCK] * full + ([rest] if rest else [])


def _pad(m: int) -> int:
    return -(-m // _PAD) * _PAD


class Part:
    """One block to draw: stream (key, call, block), ``n`` values, written into ``base[offset:offset + n]``
    (``base``: a flat float32 numpy array)."""

    __slots__ = ("key", "call", "block", "n", "base", "offset")

    def __init__(self, key, call, block, n, base, offset):
        self.key, self.call, self.block, self.n, self.base, self.offset = key, call, block, n, base, offset


def parts_of(key: tuple[int, int], call: int, base: np.ndarray, offset: int = 0, n: int | None = None) -> list[Part]:
    """The blocks of draw ``call`` of ``key``, of ``n`` values (default: all of ``base`` after ``offset``),
    into the flat float32 array ``base`` from ``offset`` on."""
    n = base.size - offset if n is None else int(n)
    out = []
    for j, m in enumerate(block_sizes(n)):
        out.append(Part(key, call, j, m, base, offset))
        offset += m
    return out


def _runs(parts: Sequence[Part], sizes: Sequence[int], contiguous: bool = True):
    """Maximal runs of consecutive parts of equal size (and, if ``contiguous``, written back to back into
    one array): (first index, count) — each run is handled with 2-D operations."""
    i = 0
    while i < len(parts):
        j = i + 1
        while (
            j < len(parts)
            and parts[j].n == parts[i].n
            and (
                not contiguous
                or (parts[j].base is parts[i].base and parts[j].offset == parts[j - 1].offset + parts[i].n)
            )
        ):
            j += 1
        yield i, j - i
        i = j


GROUP = 1 << 14  # elements (pairs / values) per vectorized transform: its arrays stay in the L2 cache


def draw_parts(parts: Sequence[Part], kind: str) -> None:
    """Draw every part into its destination (this thread): vectorized transforms over groups of
    consecutive parts of about :data:`GROUP` elements (a part's values do not depend on its group)."""
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {KINDS}")
    fn, size = (_gaussian, lambda p: _pad((p.n + 1) // 2)) if kind == "gaussian" else (_uniform, lambda p: _pad(p.n))
    group, acc = [], 0
    for p in parts:
        m = size(p)
        if group and acc + m > GROUP:
            fn(group)
            group, acc = [], 0
        group.append(p)
        acc += m
    if group:
        fn(group)


def _gaussian(parts: Sequence[Part]) -> None:
    half = [(p.n + 1) // 2 for p in parts]
    tot = sum(_pad(h) for h in half)
    bits = _bits
    u, t = bits.buffer("u", tot, np.uint32), bits.buffer("t", tot, np.uint32)
    r, c, s = bits.buffer("r", tot, np.float32), bits.buffer("c", tot, np.float32), bits.buffer("s", tot, np.float32)
    o = 0
    for i, k in _runs(parts, half, contiguous=False):  # parts of equal size: their words side by side
        h, step = half[i], _pad(half[i])
        w = np.stack([bits.raw(p.key, p.call, p.block, h) for p in parts[i : i + k]]).view(np.uint32).reshape(k, 2, h)
        uu, tt = u[o : o + k * step].reshape(k, step), t[o : o + k * step].reshape(k, step)
        np.right_shift(w[:, 0], 8, out=uu[:, :h])  # 24-bit integers: k₁ from the first h words, k₂ from the rest
        np.right_shift(w[:, 1], 8, out=tt[:, :h])
        if step > h:  # padding: harmless values
            uu[:, h:] = 0
            tt[:, h:] = 0
        o += k * step
    np.multiply(u.view(np.int32), _S24, out=r, dtype=np.float32, casting="unsafe")
    r += _S24  # u₁ = (k₁ + 1)·2⁻²⁴ ∈ (0, 1], exact
    np.log(r, out=r)
    r *= np.float32(-2.0)
    np.sqrt(r, out=r)
    theta = s
    np.multiply(t.view(np.int32), _TWO_PI_24, out=theta, dtype=np.float32, casting="unsafe")
    np.cos(theta, out=c)
    np.sin(theta, out=s)
    starts = np.cumsum([0] + [_pad(h) for h in half])
    for i, k in _runs(parts, half):
        p, h, step = parts[i], half[i], _pad(half[i])
        n, o = p.n, int(starts[i])
        dest = p.base[p.offset : p.offset + k * n].reshape(k, n)
        rr = r[o : o + k * step].reshape(k, step)
        np.multiply(c[o : o + k * step].reshape(k, step)[:, :h], rr[:, :h], out=dest[:, :h])
        np.multiply(s[o : o + k * step].reshape(k, step)[:, : n - h], rr[:, : n - h], out=dest[:, h:])


def _uniform(parts: Sequence[Part]) -> None:
    tot = sum(_pad(p.n) for p in parts)
    bits = _bits
    u, f = bits.buffer("u", tot, np.uint32), bits.buffer("r", tot, np.float32)
    o = 0
    for i, k in _runs(parts, [p.n for p in parts], contiguous=False):
        n, step = parts[i].n, _pad(parts[i].n)
        w = np.stack([bits.raw(p.key, p.call, p.block, (n + 1) // 2) for p in parts[i : i + k]]).view(np.uint32)
        uu = u[o : o + k * step].reshape(k, step)
        np.right_shift(w[:, :n], 8, out=uu[:, :n])
        if step > n:
            uu[:, n:] = 0
        o += k * step
    np.multiply(u.view(np.int32), _S23, out=f, dtype=np.float32, casting="unsafe")  # k·2⁻²³ ∈ [0, 2), exact
    starts = np.cumsum([0] + [_pad(p.n) for p in parts])
    for i, k in _runs(parts, [p.n for p in parts]):
        p, o = parts[i], int(starts[i])
        n, step = p.n, _pad(p.n)
        np.subtract(
            f[o : o + k * step].reshape(k, step)[:, :n],
            np.float32(1.0),
            out=p.base[p.offset : p.offset + k * n].reshape(k, n),
        )


# ------------------------------------------------------------------------------------------ thread pool
POOL_SIZE = 18  # threads at most (they are started only as needed)
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid = -1
_pool_lock = threading.Lock()


_cores: tuple[int, int] | None = None  # (pid, count)


def cores() -> int:
    """The cores this process may run on (read once per process)."""
    global _cores
    if _cores is None or _cores[0] != os.getpid():
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _cores = (os.getpid(), max(1, n))
    return _cores[1]


def workers() -> int:
    """Threads :func:`fill_many` may spread one large draw over: ``SMOOTHCERT_NOISE_THREADS``, else the usable
    cores, at most 8."""
    env = os.environ.get("SMOOTHCERT_NOISE_THREADS")
    if env is not None and env.strip():
        return max(1, int(env))
    return min(8, cores())


def pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's noise thread pool (made anew in a forked child)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=POOL_SIZE, thread_name_prefix="smoothcert-noise")
            _pool_pid = os.getpid()
        return _pool


def split_weighted(items: Sequence, weights: Sequence[int], k: int) -> list[list]:
    """``items`` in at most ``k`` consecutive, non-empty groups of about equal total weight."""
    k = max(1, min(k, len(items)))
    total = sum(weights)
    groups, cur, acc = [], [], 0
    for item, w in zip(items, weights):
        cur.append(item)
        acc += w
        if len(groups) < k - 1 and acc * k >= total * (len(groups) + 1):
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    return groups


def split(parts: Sequence[Part], k: int) -> list[list[Part]]:
    """``parts`` in at most ``k`` consecutive groups of about equal numbers of values."""
    return split_weighted(parts, [p.n for p in parts], k)


def submit_parts(parts: Sequence[Part], kind: str, threads: int | None = None) -> list[concurrent.futures.Future]:
    """Draw ``parts`` on the pool (split into ``threads`` groups); wait on the returned futures."""
    ex = pool()
    return [ex.submit(draw_parts, g, kind) for g in split(parts, threads or workers())]


def _flat_f32(out: torch.Tensor) -> tuple[np.ndarray, torch.Tensor | None]:
    """A flat float32 numpy view of ``out`` (CPU), or of a staging tensor to copy back afterwards."""
    if out.dtype == torch.float32 and out.is_contiguous():
        return out.detach().view(-1).numpy(), None
    tmp = torch.empty(out.shape, dtype=torch.float32)
    return tmp.view(-1).numpy(), tmp


def fill_many(outs: Sequence[torch.Tensor], kind: str, generators: Sequence[torch.Generator | None]) -> None:
    """:func:`fill_standard` of ``outs[i]`` with ``generators[i]`` for every i, drawing CPU ones in parallel.

    The values are exactly those of filling one by one in order (each generator's draws are counted
    in that order).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {KINDS}")
    parts, back = [], []
    for out, gen in zip(outs, generators):
        if isinstance(gen, NoiseGenerator) and out.device.type == "cpu":
            flat, tmp = _flat_f32(out)
            parts += parts_of(gen.key, gen.take(), flat)
            if tmp is not None:
                back.append((out, tmp))
        else:
            fill_standard(out, kind, gen)
    if sum(p.n for p in parts) >= 2 * BLOCK and workers() > 1:
        for f in submit_parts(parts, kind):
            f.result()
    else:
        draw_parts(parts, kind)
    with torch.no_grad():
        for out, tmp in back:
            out.copy_(tmp)


def fill_rows(out: torch.Tensor, kind: str, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """``fill_many(list(out), kind, generators)``: row i of ``out`` (its first dimension) is the next draw of
    ``generators[i]``, drawn together (one vectorized transform, written back row run by row run)."""
    if (
        out.device.type != "cpu"
        or out.dtype != torch.float32
        or not out.is_contiguous()
        or not all(isinstance(g, NoiseGenerator) for g in generators)
    ):
        fill_many(list(out), kind, generators)
        return out
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {KINDS}")
    flat = out.detach().view(-1).numpy()
    m = out[0].numel() if len(out) else 0
    parts = [p for i, g in enumerate(generators) for p in parts_of(g.key, g.take(), flat, i * m, m)]
    if len(parts) > 1 and sum(p.n for p in parts) >= 2 * BLOCK and workers() > 1:
        for f in submit_parts(parts, kind):
            f.result()
    else:
        draw_parts(parts, kind)
    return out


def fill_standard(out: torch.Tensor, kind: str, generator: torch.Generator | None) -> torch.Tensor:
    """Fill ``out`` in place with standard noise: N(0, 1) or U[-1, 1].

    With a :class:`NoiseGenerator`: its next draw (see the module docstring); with a plain
    ``torch.Generator`` or None: torch's ``normal_`` / ``uniform_``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; allowed: {KINDS}")
    if isinstance(generator, NoiseGenerator):
        if out.device.type == "cpu":
            fill_many([out], kind, [generator])
            return out
        gen = torch.Generator(device=out.device)
        gen.manual_seed(_bits.seed64(generator.key, generator.take()))
        generator = gen
    with torch.no_grad():
        if kind == "gaussian":
            return out.normal_(0.0, 1.0, generator=generator)
        return out.uniform_(-1.0, 1.0, generator=generator)


def chunk_sizes(total: int, chunk: int) -> list[int]:
    """Split ``total`` draws into chunks of ``chunk`` (the last one smaller)."""
    full, rest = divmod(int(total), int(chunk))
    return [chunk] * full + ([rest] if rest else [])


def broadcast_scale(scale: torch.Tensor | float, batch: int, shape: tuple[int, ...], device) -> torch.Tensor:
    """Turn σ (scalar), per-input σ (B,) or per-dimension θ (B, *shape) into (B, *shape)-broadcastable form."""
    s = torch.as_tensor(scale, dtype=torch.float32, device=device)
    if s.ndim == 0:
        return s.expand(batch).reshape(batch, *([1] * len(shape)))
    if s.shape == (batch,):
        return s.reshape(batch, *([1] * len(shape)))
    if s.shape == (batch, *shape):
        return s
    if s.ndim == 2 and s.shape[0] == batch and s.shape[1] == int(np.prod(shape)):
        return s.reshape(batch, *shape)
    raise ValueError(f"noise scale of shape {tuple(s.shape)} does not fit inputs of shape {(batch, *shape)}")


def noisy_copies(
    x: torch.Tensor, scale: torch.Tensor, m: int, kind: str, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Differentiable reparameterized draws x + scale ⊙ ε, shape (B·m, *x.shape[1:]), rows grouped by input.

    Used by σ-optimization and training; gradients flow into ``x`` and ``scale`` (ε needs none).
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = fill_standard(torch.empty((b, m, *shape), device=x.device, dtype=x.dtype), kind, generator)
    s = broadcast_scale(scale, b, shape, x.device).unsqueeze(1)
    return (x.unsqueeze(1) + s * eps).reshape(b * m, *shape)
