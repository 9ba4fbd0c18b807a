"""ddrs.sigma_max / ancer.sigma_max: every σ / θ entry stays under the cap during the search; null changes nothing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from smoothcert import config
from smoothcert.engine.noise import make_generator
from smoothcert.engine.surrogate import ddrs_sigma
from smoothcert.errors import SmoothcertError
from smoothcert.methods import ancer

REPO = Path(__file__).resolve().parents[1]


class NoiseLabel(nn.Module):
    """Class 0 for inputs near the origin and for heavy noise alike (the "Bag" of Fashion-MNIST): the radius
    surrogate grows with σ without bound, so an uncapped search keeps raising it."""

    def forward(self, x):
        g = 1.5 + x.flatten(1).abs().mean(1)  # |x + σε| grows with σ, and so does the gap
        return torch.stack([g, -g], 1)


def _search(n: int, cap, **kw) -> dict:
    """The keyword arguments both searches share: seeded per-input generators, the cap."""
    return dict(samples=8, sigma_max=cap, generator=[make_generator(3 + i, "cpu") for i in range(n)], **kw)


def _x(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 3, 3, generator=torch.Generator().manual_seed(0))


def _ddrs(cap, norm="l2"):
    start = torch.full((4,), 0.25)
    return ddrs_sigma(NoiseLabel(), _x(4), start, norm, **_search(4, cap, iterations=30, lr=0.5, sigma_min=0.01))


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_ddrs_cap_is_respected_and_null_changes_nothing(norm):
    free = _ddrs(None, norm)
    assert (free > 1.0).all()  # uncapped, σ runs away on this classifier
    capped = _ddrs(0.6, norm)
    assert (capped <= 0.6).all() and torch.allclose(capped, torch.full_like(capped, 0.6))
    torch.testing.assert_close(_ddrs(1e9, norm), free, rtol=0, atol=0)  # a cap never reached: identical σ
    torch.testing.assert_close(_ddrs(None, norm), free, rtol=0, atol=0)  # same seed, same σ


def _ancer(cap, theta0=0.3):
    start = torch.full((3, 9), theta0)
    return ancer.ancer_theta(NoiseLabel(), _x(3), start, "l2", **_search(3, cap, iterations=20, lr=0.1, kappa=2.0))


def test_ancer_cap_is_respected_and_null_changes_nothing():
    free = _ancer(None)
    assert free.max() > 0.8
    capped = _ancer(0.5)
    assert capped.max() <= 0.5 and capped.min() >= 0.3  # the projection θ ≥ θ0 still holds under the cap
    torch.testing.assert_close(_ancer(1e9), free, rtol=0, atol=0)
    over = _ancer(0.2)  # θ0 above the cap: the cap wins
    assert over.max() <= 0.2


def _cfg(**sections) -> dict:
    cfg = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    for name, values in sections.items():
        cfg[name].update(values)
    return cfg


def test_cap_validated_against_the_floor():
    assert config.validate(_cfg(ddrs={"sigma_max": 2.0}, ancer={"sigma_max": 2.0}))
    with pytest.raises(SmoothcertError, match=r"ddrs.sigma_max = 0.01 must exceed ddrs.sigma_min = 0.01"):
        config.validate(_cfg(ddrs={"sigma_max": 0.01}))
    with pytest.raises(SmoothcertError, match=r"ancer.sigma_max = 0.005 must exceed ddrs.sigma_min = 0.01"):
        config.validate(_cfg(ancer={"sigma_max": 0.005}))
    with pytest.raises(SmoothcertError, match=r"ddrs.sigma_max"):
        config.validate(_cfg(ddrs={"sigma_max": -1}))
