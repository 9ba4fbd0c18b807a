"""Shared fixtures: tiny models and configs that run in milliseconds."""

from __future__ import annotations

import collections
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


# ---------------------------------------------------------------- pytest-xdist
# `make test` runs `-n 2 --dist loadfile --no-loadscope-reorder`: each file's tests on one worker, in the order
# below. Scheduling only: every test runs as it would without xdist.


def pytest_configure(config):
    """Each of k workers gets 1/k of torch's threads: two workers on two cores, each with two threads, contend."""
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers > 1:
        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


def pytest_collection_modifyitems(config, items):
    """Under xdist, the files with the most slow tests first (the longest first, roughly), so that none of them
    starts last; otherwise file order. Each file's tests stay together and in their order."""
    if not hasattr(config, "workerinput"):
        return
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])  # stable
