"""Shared fixtures: tiny models and configs that run in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

REPO = Path(__file__).resolve().parents[1]


class Linear2(nn.Module):
    """Binary linear classifier f(x) = 1[wᵀx + b > 0] with logits (0, wᵀx + b)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


@pytest.fixture
def linear_model():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 4, 4, generator=gen)
    return Linear2(w, 0.1)


@pytest.fixture
def params() -> dict:
    """The repository's params.yaml as a dict."""
    return yaml.safe_load((REPO / "params.yaml").read_text())
