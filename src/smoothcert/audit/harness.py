"""The audit's harness: the verdict of a check (failures against the binomial bound), seeded trials, CERTIFY on
a classifier whose answer is known (a linear one, inputs at a chosen margin), the linear checks' failure rule, and
the methods under audit reached through the registry (:func:`search`, :func:`wrapped`), as the pipeline reaches them."""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import binom, binomtest
from scipy.stats import norm as normal
from statsmodels.stats.proportion import proportion_confint
from torch import nn

from smoothcert import methods
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import certify_batch
from smoothcert.engine.noise import make_generator, stream_seed
from smoothcert.engine.sampling import Sampling

DELTA = 1e-3  # false-alarm probability of one check


class Linear2(nn.Module):
    """Binary linear classifier with logits (0, wᵀx + b): class 1 iff wᵀx + b > 0."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().float().clone(), requires_grad=False)
        self.b = float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], dim=1)


# ------------------------------------------------------------------------------------------ bookkeeping


def verdict(check: str, trials: int, failures: int, alpha: float, **extra) -> dict:
    """Failures vs the binomial bound: pass iff failures <= F⁻¹(1 - δ; trials, alpha)."""
    allowed = int(binom.ppf(1.0 - DELTA, trials, alpha))
    low, high = proportion_confint(failures, trials, alpha=2 * DELTA, method="beta")
    return {
        "check": check,
        "trials": int(trials),
        "failures": int(failures),
        "rate": failures / trials,
        "rate_ci": [float(np.nan_to_num(low)), float(np.nan_to_num(high, nan=1.0))],
        "alpha": alpha,
        "allowed": allowed,
        "p_value": float(binomtest(int(failures), int(trials), alpha, alternative="greater").pvalue),
        "delta": DELTA,
        "pass": bool(failures <= allowed),
        **extra,
    }


def certify_verdict(check: str, trials: int, failures, alpha: float, n: int, n0: int, certified, **extra) -> dict:
    """:func:`verdict` of a CERTIFY check: ``failures`` and ``certified`` (counts or per-trial flags) and the
    draws n0, n it made."""
    return verdict(check, trials, int(np.sum(failures)), alpha, n=n, n0=n0, certified=int(np.sum(certified)), **extra)


def _seeds(seed: int, trials: int, stream: str) -> list[int]:
    return [stream_seed(seed, i, stream) for i in range(trials)]


def _certify(model, x, scale, n0, n, alpha, norm_name, seed, kind, num_classes=2):
    sampling = Sampling(kind=kind, batch_size=100_000, chunk=n)
    return certify_batch(
        model,
        x,
        scale,
        num_classes,
        n0,
        n,
        alpha,
        norm_name,
        _seeds(seed, len(x), "select"),
        _seeds(seed, len(x), "estimate"),
        sampling,
    )


def _inputs_with_margin(w: np.ndarray, b: float, margin: np.ndarray, rng: np.random.Generator, shape) -> torch.Tensor:
    """Inputs x with wᵀx + b = margin exactly (float64), random along the hyperplane."""
    d = w.size
    u = w / np.linalg.norm(w)
    x0 = rng.normal(0.5, 0.3, (len(margin), d))
    x0 -= np.outer(x0 @ u, u)
    x = x0 + np.outer((margin - b) / np.linalg.norm(w), u)
    return torch.from_numpy(x.reshape(len(margin), *shape)).float()


def gaussian_inputs(rng: np.random.Generator, w: np.ndarray, b: float, trials: int, scale, shape, norm_of=None):
    """Inputs on a random side of {wᵀx + b = 0} at margin ±scale·‖norm_of‖·Φ⁻¹(pA), pA a random target in
    [0.55, 0.99] per trial: under N(0, scale²) noise on a classifier whose weights are ``norm_of`` (default ``w``)
    the exact smoothed pA is the target. Draws the side, then pA, then the inputs from ``rng``."""
    sign = rng.choice([-1.0, 1.0], trials)
    norm_w = np.linalg.norm(w if norm_of is None else norm_of)
    return _inputs_with_margin(w, b, sign * scale * norm_w * normal.ppf(_target_pa(rng, trials)), rng, shape)


def _margins(model: Linear2, x: torch.Tensor) -> np.ndarray:
    """wᵀx + b of the float32 inputs actually certified, in float64."""
    return x.flatten(1).double().numpy() @ model.w.double().numpy() + model.b


def _target_pa(rng, trials, lo=0.55, hi=0.99) -> np.ndarray:
    return rng.uniform(lo, hi, trials)


def _linear_failures(out: dict, margin: np.ndarray, exact_gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(certified, failed) per trial: wrong class, or certified gap beyond the exact one."""
    pred = out["predict"]
    certified = pred != ABSTAIN
    truth = (margin > 0).astype(np.int64)
    failed = certified & ((pred != truth) | (out["gap"] > exact_gap * (1 + 1e-9)))
    return certified, failed


def uniform_sum_cdf(s: float, a: np.ndarray) -> float:
    """P(Σ aᵢ uᵢ <= s) for independent uᵢ ~ U[-1, 1], aᵢ > 0 (exact, inclusion-exclusion; small d)."""
    a = np.asarray(a, dtype=float)
    d = len(a)
    c = 2 * a
    t = s + a.sum()
    total = 0.0
    for mask in range(1 << d):
        pick = [(mask >> i) & 1 for i in range(d)]
        shift = t - float(np.dot(pick, c))
        if shift > 0:
            total += (-1) ** sum(pick) * shift**d
    return float(np.clip(total / (np.prod(c) * np.prod(np.arange(1, d + 1))), 0.0, 1.0))


def smoothed_probability_uniform(margin: float, w: np.ndarray, theta: np.ndarray) -> float:
    """P(wᵀ(x + θ ⊙ u) + b > 0) = P(Σ |wᵢθᵢ| uᵢ > -margin), u ~ U[-1, 1]^d: the exact smoothed pA of class 1."""
    return 1.0 - uniform_sum_cdf(-margin, np.abs(w * theta))


def margin_for(pa: float, w: np.ndarray, theta: np.ndarray) -> float:
    """The margin m ≥ 0 at which the exact uniform-noise pA (:func:`smoothed_probability_uniform`) equals ``pa``."""
    return brentq(lambda m: smoothed_probability_uniform(m, w, theta) - pa, 0.0, float(np.abs(w * theta).sum()))


def _float64(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module).double()


def uniform_verdict(check, trials, alpha, n, n0, out, margin, exact_gap, p1, **extra) -> dict:
    """:func:`certify_verdict` of an ℓ1 check whose exact P(class 1) ``p1`` is known: a trial fails when its class
    is wrong or its region crosses the hyperplane (``region_failures``), or when p̲A exceeds the exact pA of the
    true class (``bound_failures``)."""
    p_true = np.where(margin > 0, p1, 1 - p1)
    certified, failed = _linear_failures(out, margin, exact_gap)
    bound_fail = certified & (out["pA_lower"] > p_true)
    fails = dict(region_failures=int(failed.sum()), bound_failures=int(bound_fail.sum()))
    return certify_verdict(check, trials, failed | bound_fail, alpha, n, n0, certified, **fails, **extra)


# ------------------------------------------------------------------------------------------ methods under audit


def search(name: str, model: nn.Module, x: torch.Tensor, init: torch.Tensor, norm: str, seed: int, **settings):
    """θ (B, d) from the σ / θ search of the registered method ``name`` (its entry's ``optimize``), started at
    ``init`` (B, d), each input on its own noise stream (``stream_seed(seed, i, "optimize")``), in float32,
    with the papers' fresh draws every step, without early stop. ``settings``: the keys of the method's
    params.yaml section the check sets; the section is validated against the method's own schema, so the audit
    runs the search the pipeline runs."""
    import jsonschema

    method = methods.get(name)
    section = {
        "batch_size": len(x),
        "precision": "float32",
        "draws": "iid",
        "early_stop": False,
        "patience": 1,
        "tolerance": 0.0,
        "smoothing": 0.0,
        "sigma_max": None,
        **settings,
    }
    jsonschema.validate(section, method.schema)
    gens = [make_generator(s, "cpu") for s in _seeds(seed, len(x), "optimize")]
    theta, _ = methods.function(method.optimize)(model, x, None, init, norm, section, gens, None)
    return theta


def wrapped(name: str, base: nn.Module, cfg: dict, shape: tuple[int, ...], norm: str):
    """The :class:`~smoothcert.engine.certify.Certified` classifier the registered wrapper method ``name`` builds
    around ``base`` for inputs of ``shape`` (its entry's ``wrap``), certified in ``norm``."""
    method = methods.get(name)
    return methods.function(method.wrap)(base, cfg, method.name, shape, norm=norm)
