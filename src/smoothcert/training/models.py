"""Base classifiers by name, the frame-wise clip classifier, and loading a trained one from its checkpoint.
Normalization is always the first layer.

Noise is added in [0, 1] pixel space and every radius is in pixel space, as in
Cohen et al.: the model receives un-normalized pixels and normalizes them itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smoothcert import data as data_mod
from smoothcert.artifacts import load_torch
from smoothcert.errors import SmoothcertError, require


class Normalize(nn.Module):
    """Per-channel (x - mean) / std as a layer, so inputs stay in pixel space."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SmallCNN(nn.Module):
    """Conv-pool-conv and a small MLP head, for 8×8 digits up to 28×28 MNIST-sized images.

    Pooling right after the first convolution keeps it cheap (about 0.1 M multiply-adds per
    8×8 input at width 16), since certification evaluates it hundreds of thousands of times.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, hidden: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """The two-conv residual block of He et al.'s CIFAR ResNets."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.short(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (depth 20 and 110 as in Cohen et al.)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise SmoothcertError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True)
        )
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


def _resnet50(in_channels: int, num_classes: int, size: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


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

    The DFT magnitude of a frame does not change when the digit moves on the black canvas without
    leaving it (a circular shift), so one small MLP serves every position. Contract used by
    :class:`smoothcert.engine.patches.ClipPatchReduce`: ``forward(clip)`` = temporal mean of
    ``frame_head(A·vec(frame) + c)`` with ``(A, c) = frame_stem()`` (the normalization folded exactly into the DFT).
    """

    def __init__(self, canvas: int, num_classes: int, hidden: int, freqs: int, mean: float = 0.0, std: float = 1.0):
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


def frame_net(video: dict, num_classes: int, mean: float = 0.0, std: float = 1.0) -> FrameNet:
    """The :class:`FrameNet` of params.yaml's ``video`` section (``canvas``, ``model.hidden``, ``model.freqs``)."""
    return FrameNet(video["canvas"], num_classes, video["model"]["hidden"], video["model"]["freqs"], mean, std)


ARCHS: dict[str, Callable[[int, int, int], nn.Module]] = {
    "digits_cnn": lambda c, k, size: SmallCNN(c, k, width=16, hidden=64),
    "mnist_cnn": lambda c, k, size: SmallCNN(c, k, width=32, hidden=128),
    # A quarter of mnist_cnn's multiply-adds (≈ 1 M per 28×28 input), ≈ 3× its CPU throughput: the real-data configs' model.
    "mnist_cnn_small": lambda c, k, size: SmallCNN(c, k, width=16, hidden=128),
    "cifar_resnet20": lambda c, k, size: CifarResNet(20, k, c),
    "cifar_resnet110": lambda c, k, size: CifarResNet(110, k, c),
    "resnet50": _resnet50,
}


def build_model(
    arch: str, in_channels: int, num_classes: int, size: int, mean: list[float], std: list[float]
) -> nn.Module:
    """``Normalize(mean, std)`` followed by the architecture registered as ``arch``."""
    if arch not in ARCHS:
        raise SmoothcertError(f"unknown arch {arch!r}; allowed: {sorted(ARCHS)}")
    return nn.Sequential(Normalize(mean, std), ARCHS[arch](in_channels, num_classes, size))


class EvenAvgPool2d(nn.Module):
    """``AdaptiveAvgPool2d(size)`` computed as a plain average pooling when the input divides evenly.

    Adaptive average pooling of an H×W map to h×w with h | H and w | W averages disjoint (H/h)×(W/w)
    windows, which is exactly ``avg_pool2d`` with that kernel and stride; its backward pass is much
    cheaper on CPU in channels-last layout. Other sizes fall back to the adaptive operator.
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (h, w), (oh, ow) = x.shape[-2:], self.output_size
        if oh and ow and h % oh == 0 and w % ow == 0:
            return nn.functional.avg_pool2d(x, (h // oh, w // ow))
        return nn.functional.adaptive_avg_pool2d(x, self.output_size)


def prepare_for_inference(model: nn.Module) -> nn.Module:
    """``model`` prepared for fast evaluation, in place: 4-D (2-D convolution) weights in channels-last
    memory format, and adaptive average pools that divide their input evenly run as plain ones
    (:class:`EvenAvgPool2d`).

    The function computed is the same up to float rounding (summation order); oneDNN and cuDNN run
    channels-last convolutions, pooling and ReLU faster (≈2× for the digits CNN on CPU, see
    benchmarks/README.md). The parameters and the state dict are unchanged in name and shape. Models
    without 4-D weights are returned unchanged.
    """
    if not any(p.dim() == 4 for p in model.parameters()):
        return model
    model.to(memory_format=torch.channels_last)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.AdaptiveAvgPool2d:
                setattr(parent, name, EvenAvgPool2d(child.output_size))
    return model


def make_model(cfg: dict) -> nn.Module:
    """The configured architecture for the configured dataset, normalization first."""
    meta = data_mod.info(cfg["data"]["dataset"])
    return build_model(
        cfg["model"]["arch"], meta.channels, meta.num_classes, meta.size, list(meta.mean), list(meta.std)
    )


def load_weights(build: Callable[[], nn.Module], path: str | Path, arch: str, what: str) -> nn.Module:
    """``build()`` with the state dict of the checkpoint at ``path`` (written for ``arch``), in eval mode.

    Refused in one line: a file that is no checkpoint, one for another arch, weights that do not fit the
    model (``what`` names it), and NaN or infinite weights.
    """
    blob = load_torch(path, what="checkpoint")
    require(isinstance(blob, dict) and "state_dict" in blob, f"checkpoint {path} has no state_dict")
    require(blob.get("arch") == arch, f"checkpoint {path} is for arch {blob.get('arch')!r}, the config says {arch!r}")
    state = blob["state_dict"]
    require(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
        f"checkpoint {path}: state_dict is not a mapping of names to tensors",
    )
    model = build()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise SmoothcertError(
            f"checkpoint {path} does not fit {what} "
            f"(wrong class count or shapes): {(lines[1] if len(lines) > 1 else lines[0] if lines else str(exc))[:200]}"
        ) from exc
    # NaN/inf weights make NaN logits, whose argmax is an arbitrary class: certificates would be meaningless
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    require(
        not bad,
        f"checkpoint {path} holds NaN or inf values in {bad[:3]}{' ...' if len(bad) > 3 else ''} "
        f"(diverged training?); refusing to certify with it",
    )
    return model.eval()


def load_model(cfg: dict, path: str | Path, device) -> nn.Module:
    """Build the configured model and load a checkpoint into it, checking arch and shapes."""
    arch = cfg["model"]["arch"]
    model = load_weights(lambda: make_model(cfg), path, arch, f"{arch} for {cfg['data']['dataset']}").to(device)
    return prepare_for_inference(model) if cfg["channels_last"] else model
