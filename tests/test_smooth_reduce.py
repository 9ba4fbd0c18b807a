"""Smooth-Reduce: patch geometry, reductions, the exact resize norm, and soundness of both variants."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from smoothcert import core, smooth_reduce as sr
from smoothcert.errors import SmoothcertError
from smoothcert.noise import stream_seed


class PatchLinear(nn.Module):
    """Binary linear classifier on patches: logits (0, w·patch + b)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x):
        s = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(s), s], 1)


def cfg_for(**sr_settings):
    return {"seed": 0, "smooth_reduce": {**sr.DEFAULTS, **sr_settings}, "video": {"window": 2}}


SAMPLING = core.Sampling(batch_size=4000, chunk=1000)


def certify(target, x, sigma, n=2000, alpha=0.001):
    seeds = list(range(len(x)))
    out = core.certify_batch(target.classifier, target.to_space(x), sigma, 2, 100, n, alpha, "l2",
                             [stream_seed(1, i, "select") for i in seeds], [stream_seed(1, i, "estimate") for i in seeds],
                             SAMPLING)
    radius = np.where(out["predict"] >= 0, sigma * out["gap"] * target.radius_factor, 0.0)
    return out["predict"], radius, out["pA_lower"]


# ---------------------------------------------------------------- geometry

def test_grid_positions_and_coverage_by_hand():
    pos = sr.patch_positions(4, 2, 1)
    assert pos.tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]]
    assert sr.coverage(4, pos, 2).tolist() == [[1, 2, 2, 1], [2, 4, 4, 2], [2, 4, 4, 2], [1, 2, 2, 1]]
    assert sr.coverage(4, sr.patch_positions(4, 2, 2), 2).tolist() == [[1] * 4] * 4
    # stride 3 on 7 with patch 3: starts 0, 3 and the last start 4, so every pixel is covered
    pos = sr.patch_positions(7, 3, 3)
    rows = torch.tensor([1, 1, 1, 1, 2, 2, 1])
    assert sorted({p[0] for p in pos.tolist()}) == [0, 3, 4]
    assert torch.equal(sr.coverage(7, pos, 3), rows[:, None] * rows[None, :])
    # default digits setting: 10x10 resize, 8x8 patches, stride 1 -> 9 patches, centre covered by all
    cov = sr.coverage(10, sr.patch_positions(10, 8, 1), 8)
    assert cov.max() == 9 and cov.min() == 1 and cov.sum() == 9 * 64


def test_random_positions_are_distinct_seeded_and_in_range():
    a = sr.patch_positions(10, 8, positions="random", num_random=5, seed=3)
    b = sr.patch_positions(10, 8, positions="random", num_random=5, seed=3)
    assert torch.equal(a, b) and len({tuple(p) for p in a.tolist()}) == 5
    assert a.min() >= 0 and a.max() <= 2
    assert len(sr.patch_positions(10, 8, positions="random", num_random=9, seed=0)) == 9
    with pytest.raises(SmoothcertError, match="num_random"):
        sr.patch_positions(10, 8, positions="random", num_random=10)


def test_extract_patches_is_batched_slicing():
    x = torch.randn(3, 2, 6, 5)
    pos = torch.tensor([[0, 0], [1, 2], [2, 1]])
    out = sr.extract_patches(x, pos, 3)
    assert out.shape == (9, 2, 3, 3)
    for b in range(3):
        for k, (i, j) in enumerate(pos.tolist()):
            assert torch.equal(out[b * 3 + k], x[b, :, i:i + 3, j:j + 3])


def test_resize_matrix_is_separable_and_norm_is_exact():
    h, w, size = 5, 7, 6
    x = torch.randn(4, 1, h, w, dtype=torch.float64)
    mh, mw = sr.resize_matrix(h, size), sr.resize_matrix(w, size)
    assert torch.allclose(sr.resize_to(x, size)[:, 0], mh @ x[:, 0] @ mw.T)
    eye = torch.eye(h * w, dtype=torch.float64).view(-1, 1, h, w)
    full = sr.resize_to(eye, size).reshape(h * w, -1).T
    assert torch.allclose(full, torch.kron(mh, mw))
    assert sr.resize_norm(h, w, size) == pytest.approx(float(torch.linalg.matrix_norm(full, ord=2)), rel=1e-12)
    assert sr.resize_norm(8, 8, 8) == 1.0 and sr.resize_norm(8, 8, 10) > 1.0


# ---------------------------------------------------------------- reductions

def test_max_and_mean_reductions_by_hand():
    logits = torch.tensor([[[1.0, 5.0], [4.0, 0.0], [3.0, 1.0]]])
    assert sr.reduce_logits(logits, "max").tolist() == [[4.0, 5.0]]
    assert torch.allclose(sr.reduce_logits(logits, "mean"), torch.tensor([[8 / 3, 2.0]]))

    class Corner(nn.Module):  # logits of a 2x2 patch: (its top-left pixel, its bottom-right pixel)
        def forward(self, p):
            return torch.stack([p[:, 0, 0, 0], p[:, 0, 1, 1]], 1)

    x = torch.tensor([[[[1.0, 0.0, 4.0], [2.0, 5.0, 0.0], [3.0, 1.0, 3.0]]]])
    pos = sr.patch_positions(3, 2, 1)  # patches at (0,0) (0,1) (1,0) (1,1): logits (1,5) (0,0) (2,1) (5,3)
    max_model = sr.PatchReduce(Corner(), 3, 2, pos, "max")
    mean_model = sr.PatchReduce(Corner(), 3, 2, pos, "mean")
    assert max_model(x).tolist() == [[5.0, 5.0]]
    assert mean_model(x).tolist() == [[2.0, 2.25]]
    assert mean_model(x).argmax(1).item() == 1


# ---------------------------------------------------------------- soundness, correlated

def _linear_setup(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(1, 8, 8, generator=gen) / 8
    x = torch.rand(6, 1, 8, 8, generator=gen)
    return w, x


def test_correlated_mean_never_exceeds_exact_radius():
    """Mean of linear patch scores is linear in x: the smoothed classifier's exact robust radius is |w̄·x + b|/‖w̄‖."""
    w, x = _linear_setup(0)
    base = PatchLinear(w, 0.0)
    target = sr.wrap(base, cfg_for(), "smooth_reduce_mean", (1, 8, 8))
    assert target.radius_factor == 1.0 and target.evals_per_draw == 9
    xg = x.clone().requires_grad_(True)
    score = target.classifier(xg)[:, 1]
    (wbar,) = torch.autograd.grad(score.sum(), xg)
    base.b = float(-score.detach().mean())  # put the inputs on both sides of the boundary
    score = target.classifier(x)[:, 1].detach()
    exact = score.abs() / wbar.flatten(1).norm(dim=1)
    for sigma in (0.12, 0.25, 0.5):
        pred, radius, _ = certify(target, x, sigma)
        ok = pred >= 0
        assert ok.sum() >= 3
        assert np.all(pred[ok] == (score[ok] > 0).long().numpy())
        assert np.all(radius <= exact.numpy() + 1e-9), (radius, exact)
        far = ok & (exact.numpy() >= 0.5 * sigma)
        assert np.all(radius[far] >= 0.3 * np.minimum(exact.numpy()[far], 2.5 * sigma))  # not vacuous


def _pgd(f, x, budget, sigma, scale, gen, steps=25, draws=128):
    """ℓ2 PGD lowering the smoothed probability of class 1 (sigmoid surrogate on fixed noise draws)."""
    eps = torch.randn(draws, *x.shape, generator=gen) * sigma
    delta = torch.zeros_like(x, requires_grad=True)
    for _ in range(steps):
        soft = torch.sigmoid(8 * f(x + delta + eps)[:, 1] / scale).mean()
        (g,) = torch.autograd.grad(soft, delta)
        with torch.no_grad():
            delta -= 0.15 * budget * g / (g.norm() + 1e-12)
            delta *= min(1.0, budget / float(delta.norm() + 1e-12))
    return delta.detach()


def test_correlated_max_survives_attack_inside_radius():
    """PGD on the smoothed max-reduced classifier within 0.95·R never flips it (p_A from 10k draws stays
    above Cohen's bound Φ(Φ⁻¹(p̲A) − ‖δ‖/σ) > 1/2), while the same attack at 4·R does flip it."""
    sigma, m = 0.25, 10000
    w, x = _linear_setup(1)
    base = PatchLinear(w, 0.0)
    target = sr.wrap(base, cfg_for(), "smooth_reduce_max", (1, 8, 8))
    f = target.classifier
    with torch.no_grad():
        s0 = f(x[:2])[:, 1]
    scale = float(w.norm()) * sigma
    gen = torch.Generator().manual_seed(7)

    def p_a(point):
        with torch.no_grad():
            return float((f(point + torch.randn(m, 1, 8, 8, generator=gen) * sigma).argmax(1) == 1).float().mean())

    for i in range(2):
        base.b = float(-s0[i] + 0.3 * scale)  # p_A well below 1, so the radius is tight enough to matter
        pred, radius, p_lower = certify(target, x[i:i + 1], sigma)
        assert pred[0] == 1 and radius[0] > 0
        delta = _pgd(f, x[i], 0.95 * radius[0], sigma, scale, gen)
        before, after = p_a(x[i]), p_a(x[i] + delta)
        bound = norm.cdf(norm.ppf(p_lower[0]) - float(delta.norm()) / sigma)
        assert after < before - 0.02  # the attack does push towards the boundary
        assert after > 0.5 and after >= bound - 4 * np.sqrt(0.25 / m)
        assert p_a(x[i] + _pgd(f, x[i], 4 * radius[0], sigma, scale, gen)) < 0.5  # and flips beyond the radius


# ---------------------------------------------------------------- uncorrelated

def test_uncorrelated_radius_factor_by_hand():
    base = PatchLinear(torch.randn(1, 2, 2), 0.1)
    t = sr.wrap(base, {"seed": 0, "smooth_reduce": {"resize": 4, "patch": 2, "stride": 1, "variant": "uncorrelated"}},
                "smooth_reduce_max", (1, 4, 4))
    assert t.radius_factor == pytest.approx(0.5)  # identity resize, centre pixels in 4 patches: 1/√4
    assert t.evals_per_draw == 9
    x = torch.rand(5, 1, 4, 4)
    z = t.to_space(x)
    assert z.shape == (5, 9, 2, 2)
    pos = sr.patch_positions(4, 2, 1)
    assert torch.equal(t.classifier(z), sr.PatchReduce(base, 4, 2, pos, "max")(x))  # same map without noise
    t2 = sr.wrap(base, {"seed": 0, "smooth_reduce": {"resize": 4, "patch": 2, "stride": 2, "variant": "uncorrelated"}},
                 "smooth_reduce_mean", (1, 4, 4))
    assert t2.radius_factor == pytest.approx(1.0)


def test_uncorrelated_factor_bounds_the_stacking_operator():
    """‖A‖₂ ≤ 1/radius_factor for the exact matrix A of x ↦ stacked patches of resize(x)."""
    base = PatchLinear(torch.randn(1, 8, 8), 0.0)
    t = sr.wrap(base, cfg_for(variant="uncorrelated"), "smooth_reduce_mean", (1, 8, 8))
    maxcov, norm_s = 9, sr.resize_norm(8, 8, 10)
    assert t.radius_factor == pytest.approx(1 / (3 * norm_s))
    a = sr.patch_operator(1, 8, 8, 10, sr.patch_positions(10, 8, 1), 8)
    assert torch.allclose(a @ torch.ones(64, dtype=torch.float64), torch.ones(9 * 64, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(a, ord=2)) <= 1 / t.radius_factor + 1e-9
    assert maxcov == int(sr.coverage(10, sr.patch_positions(10, 8, 1), 8).max())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(t.to_space(x).flatten(1), x.flatten(1) @ a.T)


# ---------------------------------------------------------------- clips

class FrameMean(nn.Module):
    """A clip model with the frame_stem contract: linear stem, tanh head, temporal mean."""

    def __init__(self, side, k=3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(5, side * side, generator=gen)
        self.c = torch.randn(5, generator=gen)
        self.out = torch.randn(k, 5, generator=gen)

    def frame_stem(self):
        return self.a, self.c

    def frame_head(self, z):
        return torch.tanh(z) @ self.out.T

    def forward(self, clips):
        n, t = clips.shape[:2]
        z = clips.reshape(n * t, -1) @ self.a.T + self.c
        return self.frame_head(z).view(n, t, -1).mean(1)


class Opaque(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, clips):
        return self.inner(clips)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_clip_fast_path_equals_sub_clip_classification(reduce):
    model = FrameMean(6)
    x = torch.rand(5, 4, 1, 6, 6)
    pos = sr.patch_positions(8, 6, 1)
    fast = sr.ClipPatchReduce(model, 8, 6, pos, 2, reduce, max_frames=100)(x)
    slow = sr.ClipPatchReduce(Opaque(model), 8, 6, pos, 2, reduce)(x)
    assert torch.allclose(fast, slow, atol=1e-5)
    sub = sr.clip_patches(x, 8, pos, 6, 2)  # (N, windows, P, window, C, 6, 6)
    assert sub.shape == (5, 3, 9, 2, 1, 6, 6)
    per = model(sub.reshape(-1, 2, 1, 6, 6)).view(5, 27, -1)
    assert torch.allclose(slow, sr.reduce_logits(per, reduce), atol=1e-6)


def test_clip_wrap_correlated_and_uncorrelated():
    model = FrameMean(6)
    cfg = {"seed": 0, "smooth_reduce": {**sr.DEFAULTS, "resize": 8, "patch": 8}, "video": {"window": 2}}
    t = sr.wrap(model, cfg, "smooth_reduce_mean", (3, 1, 6, 6))  # margin 0: one patch, resize identity
    assert t.radius_factor == 1.0 and t.evals_per_draw == 2
    cfg["smooth_reduce"]["variant"] = "uncorrelated"
    u = sr.wrap(model, cfg, "smooth_reduce_mean", (3, 1, 6, 6))
    assert u.radius_factor == pytest.approx(1 / np.sqrt(2))  # middle frame is in both windows
    x = torch.rand(4, 3, 1, 6, 6)
    assert u.to_space(x).shape == (4, 2 * 2, 6, 6)
    assert torch.allclose(u.classifier(u.to_space(x)), t.classifier(x), atol=1e-6)
    cfg["smooth_reduce"].update(resize=10, variant="uncorrelated")  # margin 2 -> 8x8 resize, 9 patches of 6
    u = sr.wrap(model, cfg, "smooth_reduce_max", (3, 1, 6, 6))
    cov = int(sr.coverage(8, sr.patch_positions(8, 6, 1), 6).max())
    assert u.radius_factor == pytest.approx(1 / (np.sqrt(2 * cov) * sr.resize_norm(6, 6, 8)))


# ---------------------------------------------------------------- pipeline

@pytest.mark.parametrize("variant", ["correlated", "uncorrelated"])
def test_certify_shard_runs_smooth_reduce_on_the_digits_model(variant, params, tmp_path):
    """The registered wrapper plugs into certify_shard: rows, radius factor and cost columns."""
    from smoothcert.certify import certify_shard
    from smoothcert.config import ModelSpec
    from smoothcert.models import build_model

    torch.manual_seed(0)
    model = build_model("digits_cnn", 1, 10, 8, [0.3], [0.4]).eval()
    cfg = {**params, "smooth_reduce": {**params["smooth_reduce"], "variant": variant},
           "certify": {**params["certify"], "n0": 20, "n": 100, "batch_size": 200, "chunk": 100}}
    spec = ModelSpec("gaussian", "fixed", "l2", 0.25, ("smooth_reduce_max",))
    x, y, idx = torch.rand(3, 1, 8, 8), torch.tensor([1, 2, 3]), np.array([4, 5, 6])
    factor = sr.wrap(model, cfg, "smooth_reduce_max", (1, 8, 8)).radius_factor
    df = certify_shard(cfg, spec, "smooth_reduce_max", model, x, y, idx, tmp_path / "s.tsv", "cpu", progress=False)
    assert df["idx"].tolist() == [4, 5, 6] and (df["evals"] == 120 * 9).all()
    ok = df["predict"] >= 0
    assert np.allclose(df["radius"][ok], 0.25 * df["gap"][ok] * factor)
    assert factor == (1.0 if variant == "correlated" else pytest.approx(1 / (3 * sr.resize_norm(8, 8, 10))))


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("settings,shape,method,message", [
    ({"patch": 12}, (1, 8, 8), "smooth_reduce_max", "patch = 12 must be <= resize"),
    ({"variant": "both"}, (1, 8, 8), "smooth_reduce_max", "variant"),
    ({"positions": "random", "num_random": 10}, (1, 8, 8), "smooth_reduce_max", "num_random"),
    ({"stride": 0}, (1, 8, 8), "smooth_reduce_max", "stride"),
    ({}, (1, 8, 8), "smooth_reduce_median", "smooth_reduce_median"),
    ({}, (8, 8), "smooth_reduce_max", "inputs must be"),
    ({}, (3, 1, 6, 6), "smooth_reduce_max", "video.window = 4"),
])
def test_bad_settings_fail_in_one_line(settings, shape, method, message):
    cfg = {"seed": 0, "smooth_reduce": {**sr.DEFAULTS, **settings}, "video": {"window": 4}}
    with pytest.raises(SmoothcertError, match=message) as err:
        sr.wrap(PatchLinear(torch.ones(64), 0.0), cfg, method, shape)
    assert "\n" not in str(err.value)
