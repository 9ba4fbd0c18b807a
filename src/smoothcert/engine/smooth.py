"""``Smooth``: the call-compatible port of locuslab/smoothing's ``core.Smooth`` (one input per call)."""

from __future__ import annotations

import torch
from torch import nn

from smoothcert.engine import noise as noise_mod
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import Draws, SequentialPlan, certify, predict_batch, predict_sequential_batch
from smoothcert.engine.sampling import Sampling

SEQUENTIAL_CHUNK = 1000  # draws per noise chunk of the sequential streams (fixes their noise, whatever batch_size)


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
        return self._certify(x, Draws(n0, alpha, self.norm, self._sampling(batch_size), n=n))[:2]

    def _certify(self, x: torch.Tensor, draws: Draws) -> tuple[int, float, int]:
        """(cA or ABSTAIN, radius σ·gap, estimation draws) of one input by :func:`certify`."""
        seeds = (self._seeds("select"), self._seeds("estimate"))
        out = certify(*self._one(x), seeds, draws, [self.sigma])
        pred = int(out["predict"][0])
        return pred, (float(self.sigma * out["gap"][0]) if pred != ABSTAIN else 0.0), int(out["n"][0])

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """Return g(x) or ABSTAIN; a class other than g(x) is returned with probability ≤ alpha."""
        return int(predict_batch(*self._one(x), n, alpha, self._seeds("predict"), self._sampling(batch_size))[0])

    def _one(self, x: torch.Tensor) -> tuple:
        """(base classifier, x as a batch of one, σ, classes): what every engine call of one input starts with."""
        return self.base_classifier, x.unsqueeze(0), self.sigma, self.num_classes

    def _schedule(self, n_min: int, n_max: int, ratio: float, batch_size: int) -> tuple[tuple[int, ...], Sampling]:
        """Checkpoints n_min·ratio^k up to n_max (:func:`sequential.schedule`) and sampling in chunks of at most
        :data:`SEQUENTIAL_CHUNK` draws: neither depends on ``batch_size``, so neither do the results."""
        from smoothcert.engine import sequential

        cks = tuple(int(c) for c in sequential.schedule(n_min, n_max, ratio))
        sampling = Sampling(kind=self.kind, batch_size=batch_size, chunk=SEQUENTIAL_CHUNK, device=self.device)
        return cks, sampling

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
        n_min: int = 10,
        ratio: float = 1.25,
    ) -> tuple[int, float, int]:
        """CERTIFY with early stopping (:func:`certify_sequential_batch`): (cA or ABSTAIN, radius, draws used).

        ``radius=None``: estimate mode (stop once σ·gap(p̲A) is within ``precision`` of the upper radius);
        a number: decide whether x is certified at that radius. Either way the returned radius is σ·Φ⁻¹(p̲A) at
        the stopping time: with probability ≥ 1 − alpha, g is constant = cA on that ℓ2 ball (ℓ1 for uniform
        noise). Checkpoints n_min·ratio^k up to n_max (a union bound over them), whatever ``batch_size``: the
        results do not depend on it.
        """
        from smoothcert.engine import sequential

        cks, sampling = self._schedule(n_min, n_max, ratio, batch_size)
        plan = SequentialPlan(cks, sequential.UnionCP(cks), None if radius is None else (float(radius),), precision)
        pred, radius, n = self._certify(x, Draws(n0, alpha, self.norm, sampling, plan=plan))
        return pred, radius, n0 + n

    def predict_sequential(
        self, x: torch.Tensor, n_max: int, alpha: float, batch_size: int, *, n_min: int = 10, ratio: float = 1.25
    ) -> tuple[int, int]:
        """PREDICT with early stopping (:func:`predict_sequential_batch`): (g(x) or ABSTAIN, draws used); a class
        other than g(x) is returned with probability ≤ alpha. Checkpoints n_min·ratio^k up to n_max."""
        cks, sampling = self._schedule(n_min, n_max, ratio, batch_size)
        out = predict_sequential_batch(*self._one(x), alpha, self._seeds("predict"), sampling, cks)
        return int(out["predict"][0]), int(out["n"][0])
