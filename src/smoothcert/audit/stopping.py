"""Sequential CERTIFY (decide and estimate, every bound) and PREDICT at known pA."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta as beta_dist
from scipy.stats import norm as normal

from smoothcert.audit.harness import (
    Linear2,
    _inputs_with_margin,
    _margins,
    _seeds,
    verdict,
)
from smoothcert.engine.certificates import ABSTAIN
from smoothcert.engine.certify import SequentialPlan, certify_sequential_batch, predict_batch
from smoothcert.engine.sampling import Sampling

# ------------------------------------------------------------------------------------------ sequential


class NoUnionCP:
    """Broken on purpose: Clopper–Pearson at full α at every checkpoint (no union over stopping times)."""

    def lower(self, counts, ns, alpha):
        c, n = np.asarray(counts, float), np.asarray(ns, float)
        return np.where(c > 0, beta_dist.ppf(alpha, c, n - c + 1), 0.0)

    def upper(self, counts, ns, alpha):
        c, n = np.asarray(counts, float), np.asarray(ns, float)
        return np.where(c < n, beta_dist.isf(alpha, c + 1, n - c), 1.0)


SEQUENTIAL_CHECKPOINTS = tuple(100 * 2**k for k in range(7))  # 100 … 6,400 estimation draws


def sequential(
    trials=1000,
    n=None,
    n0=50,
    alpha=0.1,
    sigma=0.5,
    seed=11,
    norm_name="l2",
    target="decide",
    bound="union_cp",
    margin=0.3,
    anisotropic=False,
) -> dict:
    """Sequential CERTIFY (``certify.mode: sequential``) on x with wᵀx = ``margin``, w = e₁ in 16 dimensions:
    the exact radius is ``margin`` in ℓ2 (Gaussian noise, pA = Φ(m/σ)) and in ℓ1 (uniform noise,
    pA = ½ + m/2σ). decide asks "certified at the exact radius?" (any yes is an over-claim); estimate reports
    the radius of the lower bound at its stopping time. Every input is at the same, hardest margin; distinct
    seeds. ``bound``: union_cp, beta_mixture, or broken (no union over checkpoints: must fail).
    ``anisotropic`` (ℓ2; the sequential certificate of DDRS / ANCER's per-input σ / θ): a generic w and a random
    per-input θ (up to ~5× between dimensions, geometric mean ``sigma``); each x sits where the exact gap
    |wᵀx| / ‖θ ⊙ w‖₂ equals ``margin`` / min θ, and decide asks for the ℓ2 radius ``margin`` = min θ · gap."""
    from smoothcert.engine import sequential as seq

    cks = SEQUENTIAL_CHECKPOINTS
    cs = {"union_cp": seq.UnionCP(cks), "beta_mixture": seq.BetaMixture(), "broken": NoUnionCP()}[bound]
    w = torch.zeros(16, dtype=torch.float64)
    w[0] = 1.0
    x = torch.zeros(trials, 1, 4, 4)
    x[:, 0, 0, 0] = margin
    scale, radius_scale = sigma, np.full(trials, sigma)
    if anisotropic:
        if norm_name != "l2":
            raise ValueError("anisotropic: ℓ2 only (the exact ℓ1 region needs the closed-form pA of ancer_l1)")
        rng = np.random.default_rng(seed)
        w = torch.from_numpy(rng.normal(size=16))
        theta = sigma * np.exp(rng.uniform(-0.8, 0.8, (trials, 16)))
        scale = torch.from_numpy(theta).float().reshape(trials, 1, 4, 4)
        theta = scale.reshape(trials, 16).double().numpy()  # the θ the noise is scaled by
        radius_scale = theta.min(1)
        exact_gap = margin / radius_scale
        m = exact_gap * np.linalg.norm(theta * w.numpy(), axis=1)
        x = torch.from_numpy(w.numpy() / (w.numpy() @ w.numpy()) * m[:, None]).float().reshape(trials, 1, 4, 4)
    kind = "gaussian" if norm_name == "l2" else "uniform"
    plan = SequentialPlan(cks, cs, (margin,) if target == "decide" else None, 0.05)
    model = Linear2(w, 0.0)
    out = certify_sequential_batch(
        model,
        x,
        scale,
        2,
        n0,
        alpha,
        norm_name,
        _seeds(seed, trials, "select"),
        _seeds(seed, trials, "estimate"),
        Sampling(kind=kind, batch_size=50_000, chunk=cks[0]),
        plan,
        radius_scale,
    )
    if anisotropic:  # the region {δ : ‖δ ⊘ θ‖₂ ≤ gap} may not reach the hyperplane; x is on its positive side
        true_gap = np.abs(_margins(model, x)) / np.linalg.norm(theta * model.w.double().numpy(), axis=1)
        failed = (out["predict"] == 0) | ((out["predict"] == 1) & (out["gap"] > true_gap * (1 + 1e-9)))
    else:
        radius = np.where(out["predict"] == 1, sigma * out["gap"], 0.0)
        failed = (out["predict"] == 0) | (radius > margin * (1 + 1e-9))
    name = f"sequential_{target}_{norm_name}" + ("_anisotropic" if anisotropic else "")
    name += "" if bound in ("union_cp", "broken") else f"_{bound}"
    return verdict(
        name if bound != "broken" else f"broken_{name}",
        trials,
        int(failed.sum()),
        alpha,
        n0=n0,
        checkpoints=list(cks),
        certified=int((out["predict"] == 1).sum()),
        mean_draws=float(out["n"].mean()),
        noise=kind,
        sigma=sigma,
        margin=margin,
    )


# ------------------------------------------------------------------------------------------ PREDICT


def predict(trials=1000, n=500, alpha=0.1, sigma=0.5, pa=0.51, seed=6) -> dict:
    """PREDICT at a known pA: a class other than the smoothed one is returned at rate <= alpha."""
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=16), 0.0
    model = Linear2(torch.from_numpy(w), b)
    sign = rng.choice([-1.0, 1.0], trials)
    x = _inputs_with_margin(w, b, sign * sigma * np.linalg.norm(w) * normal.ppf(pa), rng, (1, 4, 4))
    margin = _margins(model, x)
    pred = predict_batch(
        model, x, sigma, 2, n, alpha, _seeds(seed, trials, "predict"), Sampling(batch_size=100_000, chunk=n)
    )
    wrong = (pred != ABSTAIN) & (pred != (margin > 0).astype(np.int64))
    return verdict(
        f"predict_pA{pa:g}", trials, int(wrong.sum()), alpha, n=n, pA=pa, abstained=int((pred == ABSTAIN).sum())
    )
