"""Moving digits: Smooth-Reduce on clips, certified by the same pipeline as images.

Each 8×8 digit of sklearn's digits set moves in a straight line across a black
``canvas``×``canvas`` canvas over ``frames`` frames (seeded direction and start,
at most one pixel per frame, always fully inside); the label is the digit. The
train/test split is the stratified digits split of :mod:`smoothcert.data`, so no
digit image appears in both. The base classifier :class:`FrameNet` classifies
frames and averages their logits over time; it is trained with Gaussian noise of
the experiment's σ on whole clips (half of the noisy frames resized and cropped as
Smooth-Reduce will present them). Certification is
:func:`smoothcert.pipeline.certify.certify_shard` itself (seeds from ``noise.stream_seed``,
rows in ``engine.certificates.COLUMNS``); for ``smooth_reduce_*`` its wrapper
(:func:`smoothcert.methods.smooth_reduce.wrap`) cuts clips into temporal windows × spatial
patches. Radii are ℓ2 in clip space (all T·C·canvas² pixel values): for the
uncorrelated variant the wrapper divides the radius of the stacked sub-clips by the
ℓ2 norm bound √(max over frames of the windows holding it · max patch coverage)·‖resize‖₂
of the clip → sub-clips map (docs/soundness.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from smoothcert import data as data_mod
from smoothcert import methods
from smoothcert.artifacts import describe_changes, load_torch, log, save_torch, write_table
from smoothcert.config import VIDEO_NORM, ModelSpec
from smoothcert.engine import patches as patch_ops
from smoothcert.engine.noise import make_generator, noisy_copies, stream_seed
from smoothcert.errors import SmoothcertError, require
from smoothcert.methods.smooth_reduce import clip_geometry  # the clip crops follow the patch geometry
from smoothcert.pipeline import stages
from smoothcert.pipeline.certify import certify_shard
from smoothcert.training.models import Normalize

NORM = VIDEO_NORM  # clips are certified in ℓ2 with Gaussian noise
DIGIT = 8
ARCH = "video_frame_dft_mlp"
HIDDEN = 128
FREQS = 4
LR = 3e-3
METRIC_COLUMNS = ["epoch", "train_loss", "train_acc", "test_noisy_acc", "time"]


def clip_methods() -> list[str]:
    """The registered methods that certify clips."""
    return [m.name for m in methods.registry().values() if m.clips]


def settings(cfg: dict) -> dict:
    """``cfg['video']``, with the checks the schema cannot state (one-line SmoothcertError)."""
    v = cfg["video"]
    require(v["canvas"] >= DIGIT, f"video.canvas = {v['canvas']} must be >= {DIGIT} (the digit size)")
    require(v["window"] <= v["frames"], f"video.window = {v['window']} must be <= video.frames = {v['frames']}")
    bad = [m for m in v["methods"] if m not in clip_methods()]
    require(not bad, f"video.methods: {bad} not available for clips; allowed: {clip_methods()}")
    return v


# ---------------------------------------------------------------- data


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


def make_moving_digits(cfg: dict, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(xtr, ytr, xte, yte): clips (N, T, 1, canvas, canvas) float32 in [0, 1] and int64 digit labels.

    Deterministic in (cfg, seed); the split is data.py's digits split for ``seed``
    (the pipeline passes ``cfg['seed']``), the motions come from ``seed`` too.
    """
    from sklearn.datasets import load_digits

    v = settings(cfg)
    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    xtr, xte, ytr, yte = data_mod.stratified_split(x, bunch.target.astype(np.int64), cfg["data"]["test_fraction"], seed)
    out = []
    for split, (images, labels) in enumerate(((xtr, ytr), (xte, yte))):
        rng = np.random.default_rng([int(seed), 1000 + split])
        corners = _trajectories(len(images), v["frames"], v["canvas"] - DIGIT, rng)
        out += [_render(np.ascontiguousarray(images), corners, v["canvas"]), torch.from_numpy(labels)]
    return out[0], out[1], out[2], out[3]


# ---------------------------------------------------------------- model


def fourier_basis(canvas: int, freqs: int) -> torch.Tensor:
    """(2F, canvas²) rows cos/sin of the 2-D DFT at the F low frequencies |a|, b <= ``freqs`` (one of each ± pair)."""
    pairs = [(a, b) for a in range(-freqs, freqs + 1) for b in range(freqs + 1) if b > 0 or a >= 0]
    u = torch.arange(canvas, dtype=torch.float64)
    rows = []
    for a, b in pairs:
        phase = (2 * np.pi / canvas) * (a * u[:, None] + b * u[None, :])
        rows += [torch.cos(phase).flatten() / canvas, torch.sin(phase).flatten() / canvas]
    return torch.stack(rows).float()


class FrameNet(nn.Module):
    """Frame-wise clip classifier: Normalize → low-frequency DFT magnitudes → MLP; clip logits = temporal mean.

    The DFT magnitude of a frame does not change when the digit moves on the black
    canvas without leaving it (a circular shift), so one small MLP serves every
    position. Contract used by :class:`smoothcert.engine.patches.ClipPatchReduce`:
    ``forward(clip)`` = temporal mean of ``frame_head(A·vec(frame) + c)`` with
    ``(A, c) = frame_stem()`` (the normalization folded exactly into the DFT).
    """

    def __init__(
        self,
        canvas: int,
        num_classes: int = 10,
        hidden: int = HIDDEN,
        freqs: int = FREQS,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        self.canvas = int(canvas)
        self.normalize = Normalize([mean], [std])
        self.register_buffer("basis", fourier_basis(self.canvas, freqs))
        self.head = nn.Sequential(
            nn.Linear(self.basis.shape[0] // 2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def frame_stem(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, c): the DFT of normalized frames as one affine map of raw flattened frames."""
        mean, std = self.normalize.mean.flatten()[0], self.normalize.std.flatten()[0]
        return self.basis / std, -(mean / std) * self.basis.sum(1)

    def frame_head(self, z: torch.Tensor) -> torch.Tensor:
        """(M, 2F) DFT coefficients (cos, sin interleaved) → (M, K) logits."""
        return self.head(torch.linalg.vector_norm(z.view(z.shape[0], -1, 2), dim=-1))

    def frame_logits(self, frames: torch.Tensor) -> torch.Tensor:
        """(M, 1, canvas, canvas) frames → (M, K) logits."""
        return self.frame_head(F.linear(self.normalize(frames).flatten(1), self.basis))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        n, t = clips.shape[:2]
        return self.frame_logits(clips.reshape(n * t, *clips.shape[2:])).view(n, t, -1).mean(1)


def _fingerprint(cfg: dict, sigma: float) -> dict:
    v = settings(cfg)
    return {
        "arch": ARCH,
        "sigma": float(sigma),
        "seed": int(cfg["seed"]),
        "frames": v["frames"],
        "canvas": v["canvas"],
        "epochs": v["epochs"],
        "batch_size": int(cfg["train"]["batch_size"]),
        "test_fraction": float(cfg["data"]["test_fraction"]),
        "hidden": HIDDEN,
        "freqs": FREQS,
        "lr": LR,
        "geometry": clip_geometry(cfg, v["frames"], v["canvas"], v["canvas"]),
        "code": stages.code_fingerprint("video"),  # a model trained by other code is trained again
    }


def load_video_model(cfg: dict, sigma: float, path: str | Path, device) -> FrameNet:
    """Load ``model.pt`` written by :func:`train_video_model`, refusing one trained with other settings."""
    blob = load_torch(path, what="video model")
    want = _fingerprint(cfg, sigma)
    require(
        isinstance(blob, dict) and "state_dict" in blob and blob.get("arch") == ARCH,
        f"{path} is not a video model ({ARCH})",
    )
    require(
        blob.get("settings") == want,
        f"video model {path} was trained with "
        + (describe_changes(blob["settings"], want) if isinstance(blob.get("settings"), dict) else "other settings"),
    )
    model = FrameNet(want["canvas"], hidden=HIDDEN)
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def _noisy_accuracy(model: FrameNet, x: torch.Tensor, y: torch.Tensor, sigma: float, device, seed: int) -> float:
    gen = make_generator(seed, device)
    ok = 0
    with torch.inference_mode():
        for i in range(0, len(x), 512):
            xb = x[i : i + 512].to(device)
            ok += (
                (
                    model(noisy_copies(xb, torch.tensor(sigma, device=device), 1, "gaussian", gen)).argmax(1).cpu()
                    == y[i : i + 512]
                )
                .sum()
                .item()
            )
    return ok / len(x)


def _as_patches(frames: torch.Tensor, geometry: dict, crops: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each frame, with probability 1/2, replaced by a random patch of its resized copy (what Smooth-Reduce feeds the model)."""
    if geometry["resize"] == geometry["patch"]:
        return frames
    pick = torch.rand(len(frames), generator=gen, device=frames.device) < 0.5
    chosen = frames[pick]
    patches = patch_ops.extract_patches(patch_ops.resize_to(chosen, geometry["resize"]), crops, geometry["patch"])
    which = torch.randint(len(crops), (len(chosen),), generator=gen, device=frames.device)
    out = frames.clone()
    out[pick] = patches.view(len(chosen), len(crops), *frames.shape[1:])[
        torch.arange(len(chosen), device=frames.device), which
    ]
    return out


def train_video_model(
    cfg: dict, sigma: float, device, out_path: str | Path, data=None, progress: bool = False
) -> FrameNet:
    """Train :class:`FrameNet` with Gaussian noise N(0, σ²I) on whole clips; save ``out_path``; return it in eval mode.

    Loss: cross-entropy of every frame's logits against the clip label. Noise is
    added first; then half of the frames are resized and cropped back to the
    canvas at a random offset, as the Smooth-Reduce clip classifier will see them.
    The checkpoint is weights_only-loadable and holds the training history.
    """
    v = settings(cfg)
    geometry = clip_geometry(cfg, v["frames"], v["canvas"], v["canvas"])
    crops = patch_ops.patch_positions(geometry["resize"], geometry["patch"], 1).to(device)
    xtr, ytr, xte, yte = data if data is not None else make_moving_digits(cfg, cfg["seed"])
    torch.manual_seed(cfg["seed"])
    model = FrameNet(v["canvas"], mean=float(xtr.mean()), std=float(xtr.std())).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batch, t = int(cfg["train"]["batch_size"]), v["frames"]
    scale = torch.tensor(float(sigma), device=device)
    history = []
    for epoch in range(v["epochs"]):
        t0 = time.time()
        gen = make_generator(stream_seed(cfg["seed"], epoch, "train"), device)
        order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(cfg["seed"] * 1000 + epoch))
        model.train()
        total = correct = 0.0
        for i in tqdm(
            range(0, len(xtr), batch),
            desc=f"video σ={sigma:g} epoch {epoch + 1}/{v['epochs']}",
            disable=not progress,
            leave=False,
        ):
            ids = order[i : i + batch]
            xb, yb = xtr[ids].to(device), ytr[ids].to(device)
            noisy = noisy_copies(xb, scale, 1, "gaussian", gen)
            frames = _as_patches(noisy.reshape(-1, *noisy.shape[2:]), geometry, crops, gen)
            logits = model.frame_logits(frames)
            loss = F.cross_entropy(logits, yb.repeat_interleave(t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(ids)
            correct += (logits.detach().view(len(ids), t, -1).mean(1).argmax(1) == yb).sum().item()
        model.eval()
        acc = _noisy_accuracy(model, xte, yte, sigma, device, stream_seed(cfg["seed"], epoch, "predict"))
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / len(xtr),
                "train_acc": correct / len(xtr),
                "test_noisy_acc": acc,
                "time": time.time() - t0,
            }
        )
    save_torch(
        out_path,
        {"arch": ARCH, "settings": _fingerprint(cfg, sigma), "state_dict": model.state_dict(), "history": history},
    )
    return model.eval()


# ---------------------------------------------------------------- certification


def certify_video(
    cfg: dict,
    sigma: float,
    method: str,
    model: nn.Module,
    out_path: str | Path,
    device,
    data=None,
    progress: bool = False,
) -> pd.DataFrame:
    """Certify the configured test clips (``test.start/step/limit``) with ``method``; write ``out_path``.

    Runs :func:`smoothcert.pipeline.certify.certify_shard` (ℓ2, Gaussian σ, ``cfg['certify']``),
    so rows, seeds and resumption are those of the image pipeline.
    """
    v = settings(cfg)
    require(method in clip_methods(), f"video: method {method!r} is not available for clips; allowed: {clip_methods()}")
    _, _, xte, yte = data if data is not None else make_moving_digits(cfg, cfg["seed"])
    t = cfg["test"]
    idx = data_mod.test_indices(len(xte), t["start"], t["step"], t["limit"])
    require(len(idx) > 0, "video: no test clips selected (check test.start / test.limit)")
    spec = ModelSpec("gaussian", "fixed", NORM, float(sigma), tuple(v["methods"]))
    # the clip experiment is the one model of this run: the Smooth-Reduce wrapper reads the certificate's norm
    # from cfg['models'] (a wrapper's ``certificate_norms``) to pick its radius factor, ℓ2 here
    run_cfg = {
        **cfg,
        "models": [
            {
                "objective": spec.objective,
                "sigma_mode": spec.sigma_mode,
                "norm": spec.norm,
                "sigmas": [spec.sigma],
                "methods": list(spec.methods),
            }
        ],
    }
    return certify_shard(
        run_cfg,
        spec,
        method,
        model.eval(),
        xte[idx],
        yte[idx],
        idx,
        out_path,
        device,
        progress=progress,
        stage="video",
        num_classes=data_mod.info("digits").num_classes,  # moving digits: the digits' classes
    )


def run_video(cfg: dict, sigma: float, out_dir: str | Path, device, progress: bool = True) -> dict:
    """Prepare moving digits, train (or reuse a matching ``out_dir/model.pt``), certify every ``video.methods``.

    Writes ``out_dir/model.pt``, ``out_dir/metrics.tsv`` and ``out_dir/<method>/certify.tsv``;
    returns a summary (clips, certified accuracy at radius 0, average certified radius, seconds per stage).
    """
    v = settings(cfg)
    require(float(sigma) > 0, f"video: sigma = {sigma} must be > 0")
    out_dir = Path(out_dir)
    t0 = time.time()
    data = make_moving_digits(cfg, cfg["seed"])
    timing = {"prepare": time.time() - t0}
    model_path = out_dir / "model.pt"
    t0 = time.time()
    model = None
    if model_path.exists():
        try:
            model = load_video_model(cfg, sigma, model_path, device)
        except SmoothcertError as exc:  # another model or other settings: train it again
            log(f"resume: {exc}; training again")
            model = None
    if model is None:
        model = train_video_model(cfg, sigma, device, model_path, data=data, progress=progress)
    history = load_torch(model_path, what="video model")["history"]
    write_table(out_dir / "metrics.tsv", pd.DataFrame(history, columns=METRIC_COLUMNS))
    timing["train"] = time.time() - t0
    summary = {
        "sigma": float(sigma),
        "train": len(data[0]),
        "test": len(data[2]),
        "test_noisy_acc": history[-1]["test_noisy_acc"],
        "methods": {},
    }
    for method in v["methods"]:
        t0 = time.time()
        df = certify_video(
            cfg, sigma, method, model, out_dir / method / "certify.tsv", device, data=data, progress=progress
        )
        timing[method] = time.time() - t0
        summary["methods"][method] = {
            "clips": int(len(df)),
            "certified_accuracy_at_0": float(df["correct"].mean()),
            "average_certified_radius": float(df["radius"].where(df["correct"] == 1, 0.0).mean()),
        }
    summary["seconds"] = {k: round(s, 2) for k, s in timing.items()}
    return summary
