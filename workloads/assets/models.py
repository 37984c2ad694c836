"""Models that take inputs in [0, 1] and expose their penultimate representation.

Every model is a `RobustModel`: Normalize -> body (-> flat [B, feature_dim] features) -> linear head.
Keeping normalisation inside the model lets attacks work in pixel space ([0, 1], eps in pixel units),
and keeping the head separate makes `features(x)` (Figs. 3-5) exactly what the logits are computed from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50 as tv_resnet50


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean/std are buffers so they follow .to(device) and live in checkpoints."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length; got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive; got {list(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RobustModel(nn.Module):
    """forward(x) = head(features(x)); features(x) = body(normalize(x)) is the flat penultimate layer."""

    def __init__(self, normalize: Normalize, body: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.normalize = normalize
        self.body = body
        self.head = head
        self.feature_dim: int = head.in_features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------------------------
# Small CNN: BatchNorm-free so that DDP (per-rank batches) and single-process training are exactly
# equivalent; narrow (16/32 channels) so CPU steps stay cheap.


def _small_cnn_body(in_channels: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        # 7x7 is a no-op for 28px inputs and makes the model accept 32px (CIFAR) inputs too.
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128),
        nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------------------------------------
# CIFAR ResNets as in MadryLab's robustness library (robustness/cifar_models/resnet.py): 3x3 stride-1 stem,
# no max-pool, four stages at strides 1, 2, 2, 2, global average pool.


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.shortcut = _shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes))


def _cifar_resnet_body(block: type[BasicBlock | Bottleneck], num_blocks: Sequence[int], in_channels: int) -> nn.Module:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
    ]
    in_planes = 64
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), num_blocks, strict=True)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(block(in_planes, planes, stride))
            in_planes = planes * block.expansion
    # Adaptive pool = the library's avg_pool2d(out, 4) on 32px inputs, and still valid on other sizes.
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers)


def _imagenet_resnet50_body(in_channels: int) -> nn.Module:
    """torchvision ResNet-50 (random init) with its fc removed: output = flattened avgpool, 2048-d."""
    net = tv_resnet50(weights=None)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net


# name -> (body builder taking in_channels, feature_dim)
_BODIES: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "small_cnn": (_small_cnn_body, 128),
    "resnet18_cifar": (lambda c: _cifar_resnet_body(BasicBlock, (2, 2, 2, 2), c), 512),
    "resnet50_cifar": (lambda c: _cifar_resnet_body(Bottleneck, (3, 4, 6, 3), c), 2048),
    "resnet50": (_imagenet_resnet50_body, 2048),
}


def build_model(
    name: str, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]
) -> RobustModel:
    """A freshly initialised model by name (one of workloads.catalog.MODELS); inputs in [0, 1]."""
    if name not in _BODIES:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(_BODIES)}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values (in_channels); got {len(mean)} and {len(std)}")
    make_body, feature_dim = _BODIES[name]
    return RobustModel(Normalize(mean, std), make_body(in_channels), nn.Linear(feature_dim, num_classes))


MODEL_NAMES: tuple[str, ...] = tuple(_BODIES)
