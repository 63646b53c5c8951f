"""Training loop: batching, divergence and a model that learns digits."""

import numpy as np
import pytest
import torch

from pipeline.data import PreparedData, load_images, prepare, split_dataset
from pipeline.evaluate import measure_latency
from pipeline.models import build_model
from pipeline.spec import DataSpec, Fractions
from pipeline.train import Diverged, TrainConfig, batch_slices, train_model


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
