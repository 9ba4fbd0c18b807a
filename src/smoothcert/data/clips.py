"""Moving digits: clips of the ``digits`` images moving across a black canvas.

Each 8×8 digit moves in a straight line across a black ``video.canvas``² canvas over ``video.frames``
frames (seeded direction and start, at most one pixel per frame along each axis, always wholly inside);
the label is the digit's. The train / test split is the ``digits`` split of :func:`smoothcert.data.readers.digits`
for the same seed and ``data.test_fraction``, so no digit image appears in both.
"""

from __future__ import annotations

import numpy as np
import torch

from smoothcert.data.readers import digits
from smoothcert.errors import require

DIGIT = 8  # side of a digits image


def _trajectories(n: int, frames: int, room: int, rng: np.random.Generator) -> np.ndarray:
    """(n, frames, 2) integer top-left corners in [0, room]: straight lines, uniform direction and start."""
    angle = rng.uniform(0.0, 2.0 * np.pi, n)
    shift = np.stack([np.sin(angle), np.cos(angle)], 1) * min(room, frames - 1)
    low, high = np.maximum(0.0, -shift), room - np.maximum(0.0, shift)
    start = low + rng.uniform(size=(n, 2)) * (high - low)
    t = np.arange(frames) / max(frames - 1, 1)
    return np.clip(np.rint(start[:, None] + t[None, :, None] * shift[:, None]), 0, room).astype(np.int64)


def _render(images: np.ndarray, corners: np.ndarray, canvas: int) -> torch.Tensor:
    """Paste (n, 8, 8) digits at (n, T, 2) corners onto black canvases: (n, T, 1, canvas, canvas)."""
    n, frames = corners.shape[:2]
    clips = torch.zeros(n, frames, 1, canvas, canvas)
    ar = torch.arange(DIGIT)
    pos = torch.from_numpy(corners)
    rows = pos[..., 0, None, None] + ar[:, None]
    cols = pos[..., 1, None, None] + ar[None, :]
    ni = torch.arange(n)[:, None, None, None]
    ti = torch.arange(frames)[None, :, None, None]
    clips[ni, ti, 0, rows, cols] = torch.from_numpy(images)[:, None].expand(n, frames, DIGIT, DIGIT)
    return clips


def moving_digits(cfg: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, y_train, x_test, y_test): clips (N, T, 1, canvas, canvas) float32 in [0, 1], int64 labels.

    A function of ``seed``, ``data.test_fraction``, ``video.frames`` and ``video.canvas`` alone: the split is the
    digits split of ``seed``, the motions come from ``seed`` too (one stream per split).
    """
    v, seed = cfg["video"], int(cfg["seed"])
    require(v["canvas"] >= DIGIT, f"video.canvas = {v['canvas']} must be >= {DIGIT} (the digit size)")
    xtr, xte, ytr, yte = digits({"test_fraction": cfg["data"]["test_fraction"], "seed": seed})
    out = []
    for split, (images, labels) in enumerate(((xtr, ytr), (xte, yte))):
        rng = np.random.default_rng([seed, 1000 + split])
        corners = _trajectories(len(images), v["frames"], v["canvas"] - DIGIT, rng)
        out += [_render(np.ascontiguousarray(images[:, 0]), corners, v["canvas"]), torch.from_numpy(labels)]
    return out[0], out[1], out[2], out[3]
