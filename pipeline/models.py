"""Model registry: architectures a spec can name, with their knobs and builders.

Every builder is called as ``build(in_channels, num_classes, image_size, dropout=..., **knobs)``
and ends with global average pooling, dropout and a linear classifier. Strides adapt to
``image_size`` so that 8×8 digits and 32×32 CIFAR-10 images both fit: a layer downsamples
only while its output, computed by ``conv_output_size``, is smaller than its input and at
least 1×1.

The file reads one family at a time: shared helpers, plain CNN, ResNet, Inception,
MobileNet v1, MobileNetV2, EfficientNet, transfer learning from ResNet-18, then the
registry and the functions that use it.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


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
    """A registered architecture: its builder, the knobs the builder accepts and its input size.

    ``resolution(knobs, native_size)`` returns the image side the model expects, given the
    knob values and the data's native side. None means the native side.
    """

    build: Callable[..., nn.Module]
    knobs: dict[str, Knob] = field(default_factory=dict)
    summary: str = ""
    resolution: Callable[[dict[str, Any], int], int] | None = None


# ---------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------

def conv_output_size(n: int, f: int, p: int, s: int) -> int:
    """Return the output side of a convolution or pooling layer: floor((n + 2p − f) / s) + 1.

    ``n`` is the input side, ``f`` the kernel size, ``p`` the padding and ``s`` the stride,
    all in pixels. Raises ValueError when the kernel does not fit the padded input.
    """
    if s < 1:
        raise ValueError(f"stride must be at least 1, got s={s}")
    if n + 2 * p < f:
        raise ValueError(
            f"kernel f={f} does not fit an input of n={n} pixels with padding p={p}. "
            f"Use a smaller kernel, more padding or a larger input."
        )
    return (n + 2 * p - f) // s + 1


def downsampling_stride(size: int, stride: int = 2, kernel_size: int = 3, padding: int = 1) -> int:
    """Return ``stride`` if such a layer shrinks a ``size``-pixel map and keeps it at least 1×1, else 1.

    NOTE: deep networks on 8×8 input reach 1×1 maps, where batch norm over a batch of 2
    normalizes 2 values per channel. Its gradients then reach 1e7 and more, and one plain
    SGD step at lr 0.01 overflowed mobilenet_v1, efficientnet and resnet18_transfer
    (torch 2.14.1, CPU). Adam steps and batches of 4 or more stayed finite.
    """
    if size + 2 * padding < kernel_size:
        return 1
    output_size = conv_output_size(size, kernel_size, padding, stride)
    return stride if 1 <= output_size < size else 1


def scale_channels(channels: int, width_mult: float, divisor: int = 8) -> int:
    """Return ``channels × width_mult`` rounded to the nearest multiple of ``divisor``, at least ``divisor``."""
    return max(divisor, round(channels * width_mult / divisor) * divisor)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Return a conv + batch-norm + ReLU block that keeps the spatial size at stride 1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def conv1x1(in_channels: int, out_channels: int, stride: int = 1,
            activation: Callable[[], nn.Module] | None = nn.ReLU) -> nn.Sequential:
    """Return a 1×1 conv + batch norm, followed by ``activation`` unless it is None.

    A 1×1 conv mixes channels at each pixel and costs ``in_channels × out_channels``
    multiply-adds per pixel. Inception and MobileNet blocks use it to reduce the input
    channels of a costly 3×3 or 5×5 conv, to expand channels, or to project them back.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


class PooledClassifier(nn.Module):
    """Global average pooling, dropout, then a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x).flatten(1)
        x = self.dropout(x)
        return self.fc(x)


# ---------------------------------------------------------------------------
# Plain CNN
# ---------------------------------------------------------------------------

class SmallCNN(nn.Module):
    """A plain CNN: ``depth`` stages of two conv-BN-ReLU blocks, each stage halving the size.

    Stage ``i`` has ``width * 2**i`` channels. A stage ends with a 2×2 max-pool of stride 2
    while the pooled map stays at least 1×1, so 8-pixel digits and 32-pixel CIFAR-10
    images both fit. Global average pooling and dropout precede the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 depth: int = 3, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for stage in range(depth):
            out_channels = width * 2**stage
            # 3×3 convs with padding 1 at stride 1 keep the size: conv_output_size(size, 3, 1, 1) == size.
            layers += [conv_bn_relu(channels, out_channels), conv_bn_relu(out_channels, out_channels)]
            if downsampling_stride(size, stride=2, kernel_size=2, padding=0) == 2:
                layers.append(nn.MaxPool2d(2))
                size = conv_output_size(size, 2, 0, 2)
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


# ---------------------------------------------------------------------------
# ResNet
# ---------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """A residual block: ReLU(BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x)).

    The first conv carries the block's stride. The shortcut is the identity when the
    block keeps stride 1 and the channel count, and otherwise a 1×1 conv + batch-norm
    projection with the same stride, so both paths have the same shape.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = conv1x1(in_channels, out_channels, stride=stride, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet for small images: a 3×3 stem, then ``stages`` stages of ``blocks`` basic blocks.

    Stage ``i`` has ``base_width × 2**i`` channels, and each stage after the first starts
    with a stride-2 block while the map is larger than 1×1. With ``stages=3, blocks=3,
    base_width=16`` the depth and widths are those of the 20-layer CIFAR-10 ResNet
    (6n + 2 layers, n = 3, widths 16, 32, 64), but the shortcuts that change shape are
    1×1 projections rather than zero-padded identities.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 stages: int = 3, blocks: int = 3, base_width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        self.stem = conv_bn_relu(in_channels, base_width)
        layers: list[nn.Module] = []
        channels, size = base_width, image_size
        for stage in range(stages):
            out_channels = base_width * 2**stage
            stride = downsampling_stride(size) if stage > 0 else 1
            size = conv_output_size(size, 3, 1, stride)
            for index in range(blocks):
                layers.append(BasicBlock(channels, out_channels, stride if index == 0 else 1))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = PooledClassifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layers(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# Inception
# ---------------------------------------------------------------------------

class InceptionModule(nn.Module):
    """Four parallel branches concatenated on channels: 1×1, 1×1→3×3, 1×1→5×5 and 3×3 max-pool→1×1.

    Argument names follow the columns of GoogLeNet's table ("#3×3 reduce" is the 1×1 conv
    in front of the 3×3 conv). The reduce convs cut the channels that the 3×3 and 5×5
    kernels see, which is where a naive module would spend most of its multiply-adds.
    Every branch keeps the spatial size.
    """

    def __init__(self, in_channels: int, ch1x1: int, ch3x3_reduce: int, ch3x3: int,
                 ch5x5_reduce: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1x1 = conv1x1(in_channels, ch1x1)
        self.branch3x3 = nn.Sequential(conv1x1(in_channels, ch3x3_reduce), conv_bn_relu(ch3x3_reduce, ch3x3, 3))
        self.branch5x5 = nn.Sequential(conv1x1(in_channels, ch5x5_reduce), conv_bn_relu(ch5x5_reduce, ch5x5, 5))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), conv1x1(in_channels, pool_proj))
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)]
        return torch.cat(branches, dim=1)


# Branch widths of one module as multiples of ``width``: #1×1, #3×3 reduce, #3×3, #5×5 reduce,
# #5×5, pool proj. These are the ratios of GoogLeNet's inception (3a) module (64, 96, 128,
# 16, 32, 32), which ``width=32`` reproduces.
INCEPTION_BRANCH_RATIOS = (2.0, 3.0, 4.0, 0.5, 1.0, 1.0)


class Inception(nn.Module):
    """An Inception network for small images: a 3×3 stem, then ``stages`` stages of ``blocks`` modules.

    Stage ``i`` uses ``width × 2**i`` as the unit of its branch widths, so its modules
    output ``8 × width × 2**i`` channels. A 3×3 max-pool of stride 2 precedes each stage
    after the first while the map is larger than 1×1.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 stages: int = 2, blocks: int = 2, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        channels = 2 * width
        self.stem = conv_bn_relu(in_channels, channels)
        layers: list[nn.Module] = []
        size = image_size
        for stage in range(stages):
            stride = downsampling_stride(size) if stage > 0 else 1
            if stride > 1:
                layers.append(nn.MaxPool2d(3, stride=stride, padding=1))
                size = conv_output_size(size, 3, 1, stride)
            unit = width * 2**stage
            branch_widths = [max(1, round(unit * ratio)) for ratio in INCEPTION_BRANCH_RATIOS]
            for _ in range(blocks):
                module = InceptionModule(channels, *branch_widths)
                layers.append(module)
                channels = module.out_channels
        self.layers = nn.Sequential(*layers)
        self.head = PooledClassifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layers(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# MobileNet v1: depthwise-separable convolutions
# ---------------------------------------------------------------------------

class DepthwiseSeparableConv(nn.Module):
    """A 3×3 depthwise conv + BN + ReLU, then a 1×1 pointwise conv + BN + ReLU.

    The depthwise conv filters each of the M input channels on its own, and the pointwise
    conv mixes them into N outputs. Together they cost 1/N + 1/9 of the multiply-adds of a
    standard 3×3 conv from M to N channels.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, stride, padding=1, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.pointwise = conv1x1(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.depthwise(x)
        return self.pointwise(x)


# MobileNet v1 body as (out_channels, stride) rows, from the network table of Howard et al.
# 2017 ("MobileNets"): the depthwise-separable layers up to the first 512-channel one. The
# paper's four further 512-channel layers and two 1024-channel layers serve 224-pixel input
# and are dropped here.
MOBILENET_V1_LAYERS = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
]


class MobileNetV1(nn.Module):
    """MobileNet v1 for small images: a 3×3 stem of 32 channels, then ``MOBILENET_V1_LAYERS``.

    ``width_mult`` multiplies every layer's channels (rounded to a multiple of 8). The stem
    keeps stride 1 for small images, where the paper's stem has stride 2.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 width_mult: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        channels = scale_channels(32, width_mult)
        self.stem = conv_bn_relu(in_channels, channels)
        layers: list[nn.Module] = []
        size = image_size
        for out_channels, stride in MOBILENET_V1_LAYERS:
            stride = downsampling_stride(size, stride)
            size = conv_output_size(size, 3, 1, stride)
            out_channels = scale_channels(out_channels, width_mult)
            layers.append(DepthwiseSeparableConv(channels, out_channels, stride))
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.head = PooledClassifier(channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layers(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# MobileNetV2: inverted residuals with linear bottlenecks
# ---------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """An inverted residual block: 1×1 expand, k×k depthwise, 1×1 linear projection.

    The expand conv widens ``in_channels`` by ``expand_ratio`` (it is skipped when the
    ratio is 1), and the depthwise conv carries the stride. Both are followed by
    ``activation``. The projection has no activation, so the narrow output is a linear
    bottleneck. The block adds its input to the output only when stride is 1 and the
    channel count stays the same (``has_skip``).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int,
                 kernel_size: int = 3, activation: Callable[[], nn.Module] = nn.ReLU6) -> None:
        super().__init__()
        hidden_channels = in_channels * expand_ratio
        self.has_skip = stride == 1 and in_channels == out_channels
        if expand_ratio == 1:
            self.expand: nn.Module = nn.Identity()
        else:
            self.expand = conv1x1(in_channels, hidden_channels, activation=activation)
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden_channels, hidden_channels, kernel_size, stride, padding=kernel_size // 2,
                      groups=hidden_channels, bias=False),
            nn.BatchNorm2d(hidden_channels),
            activation(),
        )
        self.project = conv1x1(hidden_channels, out_channels, activation=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x)
        out = self.depthwise(out)
        out = self.project(out)
        if self.has_skip:
            out = out + x
        return out


# MobileNetV2 body as (t, c, n, s) rows: expansion factor, output channels, repeats, and the
# stride of the first repeat. From Table 2 of Sandler et al. 2018 ("MobileNetV2: Inverted
# Residuals and Linear Bottlenecks"), scaled down for 8- to 32-pixel images: the stem keeps
# stride 1 (the paper's has stride 2), and the 160- and 320-channel rows, which run at 7×7
# on 224-pixel input, are dropped.
MOBILENET_V2_SETTING = [
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
]
MOBILENET_V2_STEM_CHANNELS = 32
MOBILENET_V2_HEAD_CHANNELS = 1280  # the paper's final 1×1 conv, scaled only by width_mult > 1


class MobileNetV2(nn.Module):
    """MobileNetV2 for small images: a 3×3 stem, ``MOBILENET_V2_SETTING`` and a 1×1 conv head.

    ``width_mult`` multiplies every row's channels (rounded to a multiple of 8), and
    ``expand_ratio`` replaces the expansion factor t of every row whose t is not 1.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 width_mult: float = 1.0, expand_ratio: int = 6, dropout: float = 0.0) -> None:
        super().__init__()
        channels = scale_channels(MOBILENET_V2_STEM_CHANNELS, width_mult)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU6(inplace=True),
        )
        layers: list[nn.Module] = []
        size = image_size
        for t, c, n, s in MOBILENET_V2_SETTING:
            out_channels = scale_channels(c, width_mult)
            ratio = t if t == 1 else expand_ratio
            for index in range(n):
                stride = downsampling_stride(size, s) if index == 0 else 1
                size = conv_output_size(size, 3, 1, stride)
                layers.append(InvertedResidual(channels, out_channels, stride, ratio))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        head_channels = scale_channels(MOBILENET_V2_HEAD_CHANNELS, max(1.0, width_mult))
        self.head_conv = conv1x1(channels, head_channels, activation=nn.ReLU6)
        self.head = PooledClassifier(head_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layers(x)
        x = self.head_conv(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# EfficientNet: compound scaling of an MBConv network
# ---------------------------------------------------------------------------

# Compound-scaling constants of Tan & Le 2019 ("EfficientNet: Rethinking Model Scaling for
# Convolutional Neural Networks"), found by grid search on EfficientNet-B0: depth grows by
# α**φ, width by β**φ and resolution by γ**φ. FLOPs grow with depth × width² × resolution²,
# and α·β²·γ² = 1.92 ≈ 2, so FLOPs grow about 2**φ.
EFFICIENTNET_ALPHA = 1.2
EFFICIENTNET_BETA = 1.1
EFFICIENTNET_GAMMA = 1.15

# Base network as (t, k, c, n, s) rows: expansion factor, depthwise kernel size, output
# channels, repeats and the stride of the first repeat. Taken from the first four rows of the
# EfficientNet-B0 table of Tan & Le 2019 and scaled down for 8- to 32-pixel images: the stem
# keeps stride 1, and the 112-, 192- and 320-channel rows are dropped. The 24- and
# 40-channel rows repeat 3 times instead of 2: at φ = 1, ceil(2 × 1.2) = 3 grows their depth
# 1.5× against α = 1.2, while ceil(3 × 1.2) = 4 grows it 1.33×.
EFFICIENTNET_BASE = [
    # t, k, c, n, s
    (1, 3, 16, 1, 1),
    (6, 3, 24, 3, 2),
    (6, 5, 40, 3, 2),
    (6, 3, 80, 3, 2),
]
EFFICIENTNET_STEM_CHANNELS = 32
EFFICIENTNET_HEAD_CHANNELS = 1280


def compound_scaling(phi: int, base_depth: int, base_width: int, base_resolution: int) -> tuple[int, int, int]:
    """Scale depth, width and resolution by the compound coefficient ``phi``.

    Returns ``(ceil(base_depth × α**φ), round(base_width × β**φ), round(base_resolution × γ**φ))``:
    layers, channels and pixels.
    """
    if phi < 0:
        raise ValueError(f"phi must be 0 or more, got {phi}")
    depth = math.ceil(base_depth * EFFICIENTNET_ALPHA**phi)
    width = round(base_width * EFFICIENTNET_BETA**phi)
    resolution = round(base_resolution * EFFICIENTNET_GAMMA**phi)
    return depth, width, resolution


def efficientnet_resolution(knobs: dict[str, Any], native_size: int) -> int:
    """Return the input side that ``efficientnet`` with these knobs expects: round(native × γ**φ)."""
    phi = knobs.get("phi", 0)
    return compound_scaling(phi, 1, 1, native_size)[2]


class EfficientNet(nn.Module):
    """An EfficientNet for small images: ``EFFICIENTNET_BASE`` scaled by ``phi``.

    Each row's repeats and channels go through ``compound_scaling``, and so do the stem
    and head channels. The caller resizes the images to ``efficientnet_resolution``. The
    MBConv blocks are inverted residuals with SiLU (swish) activations.

    NOTE: the blocks omit the squeeze-and-excitation layers and stochastic depth of
    EfficientNet-B0, so this is an MBConv network scaled the EfficientNet way, not B0 itself.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 phi: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        _, channels, _ = compound_scaling(phi, 1, EFFICIENTNET_STEM_CHANNELS, image_size)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, 1, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.SiLU(inplace=True),
        )
        layers: list[nn.Module] = []
        size = image_size
        for t, k, c, n, s in EFFICIENTNET_BASE:
            repeats, out_channels, _ = compound_scaling(phi, n, c, image_size)
            for index in range(repeats):
                stride = downsampling_stride(size, s, k, k // 2) if index == 0 else 1
                size = conv_output_size(size, k, k // 2, stride)
                layers.append(InvertedResidual(channels, out_channels, stride, t, k, nn.SiLU))
                channels = out_channels
        self.layers = nn.Sequential(*layers)
        _, head_channels, _ = compound_scaling(phi, 1, EFFICIENTNET_HEAD_CHANNELS, image_size)
        self.head_conv = conv1x1(channels, head_channels, activation=nn.SiLU)
        self.head = PooledClassifier(head_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layers(x)
        x = self.head_conv(x)
        return self.head(x)


# ---------------------------------------------------------------------------
# Transfer learning from torchvision's ResNet-18
# ---------------------------------------------------------------------------

RESNET18_CHECKPOINT = "resnet18-f37072fd.pth"  # file name of torchvision's ImageNet weights
RESNET18_FEATURES = 512  # channels that ResNet-18's global average pooling outputs


def hub_checkpoint_path() -> Path:
    """Return where torch.hub's cache keeps torchvision's ResNet-18 weights; nothing is downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / RESNET18_CHECKPOINT


def load_pretrained_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ResNet-18 state dict from ``path`` on the CPU, accepting tensors only.

    Raises FileNotFoundError when the file is missing and ValueError when it cannot be
    read as a flat state dict of tensors. Both messages name the path.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights not found: {path}. Copy torchvision's {RESNET18_CHECKPOINT} there "
            f"(torch.hub caches it at {hub_checkpoint_path()}) or build without pretrained weights."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot read pretrained weights from {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise ValueError(
            f"{path} does not contain a flat state dict of tensors. Save model.state_dict() "
            f"of torchvision.models.resnet18."
        )
    return state


def _describe_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown if len(keys) <= limit else f"{shown} and {len(keys) - limit} more"


def _load_backbone_state(backbone: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into a 1000-class ResNet-18, ignoring its ``fc.*`` keys.

    Raises ValueError that names the missing, unexpected and wrongly shaped keys.
    """
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = {key: value for key, value in backbone.state_dict().items() if not key.startswith("fc.")}
    # Checkpoints saved before PyTorch 0.4.1 lack the batch-norm counters, and
    # BatchNorm2d fills them in on load, so only their presence is optional.
    missing = [key for key in expected if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    mismatched = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(expected[key].shape)})"
        for key in state if key in expected and state[key].shape != expected[key].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_describe_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_describe_keys(unexpected)}")
    if mismatched:
        problems.append(f"wrong shapes: {_describe_keys(mismatched)}")
    if problems:
        raise ValueError(
            "pretrained state dict does not match torchvision's ResNet-18 ("
            + ", ".join(problems)
            + "). Pass the state dict of torchvision.models.resnet18."
        )
    backbone.load_state_dict(state, strict=False)


class ResNet18Transfer(nn.Module):
    """torchvision's ResNet-18 as a backbone, with a new dropout + linear head for ``num_classes``.

    In ``"frozen"`` mode the backbone's parameters have requires_grad False and the
    backbone stays in eval mode, so its batch-norm statistics stay as loaded too. In
    ``"finetune"`` mode everything trains, the backbone at ``backbone_lr_scale`` × the
    head's learning rate (see ``param_groups``). One-channel images are repeated to
    three channels in ``forward``.

    NOTE: the stem and four stages keep their strides (32 in total), so 8×8 and 32×32
    images reach the last stages as 1×1 maps.
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: int,
                 mode: str = "finetune", backbone_lr_scale: float = 0.1, dropout: float = 0.0,
                 pretrained: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(
                f"resnet18_transfer takes 1- or 3-channel images, got in_channels={in_channels}. "
                f"Choose another architecture for this data."
            )
        if mode not in ("frozen", "finetune"):
            raise ValueError(f"mode must be 'frozen' or 'finetune', got {mode!r}")
        if backbone_lr_scale <= 0:
            raise ValueError(
                f"backbone_lr_scale must be positive, got {backbone_lr_scale}. "
                f"Use mode='frozen' to keep the backbone fixed."
            )
        # Imported here because importing torchvision takes seconds and only this model needs it.
        from torchvision.models import resnet18

        self.in_channels = in_channels
        self.mode = mode
        self.backbone_lr_scale = backbone_lr_scale

        # weights=None builds the network with random weights and never downloads.
        self.backbone = resnet18(weights=None)
        if pretrained is not None:
            _load_backbone_state(self.backbone, pretrained)
        self.backbone.fc = nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(RESNET18_FEATURES, num_classes)

        if mode == "frozen":
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> ResNet18Transfer:
        """Set training mode, keeping a frozen backbone in eval mode."""
        super().train(mode)
        if self.mode == "frozen":
            self.backbone.eval()
        return self

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Return optimizer parameter groups: the head at ``lr``, a fine-tuned backbone at ``lr × backbone_lr_scale``.

        In frozen mode the list contains the head's group only.
        """
        head = {"params": list(self.fc.parameters()), "lr": lr}
        if self.mode == "frozen":
            return [head]
        backbone = {"params": list(self.backbone.parameters()), "lr": lr * self.backbone_lr_scale}
        return [backbone, head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = self.backbone(x)
        x = self.dropout(x)
        return self.fc(x)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

ARCHITECTURES: dict[str, Architecture] = {
    "small_cnn": Architecture(
        build=SmallCNN,
        knobs={
            "depth": Knob("int", 2, minimum=1, maximum=6),
            "width": Knob("int", 32, minimum=4, maximum=512),
        },
        summary="conv + batch-norm + ReLU stages with max-pooling",
    ),
    "resnet": Architecture(
        build=ResNet,
        knobs={
            "stages": Knob("int", 3, minimum=1, maximum=4),
            "blocks": Knob("int", 3, minimum=1, maximum=8),
            "base_width": Knob("int", 16, minimum=4, maximum=128),
        },
        summary="basic residual blocks with identity or 1×1 projection shortcuts",
    ),
    "inception": Architecture(
        build=Inception,
        knobs={
            "stages": Knob("int", 2, minimum=1, maximum=3),
            "blocks": Knob("int", 2, minimum=1, maximum=4),
            "width": Knob("int", 16, minimum=4, maximum=64),
        },
        summary="Inception modules: parallel 1×1, 3×3, 5×5 and pooling branches",
    ),
    "mobilenet_v1": Architecture(
        build=MobileNetV1,
        knobs={"width_mult": Knob("float", 1.0, minimum=0.25, maximum=2.0)},
        summary="depthwise-separable convolutions",
    ),
    "mobilenet_v2": Architecture(
        build=MobileNetV2,
        knobs={
            "width_mult": Knob("float", 1.0, minimum=0.25, maximum=2.0),
            "expand_ratio": Knob("int", 6, minimum=1, maximum=8),
        },
        summary="inverted residual blocks with linear bottlenecks",
    ),
    "efficientnet": Architecture(
        build=EfficientNet,
        knobs={"phi": Knob("int", 0, minimum=0, maximum=3)},
        summary="MBConv network with compound scaling of depth, width and resolution",
        resolution=efficientnet_resolution,
    ),
    "resnet18_transfer": Architecture(
        build=ResNet18Transfer,
        knobs={
            "mode": Knob("str", "finetune", allowed=("frozen", "finetune")),
            "backbone_lr_scale": Knob("float", 0.1, minimum=0.001, maximum=1.0),
        },
        summary="torchvision ResNet-18 backbone with a new head, frozen or fine-tuned",
    ),
}


def build_model(arch: str, in_channels: int, num_classes: int, image_size: int,
                knobs: dict[str, Any], dropout: float = 0.0) -> nn.Module:
    """Build a registered architecture for images of ``in_channels`` × ``image_size``².

    ``image_size`` is the side of the images the model receives, after any resize to
    ``input_resolution``.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; registered: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch].build(in_channels, num_classes, image_size, dropout=dropout, **knobs)


def input_resolution(arch: str, knobs: dict[str, Any], native_size: int) -> int:
    """Return the image side that ``arch`` with these knobs expects, given the data's native side."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; registered: {', '.join(ARCHITECTURES)}")
    resolution = ARCHITECTURES[arch].resolution
    return native_size if resolution is None else resolution(knobs, native_size)


def count_parameters(model: nn.Module) -> int:
    """Return the number of trainable and frozen parameters."""
    return sum(parameter.numel() for parameter in model.parameters())


def flops_per_image(model: nn.Module, in_channels: int, image_size: int) -> int:
    """Count the forward FLOPs of one ``in_channels`` × ``image_size``² image in eval mode.

    Uses torch's FlopCounterMode, which counts 2 FLOPs per multiply-add and covers
    convolutions and matrix products only (not batch norm, activations or pooling).
    Every submodule's training flag is restored afterwards.
    """
    training = {module: module.training for module in model.modules()}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    image = torch.zeros(1, in_channels, image_size, image_size, device=device)
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        for module, flag in training.items():
            module.training = flag
    return int(counter.get_total_flops())
