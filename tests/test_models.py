"""Model registry: layer arithmetic, block shapes, FLOP and parameter counts, transfer learning.

Expected figures are computed by hand or taken from torchvision itself, never from the
code under test.
"""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline import models
from pipeline.models import (
    ARCHITECTURES,
    BasicBlock,
    DepthwiseSeparableConv,
    InvertedResidual,
    build_model,
    compound_scaling,
    conv_output_size,
    count_parameters,
    flops_per_image,
    hub_checkpoint_path,
    input_resolution,
    load_pretrained_state,
)

ALPHA, BETA, GAMMA = 1.2, 1.1, 1.15  # Tan & Le 2019, EfficientNet


def _conv_flops(module: nn.Module, x: torch.Tensor) -> int:
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_flop_counts()["Global"][torch.ops.aten.convolution]


def _train_one_step(model: nn.Module, in_channels: int, image_size: int) -> tuple[torch.Tensor, bool]:
    """Run one Adam step on a batch of 2 and return the loss and whether any parameter changed.

    Adam is the training loop's default. Plain SGD is avoided on purpose: batch norm over
    the 2 values of a 1×1 map can give gradients of 1e7 and more, and one SGD step then
    overflows the weights.
    """
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, in_channels, image_size, image_size, generator=generator)
    labels = torch.tensor([0, 1])
    groups = model.param_groups(1e-3) if hasattr(model, "param_groups") else model.parameters()
    optimizer = torch.optim.Adam(groups, lr=1e-3)
    before = [parameter.detach().clone() for parameter in model.parameters()]

    model.train()
    loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

    changed = any(not torch.equal(old, new) for old, new in zip(before, model.parameters()))
    return loss.detach(), changed


# ---------------------------------------------------------------------------
# Layer arithmetic
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "f", "p", "s", "expected"), [
    (32, 3, 1, 2, 16),
    (7, 3, 0, 2, 3),
    (32, 3, 1, 1, 32),
    (8, 2, 0, 2, 4),
    (224, 7, 3, 2, 112),
    (5, 5, 0, 1, 1),
    (1, 3, 1, 2, 1),
])
def test_conv_output_size_hand_cases(n, f, p, s, expected):
    assert conv_output_size(n, f, p, s) == expected


def test_conv_output_size_rejects_oversized_kernel():
    with pytest.raises(ValueError, match="f=3"):
        conv_output_size(1, 3, 0, 1)
    with pytest.raises(ValueError, match="s=0"):
        conv_output_size(8, 3, 1, 0)


def test_downsampling_stops_at_one_pixel():
    assert models.downsampling_stride(2) == 2
    assert models.downsampling_stride(1) == 1
    assert models.downsampling_stride(1, stride=2, kernel_size=2, padding=0) == 1

    # Four ResNet stages on 8×8 input: 8 → 4 → 2 → 1.
    model = build_model("resnet", 1, 10, 8, {"stages": 4, "blocks": 1, "base_width": 4})
    features = model.layers(model.stem(torch.zeros(2, 1, 8, 8)))
    assert features.shape == (2, 32, 1, 1)


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------

def test_basic_block_shapes():
    x = torch.randn(2, 16, 32, 32)

    same = BasicBlock(16, 16, stride=1)
    assert same(x).shape == (2, 16, 32, 32)
    assert isinstance(same.shortcut, nn.Identity)

    down = BasicBlock(16, 32, stride=2)
    assert down(x).shape == (2, 32, 16, 16)
    projection = down.shortcut[0]
    assert isinstance(projection, nn.Conv2d)
    assert projection.kernel_size == (1, 1)
    assert projection.stride == (2, 2)

    wider = BasicBlock(16, 32, stride=1)
    assert wider(x).shape == (2, 32, 32, 32)
    assert not isinstance(wider.shortcut, nn.Identity)


def test_depthwise_separable_shapes():
    x = torch.randn(2, 32, 32, 32)
    assert DepthwiseSeparableConv(32, 64, stride=1)(x).shape == (2, 64, 32, 32)
    assert DepthwiseSeparableConv(32, 64, stride=2)(x).shape == (2, 64, 16, 16)

    depthwise = DepthwiseSeparableConv(32, 64).depthwise[0]
    assert depthwise.groups == 32
    assert depthwise.kernel_size == (3, 3)


@pytest.mark.parametrize(("in_channels", "out_channels", "stride", "shape", "has_skip"), [
    (16, 16, 1, (2, 16, 32, 32), True),
    (16, 24, 1, (2, 24, 32, 32), False),
    (16, 16, 2, (2, 16, 16, 16), False),
    (16, 24, 2, (2, 24, 16, 16), False),
])
def test_inverted_residual_shapes_and_skip(in_channels, out_channels, stride, shape, has_skip):
    block = InvertedResidual(in_channels, out_channels, stride, expand_ratio=6)
    x = torch.randn(2, in_channels, 32, 32)
    assert block(x).shape == shape
    assert block.has_skip is has_skip

    # With the projection's batch norm zeroed, the residual branch outputs 0, so the
    # block returns its input only if it adds the skip connection.
    nn.init.zeros_(block.project[1].weight)
    nn.init.zeros_(block.project[1].bias)
    block.eval()
    with torch.no_grad():
        out = block(x)
    if has_skip:
        assert torch.equal(out, x)
    else:
        assert torch.count_nonzero(out) == 0


def test_inverted_residual_projection_is_linear():
    block = InvertedResidual(16, 16, 1, expand_ratio=6)
    assert len(block.project) == 2  # 1×1 conv and batch norm, no activation
    assert isinstance(block.expand[2], nn.ReLU6)
    assert isinstance(block.depthwise[2], nn.ReLU6)
    assert isinstance(InvertedResidual(16, 16, 1, expand_ratio=1).expand, nn.Identity)


def test_depthwise_separable_costs_fraction():
    m, n = 32, 64
    x = torch.randn(1, m, 16, 16)
    standard = _conv_flops(nn.Conv2d(m, n, 3, padding=1, bias=False), x)
    separable = _conv_flops(DepthwiseSeparableConv(m, n), x)

    assert standard == 2 * m * n * 9 * 16 * 16  # 2 FLOPs per multiply-add
    expected_ratio = 1 / n + 1 / 9
    assert separable / standard == pytest.approx(expected_ratio, rel=0.02)


# ---------------------------------------------------------------------------
# EfficientNet compound scaling
# ---------------------------------------------------------------------------

# (phi, depth, width, resolution) for base depth 3, width 40, resolution 32, worked out by
# hand: ceil(3 × 1.2**φ), round(40 × 1.1**φ), round(32 × 1.15**φ).
HAND_SCALED = [
    (0, 3, 40, 32),
    (1, 4, 44, 37),
    (2, 5, 48, 42),
    (3, 6, 53, 49),
]


@pytest.mark.parametrize(("phi", "depth", "width", "resolution"), HAND_SCALED)
def test_compound_scaling_hand_values(phi, depth, width, resolution):
    assert compound_scaling(phi, 3, 40, 32) == (depth, width, resolution)
    assert compound_scaling(phi, 3, 40, 32) == (
        math.ceil(3 * ALPHA**phi), round(40 * BETA**phi), round(32 * GAMMA**phi)
    )
    assert input_resolution("efficientnet", {"phi": phi}, 32) == resolution


def test_compound_scaling_constants_double_flops():
    assert ALPHA * BETA**2 * GAMMA**2 == pytest.approx(2.0, rel=0.05)
    assert (models.EFFICIENTNET_ALPHA, models.EFFICIENTNET_BETA, models.EFFICIENTNET_GAMMA) == (ALPHA, BETA, GAMMA)


@pytest.mark.parametrize("phi", [0, 1, 2, 3])
def test_efficientnet_depth_and_width_follow_phi(phi):
    model = build_model("efficientnet", 3, 10, 32, {"phi": phi})
    blocks = [module for module in model.modules() if isinstance(module, InvertedResidual)]
    expected_blocks = sum(math.ceil(n * ALPHA**phi) for _, _, _, n, _ in models.EFFICIENTNET_BASE)
    assert len(blocks) == expected_blocks
    last_channels = models.EFFICIENTNET_BASE[-1][2]
    assert blocks[-1].project[0].out_channels == round(last_channels * BETA**phi)


def test_efficientnet_flops_grow_about_2_to_phi():
    flops = []
    for phi in range(4):
        resolution = round(32 * GAMMA**phi)
        model = build_model("efficientnet", 3, 10, resolution, {"phi": phi})
        flops.append(flops_per_image(model, 3, resolution))
    for phi in range(1, 4):
        assert flops[phi] / flops[0] == pytest.approx(2**phi, rel=0.20), f"phi={phi}: {flops}"


# ---------------------------------------------------------------------------
# Every architecture trains and evaluates
# ---------------------------------------------------------------------------

SMALL_KNOBS = {
    "small_cnn": {"depth": 2, "width": 8},
    "resnet": {"stages": 4, "blocks": 1, "base_width": 8},
    "inception": {"stages": 3, "blocks": 1, "width": 4},
    "mobilenet_v1": {"width_mult": 0.25},
    "mobilenet_v2": {"width_mult": 0.25, "expand_ratio": 2},
    "efficientnet": {"phi": 3},
    "resnet18_transfer": {"mode": "frozen"},
}

CASES = [
    (arch, knobs, in_channels, native)
    for arch in ARCHITECTURES
    for knobs in ({}, SMALL_KNOBS[arch])
    for in_channels, native in ((1, 8), (3, 32))
]


def test_every_architecture_is_covered():
    assert set(SMALL_KNOBS) == set(ARCHITECTURES)


@pytest.mark.parametrize(("arch", "knobs", "in_channels", "native"), CASES)
def test_architecture_trains_and_evaluates(arch, knobs, in_channels, native):
    torch.manual_seed(0)
    size = input_resolution(arch, knobs, native)
    model = build_model(arch, in_channels, 10, size, knobs, dropout=0.2)
    assert any(isinstance(module, nn.Dropout) and module.p == 0.2 for module in model.modules())

    loss, changed = _train_one_step(model, in_channels, size)
    assert torch.isfinite(loss)
    assert changed

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, in_channels, size, size))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_efficientnet_phi_3_input_size():
    assert input_resolution("efficientnet", {"phi": 3}, 32) == 49
    assert input_resolution("efficientnet", {"phi": 3}, 8) == 12
    assert input_resolution("resnet", {}, 32) == 32


def test_registry_defaults_within_range():
    for arch, architecture in ARCHITECTURES.items():
        for name, knob in architecture.knobs.items():
            if knob.kind == "str":
                assert knob.default in knob.allowed, f"{arch}.{name}"
            else:
                assert knob.minimum <= knob.default <= knob.maximum, f"{arch}.{name}"


def test_small_cnn_knobs_unchanged():
    knobs = ARCHITECTURES["small_cnn"].knobs
    assert set(knobs) == {"depth", "width"}
    assert knobs["depth"].default == 2
    assert knobs["width"].default == 32


def test_flops_per_image_restores_mode():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Dropout(0.5))
    model.train()
    assert flops_per_image(model, 3, 32) == 2 * 3 * 8 * 9 * 32 * 32
    assert all(module.training for module in model.modules())

    model.eval()
    flops_per_image(model, 3, 32)
    assert not any(module.training for module in model.modules())


# ---------------------------------------------------------------------------
# Transfer learning from ResNet-18
# ---------------------------------------------------------------------------

def test_resnet18_parameter_counts():
    assert count_parameters(torchvision.models.resnet18(weights=None)) == 11_689_512
    assert count_parameters(torchvision.models.resnet18(weights=None, num_classes=10)) == 11_181_642
    assert count_parameters(build_model("resnet18_transfer", 3, 10, 32, {})) == 11_181_642


@pytest.fixture
def resnet18_file(tmp_path: Path) -> tuple[Path, nn.Module]:
    """Save a seeded 1000-class torchvision ResNet-18 and return the file and the network."""
    torch.manual_seed(1234)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_pretrained_state_lands_in_backbone(resnet18_file):
    path, reference = resnet18_file
    state = load_pretrained_state(path)
    torch.manual_seed(0)
    model = build_model("resnet18_transfer", 3, 10, 32, {"pretrained": state})
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, reference.bn1.running_var)
    assert model.fc.out_features == 10

    torch.manual_seed(0)
    untouched = build_model("resnet18_transfer", 3, 10, 32, {})
    assert not torch.equal(untouched.backbone.conv1.weight, reference.conv1.weight)


def test_pretrained_without_batch_counters_loads(resnet18_file):
    path, reference = resnet18_file
    state = load_pretrained_state(path)
    for key in [key for key in state if key.endswith("num_batches_tracked")]:
        del state[key]
    model = build_model("resnet18_transfer", 3, 10, 32, {"pretrained": state})
    assert torch.equal(model.backbone.bn1.running_mean, reference.bn1.running_mean)


def test_pretrained_wrong_key_raises(resnet18_file):
    path, _ = resnet18_file
    state = load_pretrained_state(path)
    state["conv1.weights"] = state.pop("conv1.weight")
    with pytest.raises(ValueError, match=r"missing keys: conv1\.weight") as error:
        build_model("resnet18_transfer", 3, 10, 32, {"pretrained": state})
    assert "unexpected keys: conv1.weights" in str(error.value)


def test_pretrained_wrong_shape_raises(resnet18_file):
    path, _ = resnet18_file
    state = load_pretrained_state(path)
    state["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    with pytest.raises(ValueError, match=r"conv1\.weight \(64, 1, 7, 7\)"):
        build_model("resnet18_transfer", 3, 10, 32, {"pretrained": state})


def test_load_pretrained_state_errors_name_path(tmp_path):
    missing = tmp_path / "absent.pth"
    with pytest.raises(FileNotFoundError, match="absent.pth"):
        load_pretrained_state(missing)

    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pth"):
        load_pretrained_state(garbage)

    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, wrapped)
    with pytest.raises(ValueError, match="wrapped.pth"):
        load_pretrained_state(wrapped)


def test_hub_checkpoint_path_without_download():
    expected = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_checkpoint_path() == expected


def test_transfer_builds_without_download(monkeypatch):
    def fail_download(*args, **kwargs):
        raise AssertionError("the transfer model tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fail_download)
    build_model("resnet18_transfer", 3, 10, 32, {})


def test_frozen_trains_head_only():
    model = build_model("resnet18_transfer", 3, 10, 32, {"mode": "frozen"})
    assert not any(parameter.requires_grad for parameter in model.backbone.parameters())
    assert all(parameter.requires_grad for parameter in model.fc.parameters())

    groups = model.param_groups(0.01)
    assert len(groups) == 1
    assert groups[0]["lr"] == 0.01
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.fc.parameters()}

    backbone_before = {name: value.clone() for name, value in model.backbone.state_dict().items()}
    head_before = model.fc.weight.detach().clone()
    _train_one_step(model, 3, 32)
    for name, value in model.backbone.state_dict().items():
        assert torch.equal(value, backbone_before[name]), name
    assert not torch.equal(model.fc.weight, head_before)
    assert not model.backbone.training

    flops_per_image(model, 3, 32)
    assert model.training
    assert not model.backbone.training


def test_finetune_param_groups_scale_lr():
    model = build_model("resnet18_transfer", 3, 10, 32, {"mode": "finetune", "backbone_lr_scale": 0.25})
    assert all(parameter.requires_grad for parameter in model.parameters())

    backbone, head = model.param_groups(0.01)
    assert backbone["lr"] == pytest.approx(0.0025)
    assert head["lr"] == 0.01
    assert {id(p) for p in backbone["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in head["params"]} == {id(p) for p in model.fc.parameters()}
    assert len(backbone["params"]) + len(head["params"]) == len(list(model.parameters()))


def test_transfer_takes_one_channel():
    model = build_model("resnet18_transfer", 1, 10, 8, {})
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 10)


def test_transfer_rejects_bad_settings():
    with pytest.raises(ValueError, match="in_channels=4"):
        build_model("resnet18_transfer", 4, 10, 32, {})
    with pytest.raises(ValueError, match="'partial'"):
        build_model("resnet18_transfer", 3, 10, 32, {"mode": "partial"})
