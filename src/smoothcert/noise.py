"""The one noise sampler every method plugs into: seeded, per input, device-aware.

Each test input ``idx`` owns independent random streams (selection, estimation,
prediction, σ-optimization, ...) seeded from ``(seed, idx, stream)`` only, so
results do not depend on how inputs are sharded or batched. Draws are made in
fixed-size chunks straight into device memory (``normal_``/``uniform_`` in place),
so the same chunk sequence is reproduced whatever the forward batch size.
"""
from __future__ import annotations

import numpy as np
import torch

STREAMS = {"select": 0, "estimate": 1, "predict": 2, "optimize": 3, "train": 4, "attack": 5, "patches": 6}
KINDS = ("gaussian", "uniform")


def stream_seed(seed: int, idx: int, stream: str) -> int:
    """A 63-bit seed for ``(seed, idx, stream)`` via numpy's SeedSequence hashing."""
    state = np.random.SeedSequence([int(seed), int(idx), STREAMS[stream]]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A torch.Generator on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def fill_standard(out: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Fill ``out`` in place with standard noise: N(0, 1) or U[-1, 1]."""
    if kind == "gaussian":
        return out.normal_(0.0, 1.0, generator=generator)
    if kind == "uniform":
        return out.uniform_(-1.0, 1.0, generator=generator)
    raise ValueError(f"unknown noise kind {kind!r}; allowed: {KINDS}")


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


def noisy_copies(x: torch.Tensor, scale: torch.Tensor, m: int, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Differentiable reparameterized draws x + scale ⊙ ε, shape (B·m, *x.shape[1:]), rows grouped by input.

    Used by σ-optimization and training; gradients flow into ``x`` and ``scale``.
    """
    b, shape = x.shape[0], tuple(x.shape[1:])
    eps = fill_standard(torch.empty((b, m, *shape), device=x.device, dtype=x.dtype), kind, generator)
    s = broadcast_scale(scale, b, shape, x.device).unsqueeze(1)
    return (x.unsqueeze(1) + s * eps).reshape(b * m, *shape)
