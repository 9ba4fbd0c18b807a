"""Selection draws must never be reused for estimation (Cohen et al., CERTIFY lines 1-3).

CERTIFY guesses cA from n0 selection draws and bounds p_cA from n *fresh* draws. The bound
P(p̲A > p_cA) ≤ α holds only because the estimation draws are independent of the guess. On a
classifier with many near-tied classes the guessed class is the arg-max of a noisy count, so its
selection count is biased upward: a certifier that feeds those selection draws into the estimate
(same stream for both steps, or the n0 selection counts added to the estimate) over-claims p̲A far
more often than α.

The binary classifiers of the other suites (pA ≥ 0.55) pick the right class almost always, so such a
mutant passes them. Here ten classes tie exactly (p = 0.1 each), the guess is a coin toss among them,
and the over-claim rate P(p̲A > p_guess) is checked against α's binomial bound. Checked by hand:
with `seeds_estimate = seeds_select` in certify_batch, or the selection counts added to the estimate
counts, every test below fails (batched: over-claim rates 0.27 and 0.60 against an allowed 0.12;
the Cohen-compatible tie: 0.18 against 0.13).
"""

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from smoothcert import Smooth
from smoothcert.engine.certify import certify_batch
from smoothcert.engine.noise import stream_seed
from smoothcert.engine.sampling import Sampling

K = 10  # tied classes
TRIALS = 2000  # independent inputs, one seed each
ALPHA = 0.1  # large, so that a sound certifier's failures are frequent enough to measure
DELTA = 1e-3  # a sound certifier fails a check with probability ≤ DELTA


class TiedBuckets(nn.Module):
    """f(z) = the bucket of z₀ among k Gaussian quantiles: with z = 0 + σε, every class has p = 1/k exactly."""

    def __init__(self, sigma: float, k: int = K):
        super().__init__()
        self.k = k
        edges = norm.ppf(np.arange(1, k) / k) * sigma
        self.register_buffer("edges", torch.tensor(edges, dtype=torch.float32))

    def forward(self, z):
        cls = torch.bucketize(z.reshape(len(z), -1)[:, 0].contiguous(), self.edges)
        return nn.functional.one_hot(cls, self.k).float()


def _allowed(trials: int) -> int:
    return int(binom.ppf(1 - DELTA, trials, ALPHA))


@pytest.mark.parametrize("n0,n", [(100, 100), (100, 400)])
def test_batched_certify_does_not_reuse_selection_draws(n0, n):
    sigma = 0.5
    model = TiedBuckets(sigma)
    x = torch.zeros(TRIALS, 1, 2, 2)
    sel = [stream_seed(7, i, "select") for i in range(TRIALS)]
    est = [stream_seed(7, i, "estimate") for i in range(TRIALS)]
    out = certify_batch(model, x, sigma, K, n0, n, ALPHA, "l2", sel, est, Sampling(batch_size=50_000, chunk=100))
    # every class has p = 1/K, so p̲A > 1/K is an over-claim whichever class was guessed
    over = int((out["pA_lower"] > 1.0 / K).sum())
    assert over <= _allowed(TRIALS), f"p̲A over-claimed in {over}/{TRIALS} trials (allowed {_allowed(TRIALS)})"
    # power: the check is not vacuous -- a sound bound does over-claim at a rate near (below) α
    assert over >= int(binom.ppf(DELTA, TRIALS, ALPHA / 4)), over


def test_smooth_certify_does_not_reuse_selection_draws():
    """The Cohen-compatible API: two classes tie at p = ½, so any certificate (a class, not ABSTAIN) is false.

    A sound CERTIFY answers at rate ≤ α; one that estimates on its selection draws answers about twice as
    often (either class's count may be the high one).
    """
    sigma, trials = 0.5, 1000
    model = TiedBuckets(sigma, k=2)
    smooth = Smooth(model, 2, sigma, seed=3)
    answered = sum(
        smooth.certify(torch.zeros(1, 2, 2), 100, 100, ALPHA, 200)[0] != Smooth.ABSTAIN for _ in range(trials)
    )
    assert answered <= _allowed(trials), f"certified a tie in {answered}/{trials} trials (allowed {_allowed(trials)})"
