"""Base classifiers by name, and loading a trained one from its checkpoint. Normalization is always the first layer.

Noise is added in [0, 1] pixel space and every radius is in pixel space, as in
Cohen et al.: the model receives un-normalized pixels and normalizes them itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
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


def load_model(cfg: dict, path: str | Path, device) -> nn.Module:
    """Build the configured model and load a checkpoint into it, checking arch and shapes."""
    blob = load_torch(path, what="checkpoint")
    require(isinstance(blob, dict) and "state_dict" in blob, f"checkpoint {path} has no state_dict")
    arch = cfg["model"]["arch"]
    require(blob.get("arch") == arch, f"checkpoint {path} is for arch {blob.get('arch')!r}, the config says {arch!r}")
    state = blob["state_dict"]
    require(
        isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
        f"checkpoint {path}: state_dict is not a mapping of names to tensors",
    )
    model = make_model(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise SmoothcertError(
            f"checkpoint {path} does not fit {arch} for {cfg['data']['dataset']} "
            f"(wrong class count or shapes): {(lines[1] if len(lines) > 1 else lines[0] if lines else str(exc))[:200]}"
        ) from exc
    # NaN/inf weights make NaN logits, whose argmax is an arbitrary class: certificates would be meaningless
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    require(
        not bad,
        f"checkpoint {path} holds NaN or inf values in {bad[:3]}{' ...' if len(bad) > 3 else ''} "
        f"(diverged training?); refusing to certify with it",
    )
    model = model.to(device).eval()
    return prepare_for_inference(model) if cfg["channels_last"] else model
