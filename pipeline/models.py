"""Model registry: architectures a spec can name, with their knobs and builders."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn


@dataclass(frozen=True)
class Knob:
    """One architecture setting that a spec may fix or search."""

    kind: Literal["int", "float", "str"]
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: its builder and the knobs the builder accepts."""

    build: Callable[..., nn.Module]
    knobs: dict[str, Knob] = field(default_factory=dict)
    summary: str = ""


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Return a conv + batch-norm + ReLU block that keeps the spatial size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """A plain CNN: ``depth`` stages of two conv-BN-ReLU blocks, each stage halving the size.

    Stage ``i`` has ``width * 2**i`` channels. A stage pools with a 2×2 max-pool while
    the feature map is at least 2 pixels wide, so 8-pixel digits and 32-pixel
    CIFAR-10 images both fit. Global average pooling and dropout precede the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 depth: int = 3, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for stage in range(depth):
            out_channels = width * 2**stage
            layers += [conv_bn_relu(channels, out_channels), conv_bn_relu(out_channels, out_channels)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.pool(x).flatten(1)
        x = self.dropout(x)
        return self.classifier(x)


ARCHITECTURES: dict[str, Architecture] = {
    "small_cnn": Architecture(
        build=SmallCNN,
        knobs={
            "depth": Knob("int", 2, minimum=1, maximum=6),
            "width": Knob("int", 32, minimum=4, maximum=512),
        },
        summary="conv + batch-norm + ReLU stages with max-pooling",
    ),
}


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int,
                knobs: dict[str, Any], dropout: float = 0.0) -> nn.Module:
    """Build a registered architecture for images of ``in_channels`` × ``image_size``²."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; registered: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch].build(in_channels, num_classes, image_size, dropout=dropout, **knobs)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable and frozen parameters."""
    return sum(parameter.numel() for parameter in model.parameters())
