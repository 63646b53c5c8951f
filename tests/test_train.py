"""Training loop: batching, divergence and a model that learns digits."""

import shutil

import numpy as np
import pytest
import torch

from pipeline.data import PreparedData, load_images, prepare, split_dataset
from pipeline.evaluate import measure_latency
from pipeline.models import build_model
from pipeline.spec import DataSpec, Fractions
from pipeline.train import (
    Diverged,
    TrainConfig,
    autocast_dtype,
    batch_slices,
    inference_copy,
    make_optimizer,
    predict,
    random_crop,
    random_flip,
    train_model,
)


def test_short_last_batch_is_merged():
    slices = batch_slices(65, 32)
    assert [s.stop - s.start for s in slices] == [32, 33]
    assert [s.stop - s.start for s in batch_slices(67, 32)] == [32, 35]
    assert [s.stop - s.start for s in batch_slices(68, 32)] == [32, 32, 4]
    assert [s.stop - s.start for s in batch_slices(64, 32)] == [32, 32]
    assert [s.stop - s.start for s in batch_slices(1, 32)] == [1]


def _tiny_data(count=33):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(count, 1, 8, 8, generator=generator)
    y = torch.arange(count) % 3
    tensors = {"train": x, "dev": x[:6]}
    return PreparedData(tensors, {"train": y, "dev": y[:6]}, {}, None)


def test_last_batch_of_one_trains():
    model = build_model("small_cnn", 1, 3, 8, {"depth": 1, "width": 4})
    result = train_model(model, _tiny_data(33), TrainConfig(batch_size=16, epochs=1), torch.device("cpu"))
    assert result.images_seen == 33


def test_nan_loss_raises_diverged():
    model = build_model("small_cnn", 1, 3, 8, {"depth": 1, "width": 4})
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    with pytest.raises(Diverged, match="nan"):
        train_model(model, _tiny_data(), TrainConfig(epochs=2), torch.device("cpu"))


def test_small_cnn_learns_digits():
    data = load_images(DataSpec(source="digits"))
    split = split_dataset(data.labels, Fractions(), seed=0)
    prepared = prepare(data, split)
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10, 8, {"depth": 2, "width": 16})
    epochs = []
    result = train_model(model, prepared, TrainConfig(lr=5e-3, epochs=8, batch_size=64), torch.device("cpu"),
                         on_epoch=epochs.append)
    assert len(result.history) == 8 == len(epochs)
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.history[-1].dev_accuracy > 0.95


def test_latency_percentiles_ordered():
    model = build_model("small_cnn", 1, 10, 8, {"depth": 1, "width": 4})
    latency = measure_latency(model, torch.randn(20, 1, 8, 8), torch.device("cpu"), warmup=2, repeats=20)
    assert 0 < latency.p50_ms <= latency.p95_ms
    assert latency.device == "cpu"
    assert latency.batch_size == 1
    assert latency.repeats == 20


def test_training_is_reproducible():
    data = _tiny_data(40)
    results = []
    for _ in range(2):
        torch.manual_seed(1)
        model = build_model("small_cnn", 1, 3, 8, {"depth": 1, "width": 4})
        results.append(train_model(model, data, TrainConfig(epochs=2, seed=5), torch.device("cpu")))
    assert results[0].history[-1].train_loss == results[1].history[-1].train_loss
    assert np.array_equal(results[0].history[-1].dev_predicted, results[1].history[-1].dev_predicted)


def test_random_crop_matches_per_image_slices():
    images = torch.arange(5 * 2 * 6 * 7, dtype=torch.float32).view(5, 2, 6, 7)
    padding = 3
    cropped = random_crop(images, padding, torch.Generator().manual_seed(4))
    # The same draws, replayed: one (dy, dx) pair per image in [0, 2 * padding].
    offsets = torch.randint(0, 2 * padding + 1, (2, 5), generator=torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    for i in range(5):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        assert torch.equal(cropped[i], padded[i, :, dy:dy + 6, dx:dx + 7])
    assert cropped.shape == images.shape
    assert len({(int(a), int(b)) for a, b in offsets.T}) > 1  # the offsets differ between images


def test_random_crop_zero_padding_is_identity():
    images = torch.randn(3, 1, 8, 8)
    assert random_crop(images, 0, torch.Generator()) is images


def test_random_flip_flips_some_images():
    images = torch.arange(64, dtype=torch.float32).view(16, 1, 1, 4)
    flipped = random_flip(images, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], images[i]) for i in range(16)]
    mirrored = [torch.equal(flipped[i], images[i].flip(-1)) for i in range(16)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 0 < sum(mirrored) < 16


def test_crop_augmentation_trains_digits():
    data = load_images(DataSpec(source="digits"))
    prepared = prepare(data, split_dataset(data.labels, Fractions(), seed=0))
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10, 8, {"depth": 2, "width": 16})
    config = TrainConfig(lr=5e-3, epochs=6, batch_size=64, augment_crop=1, augment_flip=False)
    result = train_model(model, prepared, config, torch.device("cpu"))
    assert result.history[-1].dev_accuracy > 0.9


def test_dev_logits_match_fresh_prediction():
    data = _tiny_data(40)
    model = build_model("small_cnn", 1, 3, 8, {"depth": 1, "width": 4})
    result = train_model(model, data, TrainConfig(epochs=2, batch_size=8), torch.device("cpu"))
    fresh = predict(inference_copy(model), data.x["dev"], torch.device("cpu"))
    assert torch.equal(result.dev_logits, fresh)
    unfolded = predict(model, data.x["dev"], torch.device("cpu"))
    torch.testing.assert_close(result.dev_logits, unfolded, atol=1e-5, rtol=1e-5)
    assert np.array_equal(result.history[-1].dev_predicted, fresh.argmax(1).numpy())
    assert 0 < result.dev_seconds < result.seconds


@pytest.mark.parametrize("arch, knobs, size, pairs", [
    ("small_cnn", {"depth": 2, "width": 8}, 8, 4),  # two conv-BN-ReLU layers per stage
    ("mobilenet_v2", {"width_mult": 0.5}, 32, "all"),  # every BN follows its conv in a Sequential
    ("resnet", {}, 32, 3),  # stem and downsampling shortcuts; the blocks keep bn1 and bn2 as attributes
])
def test_inference_copy_folds_batch_norm(arch, knobs, size, pairs):
    torch.manual_seed(0)
    model = build_model(arch, 3, 10, size, knobs)
    x = torch.randn(24, 3, size, size) * 2 + 0.5
    with torch.no_grad():
        for _ in range(3):  # move the running statistics away from 0 and 1
            model(x)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    norms = sum(isinstance(module, torch.nn.BatchNorm2d) for module in model.modules())

    folded = inference_copy(model)

    left = sum(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    assert left == (0 if pairs == "all" else norms - pairs)
    assert model.training and not folded.training
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-4)


def test_inference_copy_without_batch_norm_is_the_model():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())
    assert inference_copy(model) is model


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_optimizer_matches_default(name):
    torch.manual_seed(0)
    fused_model = build_model("small_cnn", 1, 10, 8, {"depth": 1, "width": 8})
    plain_model = build_model("small_cnn", 1, 10, 8, {"depth": 1, "width": 8})
    plain_model.load_state_dict(fused_model.state_dict())
    config = TrainConfig(optimizer=name, lr=1e-2, weight_decay=1e-3)
    fused = make_optimizer(fused_model, config)
    arguments = {"lr": 1e-2, "weight_decay": 1e-3}
    if name == "sgd":
        plain = torch.optim.SGD(plain_model.parameters(), momentum=0.9, nesterov=True, **arguments)
    else:
        plain = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name](plain_model.parameters(), **arguments)
    x, y = torch.randn(16, 1, 8, 8), torch.arange(16) % 10

    for model, optimizer in ((fused_model, fused), (plain_model, plain)):
        for _ in range(3):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    assert fused.defaults["fused"] is True
    for fused_value, plain_value in zip(fused_model.state_dict().values(), plain_model.state_dict().values()):
        torch.testing.assert_close(fused_value, plain_value, atol=1e-5, rtol=1e-4)


def test_no_autocast_on_cpu():
    assert autocast_dtype(torch.device("cpu"), amp=True) is None
    assert autocast_dtype(torch.device("cuda"), amp=False) is None


@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_keeps_weights_in_model():
    torch.manual_seed(0)
    data = _tiny_data(48)
    model = build_model("small_cnn", 1, 3, 8, {"depth": 1, "width": 4})
    before = model.classifier.weight.detach().clone()
    result = train_model(model, data, TrainConfig(epochs=2, batch_size=16, compile=True), torch.device("cpu"))
    assert not torch.equal(before, model.classifier.weight)
    assert all(not key.startswith("_orig_mod") for key in model.state_dict())
    assert np.isfinite(result.history[-1].train_loss)
    assert result.dev_logits is None  # compiled outputs may differ in the last bits, so evaluation reruns dev
    eager = predict(model, data.x["dev"], torch.device("cpu")).argmax(1).numpy()
    assert (eager == result.history[-1].dev_predicted).mean() >= 5 / 6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_channels_last_bf16_training():
    data = load_images(DataSpec(source="digits"))
    prepared = prepare(data, split_dataset(data.labels, Fractions(), seed=0))
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("small_cnn", 1, 10, 8, {"depth": 2, "width": 16})
    result = train_model(model, prepared, TrainConfig(lr=5e-3, epochs=6, batch_size=64), device)
    conv = next(module for module in model.modules() if isinstance(module, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.dtype == torch.float32  # autocast keeps float32 master weights
    assert result.dev_logits is None  # bf16 dev logits are not reused for the float32 evaluation
    assert result.history[-1].dev_accuracy > 0.9
