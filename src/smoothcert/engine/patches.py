"""Patch classifiers and the operator norms of the patch map: the geometry of Smooth-Reduce certificates.

The base model f classifies ``patch``×``patch`` images. The reduced classifier
resizes its input to ``resize``×``resize`` (bilinear, ``align_corners=False``),
cuts P patches, runs f on all patches of all rows in one batch and reduces the P
logit vectors by ``max`` or ``mean``; smoothing then votes with the argmax.

Correlated variant (default): :mod:`smoothcert.engine.sampling` adds one noise draw ε to the
whole input (Gaussian for ℓ2, uniform U[-σ, σ] for ℓ1), and resizing and patching
happen inside the classifier. The composite x + ε ↦ argmax reduce(f(patches(resize(x + ε))))
is one deterministic function of the noisy input, so the ℓ2 (Cohen et al., Thm. 1) and
ℓ1 (Yang et al. 2020, uniform noise) certificates apply to it as they are: the radius
holds in the original input space (radius factor 1, both norms).

Uncorrelated variant: every patch gets its own noise. The certified space is
z = A x, the stack of the clean patches of resize(x), with A = E S (S the linear
resize, E the patch selection), and smoothing the patch-wise classifier there
certifies every z' with ‖z' − z‖_p < R. Since ‖A δ‖_p ≤ ‖A‖_{p→p} ‖δ‖_p, every input
perturbation with ‖δ‖_p < R / ‖A‖_{p→p} keeps A(x + δ) inside the certified ball:
radius_factor = 1 / ‖A‖_{p→p} for the certificate's own norm (:func:`radius_factor`).

* ℓ2: EᵀE is diagonal with the coverage count of each pixel, so ‖E‖₂ = √(max coverage)
  and ‖A‖₂ ≤ √maxcov · ‖S‖₂, with ‖S‖₂ the exact spectral norm of the resize (bilinear
  resizing is separable, S = S_h ⊗ S_w, so ‖S‖₂ = ‖S_h‖₂‖S_w‖₂).
* ℓ1: ‖A‖_{1→1} is the largest absolute column sum of A, computed exactly: every row of A
  is a row of S, so the column sum of input pixel (i, j) is (|S_h|ᵀ · cov · |S_w|)[i, j]
  (:func:`l1_column_sums`). It is *not* the ℓ2 factor: on the default 8 → 10 geometry
  ‖A‖_{1→1} = 15.21 while √maxcov · ‖S‖₂ = 3.77.

Clips (N, T, C, H, W), for :mod:`smoothcert.pipeline.clips`: every frame is resized and
patched alike (the patch is the frame size H, the resize H + resize − patch, so the
patch grid is the configured one), the clip is cut into temporal windows of
``video.window`` frames (stride 1), and the model classifies every
(window, patch) sub-clip. Both variants carry over. For the uncorrelated one, frame t
lies in tcov[t] windows (:func:`temporal_coverage_counts`), AᵀA = diag(tcov) ⊗ (ES)ᵀ(ES):
ℓ2 bound √(max tcov · maxcov) · ‖S‖₂, ℓ1 exactly max_(t,i,j) tcov[t] · colsum[i, j].

Which method × norm × variant combinations are proven is the method's to say
(:mod:`smoothcert.methods.smooth_reduce`); this module only computes, for either norm and variant.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from smoothcert.errors import require

NORMS = ("l2", "l1")
REDUCTIONS = ("max", "mean")
VARIANTS = ("correlated", "uncorrelated")
POSITIONS = ("grid", "random")


# ---------------------------------------------------------------- patches


def patch_positions(
    size: int, patch: int, stride: int = 1, positions: str = "grid", num_random: int = 9, seed: int = 0
) -> torch.Tensor:
    """Top-left corners (P, 2) of ``patch``×``patch`` patches in a ``size``×``size`` image.

    ``grid``: rows/columns 0, stride, 2·stride, ... plus the last start size − patch,
    so the patches cover every pixel. ``random``: ``num_random`` distinct corners
    drawn uniformly among all (size − patch + 1)² (a fixed function of ``seed``).
    """
    require(1 <= patch <= size, f"smooth_reduce: patch = {patch} must be between 1 and the resized size {size}")
    require(stride >= 1, f"smooth_reduce: stride = {stride} must be >= 1")
    require(positions in POSITIONS, f"smooth_reduce: positions = {positions!r}; allowed: {list(POSITIONS)}")
    last = size - patch
    if positions == "grid":
        starts = list(range(0, last + 1, stride))
        if starts[-1] != last:
            starts.append(last)
        s = torch.tensor(starts, dtype=torch.long)
        return torch.cartesian_prod(s, s).reshape(-1, 2)
    side = last + 1
    require(
        1 <= num_random <= side * side,
        f"smooth_reduce: num_random = {num_random} must be between 1 and the {side * side} possible patch positions",
    )
    pick = torch.randperm(side * side, generator=torch.Generator().manual_seed(int(seed)))[:num_random].sort().values
    return torch.stack([pick // side, pick % side], 1)


def coverage(size: int, positions: torch.Tensor, patch: int) -> torch.Tensor:
    """(size, size) int64: how many of the patches at ``positions`` cover each pixel."""
    cov = torch.zeros(size, size, dtype=torch.int64)
    for top, left in positions.tolist():
        cov[top : top + patch, left : left + patch] += 1
    return cov


def extract_patches(x: torch.Tensor, positions: torch.Tensor, patch: int) -> torch.Tensor:
    """Patches of (B, C, H, W) at ``positions``: (B·P, C, patch, patch), row b·P + k = patch k of input b.

    One strided view (``unfold``) and one gather, no loop over inputs or draws; differentiable.
    """
    b, c = x.shape[:2]
    pos = positions.to(x.device)
    win = x.unfold(2, patch, 1).unfold(3, patch, 1)  # (B, C, H-p+1, W-p+1, p, p), a view
    out = win[:, :, pos[:, 0], pos[:, 1]]  # (B, C, P, p, p)
    return out.transpose(1, 2).reshape(b * len(pos), c, patch, patch)


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size), ``align_corners=False`` (identity when already that size)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The (n_out, n_in) float64 matrix of 1-D bilinear resizing as done by :func:`resize_to`."""
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)
    out = F.interpolate(eye, size=(n_out, 1), mode="bilinear", align_corners=False)
    return out.view(n_in, n_out).T.contiguous()


@functools.lru_cache(maxsize=64)
def resize_norm(height: int, width: int, size: int) -> float:
    """Exact spectral norm ‖S‖₂ of the resize (height, width) → (size, size): ‖S_h‖₂·‖S_w‖₂ (S = S_h ⊗ S_w)."""
    if (height, width) == (size, size):
        return 1.0
    norm_h = torch.linalg.matrix_norm(resize_matrix(height, size), ord=2)
    norm_w = torch.linalg.matrix_norm(resize_matrix(width, size), ord=2)
    return float(norm_h * norm_w)


def reduce_logits(logits: torch.Tensor, how: str) -> torch.Tensor:
    """(B, P, K) patch logits → (B, K) by elementwise ``max`` or ``mean`` over the P patches."""
    if how == "max":
        return logits.amax(1)
    if how == "mean":
        return logits.mean(1)
    raise ValueError(f"unknown reduction {how!r}; allowed: {REDUCTIONS}")


def l1_column_sums(height: int, width: int, size: int, positions: torch.Tensor, patch: int) -> torch.Tensor:
    """(height, width) float64: Σ_k |A[k, (i, j)]| for A = E·S, x ↦ extract_patches(resize_to(x)), per channel.

    Each row of A is one row of the resize S (E only selects and repeats rows), so the absolute column
    sum of input pixel (i, j) is Σ_(a,b) cov[a, b] · |S_h[a, i]| · |S_w[b, j]| = (|S_h|ᵀ · cov · |S_w|)[i, j]:
    exact, and O(size² · (height + width)) instead of a dense (P·patch², height·width) matrix.
    """
    cov = coverage(size, positions, patch).double()
    if (height, width) == (size, size):  # resize_to is the identity then
        return cov
    return resize_matrix(height, size).abs().T @ cov @ resize_matrix(width, size).abs()


def temporal_coverage_counts(frames: int, window: int) -> torch.Tensor:
    """(frames,) int64: how many of the stride-1 windows of ``window`` frames hold each frame."""
    counts = torch.zeros(frames, dtype=torch.int64)
    for start in range(frames - window + 1):
        counts[start : start + window] += 1
    return counts


def stacking_norm(
    norm: str,
    height: int,
    width: int,
    size: int,
    positions: torch.Tensor,
    patch: int,
    frames: int | None = None,
    window: int | None = None,
) -> float:
    """Operator norm ‖A‖_{p→p} (ℓ1: exact; ℓ2: an upper bound) of the uncorrelated variant's linear map A.

    Images: A = E·S, x ↦ the stacked patches of resize(x). Clips (``frames``, ``window`` given): every
    frame goes through E·S and frame t is repeated in tcov[t] = :func:`temporal_coverage_counts` windows,
    so AᵀA = diag(tcov) ⊗ (E S)ᵀ(E S) and the column of (t, c, i, j) has abs sum tcov[t] · colsum[i, j].

    * ℓ1: max over input coordinates of the column abs sum (the ℓ1→ℓ1 operator norm, exact):
      max_(t,i,j) tcov[t] · (|S_h|ᵀ cov |S_w|)[i, j].
    * ℓ2: ‖A‖₂ ≤ √(max tcov · max cov) · ‖S‖₂ (EᵀE = diag(cov) and ‖S‖₂ = ‖S_h‖₂‖S_w‖₂ exactly).
    """
    require(norm in NORMS, f"smooth_reduce: unknown norm {norm!r}; allowed: {list(NORMS)}")
    tcov = temporal_coverage_counts(frames, window) if frames is not None else torch.ones(1, dtype=torch.int64)
    if norm == "l1":
        cols = l1_column_sums(height, width, size, positions, patch)
        return float((tcov.double()[:, None, None] * cols[None]).max())
    maxcov = int(coverage(size, positions, patch).max()) * int(tcov.max())
    return math.sqrt(maxcov) * resize_norm(height, width, size)


def radius_factor(norm: str, variant: str, *geometry) -> float:
    """The factor from a radius in the certified space to a sound ``norm`` radius in input space; ``geometry``:
    (height, width, size, positions, patch[, frames, window]), as :func:`stacking_norm` takes them.

    Correlated: 1 (the smoothed function is a deterministic function of x + ε). Uncorrelated:
    1 / ‖A‖_{p→p} (:func:`stacking_norm`), as ‖A δ‖_p ≤ ‖A‖_{p→p} ‖δ‖_p, in the certificate's own norm.
    """
    require(variant in VARIANTS, f"smooth_reduce.variant = {variant!r}; allowed: {list(VARIANTS)}")
    if variant == "correlated":
        return 1.0
    return 1.0 / stacking_norm(norm, *geometry)


# ---------------------------------------------------------------- images


class PatchReduce(nn.Module):
    """Correlated Smooth-Reduce classifier: resize, cut patches, classify them in one batch, reduce logits."""

    def __init__(self, base: nn.Module, resize: int, patch: int, positions: torch.Tensor, reduce: str = "max"):
        super().__init__()
        require(reduce in REDUCTIONS, f"smooth_reduce: reduce = {reduce!r}; allowed: {list(REDUCTIONS)}")
        self.base, self.resize, self.patch, self.reduce = base, int(resize), int(patch), reduce
        self.register_buffer("positions", positions.long().clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = extract_patches(resize_to(x, self.resize), self.positions, self.patch)
        return reduce_logits(self.base(z).view(x.shape[0], len(self.positions), -1), self.reduce)


def stack_patches(x: torch.Tensor, resize: int, positions: torch.Tensor, patch: int) -> torch.Tensor:
    """The uncorrelated variant's certified space: (B, P·C, patch, patch), the clean patches of resize(x)."""
    return extract_patches(resize_to(x, resize), positions, patch).reshape(x.shape[0], -1, patch, patch)


class StackedPatchReduce(nn.Module):
    """Uncorrelated Smooth-Reduce classifier on stacked patches (B, P·C, p, p): classify each block, reduce."""

    def __init__(self, base: nn.Module, num_patches: int, reduce: str = "max"):
        super().__init__()
        require(reduce in REDUCTIONS, f"smooth_reduce: reduce = {reduce!r}; allowed: {list(REDUCTIONS)}")
        self.base, self.num_patches, self.reduce = base, int(num_patches), reduce

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, pc, p, q = z.shape
        logits = self.base(z.reshape(b * self.num_patches, pc // self.num_patches, p, q))
        return reduce_logits(logits.view(b, self.num_patches, -1), self.reduce)


# ---------------------------------------------------------------- clips


def temporal_coverage(frames: int, window: int) -> int:
    """Largest number of stride-1 windows of length ``window`` over ``frames`` frames that share a frame."""
    return min(window, frames - window + 1)


def clip_patches(x: torch.Tensor, resize: int, positions: torch.Tensor, patch: int, window: int) -> torch.Tensor:
    """(N, T, C, H, W) → (N, Wn, P, window, C, patch, patch): every (temporal window, spatial patch) sub-clip."""
    n, t, c, h, w = x.shape
    p = len(positions)
    frames = extract_patches(resize_to(x.reshape(n * t, c, h, w), resize), positions, patch).view(
        n, t, p, c, patch, patch
    )
    return frames.unfold(1, window, 1).permute(0, 1, 2, 6, 3, 4, 5)


def patch_operator(
    channels: int, height: int, width: int, resize: int, positions: torch.Tensor, patch: int
) -> torch.Tensor:
    """The (P·C·patch², C·H·W) float64 matrix of x ↦ extract_patches(resize_to(x)), built from the identity basis."""
    d = channels * height * width
    eye = torch.eye(d, dtype=torch.float64).view(d, channels, height, width)
    return extract_patches(resize_to(eye, resize), positions.cpu(), patch).reshape(d, -1).T.contiguous()


class ClipPatchReduce(nn.Module):
    """Correlated Smooth-Reduce on clips: logits of every (window, patch) sub-clip, reduced over all of them.

    Fast path, same function: if ``base`` has ``frame_stem()`` → (A, c) and
    ``frame_head(z)`` with base(clip) = temporal mean of frame_head(A·vec(frame) + c),
    the affine stem is composed once with resizing and patch extraction (a
    (P·D, C·H·W) matrix, cached at the first call: the base must stay fixed), so
    one matmul per frame replaces resize, extraction and P stems, and window logits
    are moving averages of frame logits. Otherwise every sub-clip goes through
    ``base``. ``max_frames`` bounds the frames per call (memory), not the result.
    """

    def __init__(
        self,
        base: nn.Module,
        resize: int,
        patch: int,
        positions: torch.Tensor,
        window: int,
        reduce: str = "max",
        max_frames: int = 65536,
    ):
        super().__init__()
        require(reduce in REDUCTIONS, f"smooth_reduce: reduce = {reduce!r}; allowed: {list(REDUCTIONS)}")
        self.base, self.reduce = base, reduce
        self.resize, self.patch, self.window = int(resize), int(patch), int(window)
        self.max_frames = int(max_frames)
        self.register_buffer("positions", positions.long().clone(), persistent=False)
        self._composed: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = max(1, self.max_frames // (x.shape[1] * len(self.positions)))
        return torch.cat([self._logits(x[i : i + step]) for i in range(0, x.shape[0], step)])

    def composed_stem(self, channels: int, height: int, width: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(P·D, C·H·W) matrix and (P·D,) bias of frame ↦ stems of its P patches (cached)."""
        key = (channels, height, width, str(device), dtype)
        if key not in self._composed:
            a, c = self.base.frame_stem()
            op = patch_operator(channels, height, width, self.resize, self.positions, self.patch)
            p = len(self.positions)
            mat = torch.einsum("dj,pjk->pdk", a.detach().cpu().double(), op.view(p, -1, op.shape[1])).reshape(
                -1, op.shape[1]
            )
            bias = c.detach().cpu().double().repeat(p)
            self._composed[key] = (mat.to(device, dtype), bias.to(device, dtype))
        return self._composed[key]

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape[:3]
        p, q = len(self.positions), self.patch
        if hasattr(self.base, "frame_stem"):
            mat, bias = self.composed_stem(c, x.shape[3], x.shape[4], x.device, x.dtype)
            z = F.linear(x.reshape(n * t, -1), mat, bias)  # (n·t, P·D)
            per_frame = self.base.frame_head(z.view(n * t * p, -1)).view(n, t, p, -1)
            windows = per_frame.unfold(1, self.window, 1).mean(-1)  # (n, Wn, P, K)
        else:
            sub = clip_patches(x, self.resize, self.positions, q, self.window)
            windows = self.base(sub.reshape(-1, self.window, c, q, q)).view(n, sub.shape[1], p, -1)
        return reduce_logits(windows.reshape(n, -1, windows.shape[-1]), self.reduce)


def stack_clip_patches(x: torch.Tensor, resize: int, positions: torch.Tensor, patch: int, window: int) -> torch.Tensor:
    """The uncorrelated clip variant's certified space: (N, Wn·P·window·C, patch, patch)."""
    return clip_patches(x, resize, positions, patch, window).reshape(x.shape[0], -1, patch, patch)


class StackedClipReduce(nn.Module):
    """Uncorrelated Smooth-Reduce on clips: classify each stacked (window, patch) sub-clip, reduce."""

    def __init__(self, base: nn.Module, num_clips: int, window: int, channels: int, reduce: str = "max"):
        super().__init__()
        require(reduce in REDUCTIONS, f"smooth_reduce: reduce = {reduce!r}; allowed: {list(REDUCTIONS)}")
        self.base, self.reduce = base, reduce
        self.num_clips, self.window, self.channels = int(num_clips), int(window), int(channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, _, p, q = z.shape
        logits = self.base(z.reshape(b * self.num_clips, self.window, self.channels, p, q))
        return reduce_logits(logits.view(b, self.num_clips, -1), self.reduce)
