"""Checkpoints in locuslab/smoothing's layout, written by a module independent of smoothcert's.

The network here is written from the layout's facts (README, "Certify your own model"), not from smoothcert's
code: a CIFAR ResNet whose attributes carry the released checkpoints' names (``conv1``, ``bn1``,
``layer1..3`` of blocks with ``conv1, bn1, conv2, bn2, downsample``, ``avgpool = AvgPool2d(8)``, ``fc``) behind
a normalization layer that keeps its constants as plain attributes, so the state dict is ``1.``-prefixed; the
ImageNet ResNet-50 sits inside ``DataParallel`` (``1.module.``). Weights and batch-norm statistics are seeded and
random, so a loader that mixes up any key gives different logits.

``write_locuslab_checkpoint(path, arch)`` saves ``{epoch, arch, state_dict, optimizer}`` and returns the reference
module (eval mode): tests and benchmarks (benchmarks/bench_pretrained.py, the GPU check) compare against it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class PixelNorm(nn.Module):
    """(x - mean) / std with mean and std as plain attributes: no state-dict entry."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        mean = torch.tensor(self.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride > 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x if self.downsample is None else self.downsample(x)
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + skip)


class CifarNet(nn.Module):
    def __init__(self, depth, num_classes):
        super().__init__()
        per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        widths, cin = (16, 32, 64), 16
        for stage, width in enumerate(widths, start=1):
            blocks = []
            for b in range(per_stage):
                blocks.append(Block(cin, width, 2 if (stage > 1 and b == 0) else 1))
                cin = width
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        h = self.relu(self.bn1(self.conv1(x)))
        h = self.layer3(self.layer2(self.layer1(h)))
        return self.fc(torch.flatten(self.avgpool(h), 1))


def randomize(model: nn.Module, seed: int) -> nn.Module:
    """Seeded random parameters and batch-norm statistics (every tensor of the state dict), eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif name.endswith(("bn2.weight", "bn3.weight")):  # small residual branches: deep nets stay tame
                t.copy_(0.05 + 0.1 * torch.rand(t.shape, generator=gen))
            elif name.endswith("bn1.weight") or ".1.weight" in name:
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=gen))
            else:
                scale = (2.0 / max(1, t[0].numel())) ** 0.5 if t.ndim > 1 else 0.1
                t.copy_(scale * torch.randn(t.shape, generator=gen))
    return model.eval()


def locuslab_model(arch: str = "cifar_resnet20", num_classes: int = 10, seed: int = 0) -> nn.Module:
    """The reference ``Sequential(normalize, net)`` of ``arch`` (cifar_resnet20 / cifar_resnet110 / resnet50)."""
    if arch == "resnet50":
        from torchvision.models import resnet50

        net = nn.DataParallel(resnet50(weights=None, num_classes=num_classes))
        return randomize(nn.Sequential(PixelNorm(IMAGENET_MEAN, IMAGENET_STD), net), seed)
    depth = {"cifar_resnet20": 20, "cifar_resnet110": 110}[arch]
    return randomize(nn.Sequential(PixelNorm(CIFAR_MEAN, CIFAR_STD), CifarNet(depth, num_classes)), seed)


def write_locuslab_checkpoint(
    path: str | Path, arch: str = "cifar_resnet20", num_classes: int = 10, seed: int = 0
) -> nn.Module:
    """Save ``arch`` with seeded random weights in locuslab's layout at ``path``; return the reference module."""
    model = locuslab_model(arch, num_classes, seed)
    blob = {"epoch": 90, "arch": arch, "state_dict": model.state_dict(), "optimizer": {"state": {}, "param_groups": []}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return model
