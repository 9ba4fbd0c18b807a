"""Training objectives by name: each maps a batch to a loss.

An objective has the signature ``loss(model, x, y, sigma, kind, ctx) -> (loss, logits)``
where ``sigma`` is a per-sample (B,) tensor of noise levels (fixed σ broadcast, or
the data-dependent buffer's entries), ``kind`` is ``gaussian`` or ``uniform`` and
``ctx`` is a :class:`TrainContext` (config sections, epoch, generator).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from smoothcert.noise import noisy_copies


@dataclass
class TrainContext:
    """What an objective may need beyond the batch."""

    cfg: dict = field(default_factory=dict)
    epoch: int = 0
    generator: torch.Generator | None = None


def gaussian_augmentation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor, kind: str,
                          ctx: TrainContext):
    """Cohen et al.: cross-entropy of f(x + ε) with one noise draw per input."""
    logits = model(noisy_copies(x, sigma, 1, kind, ctx.generator))
    return F.cross_entropy(logits, y), logits


OBJECTIVES: dict[str, Callable] = {"gaussian": gaussian_augmentation}

# sigma_mode -> updater(model, x, y, sigma, kind, ctx) -> new per-sample sigma (B,), applied to
# the batch's entries of the per-training-sample buffer before the loss. "fixed" needs none.
SIGMA_UPDATERS: dict[str, Callable] = {}
