"""Data sets, model and training loops that the throughput and efficiency benchmarks share.

Every loop trains the same model, the pipeline's 6-layer plain CNN (``small_cnn`` with
depth 3 and width 32). All use Adam at the same learning rate and batch size and start
from the same seeded weights, so the loops differ only in how batches reach the model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.data import Normalization, PreparedData, load_source, prepare, split_dataset
from pipeline.models import build_model
from pipeline.spec import Fractions
from pipeline.train import TrainConfig, TrainResult, train_model

ARCH = "small_cnn"
KNOBS = {"depth": 3, "width": 32}
LEARNING_RATE = 1e-3
BATCH_SIZE = 64
MODEL_SEED = 0
SPLIT_SEED = 0


@dataclass(frozen=True)
class Workload:
    """One data set in the two forms the loops read: normalized tensors and raw images.

    ``images[i]`` is the unnormalized form of ``prepared.x["train"][i]``: a PIL image or
    a uint8 C×H×W tensor, which the per-image DataLoader loop transforms itself.
    """

    name: str
    prepared: PreparedData  # "train" and "dev" parts, as the pipeline's prepare() returns them
    images: Sequence[Any]
    channels: int
    num_classes: int
    image_size: int
    note: str = ""

    @property
    def train_count(self) -> int:
        return len(self.prepared.y["train"])

    @property
    def dev_count(self) -> int:
        return len(self.prepared.y["dev"])

    def truncated(self, count: int) -> Workload:
        """Return the workload with only its first ``count`` training images, for warm-up runs."""
        x = {**self.prepared.x, "train": self.prepared.x["train"][:count]}
        y = {**self.prepared.y, "train": self.prepared.y["train"][:count]}
        prepared = PreparedData(x, y, self.prepared.indices, self.prepared.stats)
        return replace(self, prepared=prepared, images=self.images[:count])


def digits_workload() -> Workload:
    """Load scikit-learn's digits and split them as a study does (70 % train, 10 % dev)."""
    data = load_source("digits", None)
    split = split_dataset(data.labels, Fractions(), SPLIT_SEED, data.fingerprint)
    prepared = prepare(data, split, ("train", "dev"))
    images = data.images[torch.from_numpy(split.train)]
    return Workload("digits", prepared, images, data.channels, data.num_classes, data.image_size)


def cifar_workload(root: Path, per_class: int) -> Workload:
    """Load the first ``per_class`` images of each class folder under ``root`` and split them as a study does.

    The split keeps 70 % of them for training, so 286 per class gives 2,000 training
    and 288 dev images. The DataLoader loop gets the same training images as PIL images,
    decoded again from their files and kept in memory, so no loop pays for JPEG decoding.
    """
    from PIL import Image

    data = load_source("imagefolder", root, channels=3)
    labels = data.labels.numpy()
    chosen = np.sort(np.concatenate([np.flatnonzero(labels == label)[:per_class] for label in np.unique(labels)]))
    subset = replace(data, images=data.images[torch.from_numpy(chosen)], labels=data.labels[torch.from_numpy(chosen)],
                     sources=[data.sources[index] for index in chosen])
    split = split_dataset(subset.labels, Fractions(), SPLIT_SEED, subset.fingerprint)
    prepared = prepare(subset, split, ("train", "dev"))
    images = []
    for index in split.train:
        with Image.open(subset.sources[index]) as image:
            images.append(image.convert("RGB"))
    return Workload("CIFAR-10 32 px", prepared, images, 3, subset.num_classes, subset.image_size)


def random_workload(train_count: int, dev_count: int, channels: int = 3, size: int = 32,
                    num_classes: int = 10) -> Workload:
    """Return standard-normal images with random labels, for when the CIFAR-10 folder is missing."""
    generator = torch.Generator().manual_seed(SPLIT_SEED)
    x = {part: torch.randn(count, channels, size, size, generator=generator)
         for part, count in (("train", train_count), ("dev", dev_count))}
    y = {part: torch.randint(0, num_classes, (count,), generator=generator)
         for part, count in (("train", train_count), ("dev", dev_count))}
    indices = {part: np.arange(count) for part, count in (("train", train_count), ("dev", dev_count))}
    stats = Normalization((0.0,) * channels, (1.0,) * channels)
    return Workload("random 32 px", PreparedData(x, y, indices, stats), [], channels, num_classes, size,
                    note="random tensors, because the CIFAR-10 folder is missing")


def new_model(workload: Workload, image_size: int | None = None) -> nn.Module:
    """Build the benchmark model with the same seeded weights on every call."""
    torch.manual_seed(MODEL_SEED)
    return build_model(ARCH, workload.channels, workload.num_classes, image_size or workload.image_size,
                       KNOBS, dropout=0.0)


# ---------------------------------------------------------------------------
# Training loops. Each builds its model before the clock starts and returns the
# seconds it spent training.


def run_pipeline(workload: Workload, epochs: int, batch_size: int = BATCH_SIZE) -> tuple[float, TrainResult]:
    """Time the pipeline's train stage as a trial calls it, dev scoring after every epoch included.

    The settings are a trial's defaults (Adam, cosine schedule, no augmentation), so
    the clock also covers the optimizer set-up and the schedule steps that a trial
    pays. Returns the seconds and the stage's result.
    """
    model = new_model(workload)
    config = TrainConfig(optimizer="adam", lr=LEARNING_RATE, batch_size=batch_size, epochs=epochs, seed=MODEL_SEED)
    start = time.perf_counter()
    result = train_model(model, workload.prepared, config, torch.device("cpu"))
    return time.perf_counter() - start, result


def time_pipeline(workload: Workload, epochs: int, batch_size: int = BATCH_SIZE) -> float:
    """Return the seconds of ``run_pipeline``."""
    return run_pipeline(workload, epochs, batch_size)[0]


def time_minimal_loop(workload: Workload, epochs: int, batch_size: int = BATCH_SIZE) -> float:
    """Time a bare loop over the pre-loaded normalized tensors: shuffle, slice, step."""
    model = new_model(workload)
    x, y = workload.prepared.x["train"], workload.prepared.y["train"]
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(MODEL_SEED)
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for first in range(0, len(x), batch_size):
            index = order[first:first + batch_size]
            loss = loss_fn(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


class ImageDataset(Dataset):
    """Raw images with labels, transformed one image at a time as a torchvision Dataset does."""

    def __init__(self, images: Sequence[Any], labels: torch.Tensor, transform: Any) -> None:
        self.images = images
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), self.labels[index]


def image_transform(stats: Normalization, resize: int | None = None) -> Any:
    """Return the usual per-image transforms.v2 chain, with a bilinear resize first when ``resize`` is given."""
    from torchvision.transforms import v2

    steps = [v2.Resize(resize, antialias=True)] if resize else []
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(stats.mean), list(stats.std))]
    return v2.Compose(steps)


def image_loader(workload: Workload, workers: int, batch_size: int = BATCH_SIZE,
                 resize: int | None = None) -> DataLoader:
    """Wrap the workload's raw training images in a shuffling DataLoader with per-image transforms."""
    dataset = ImageDataset(workload.images, workload.prepared.y["train"],
                           image_transform(workload.prepared.stats, resize))
    generator = torch.Generator().manual_seed(MODEL_SEED)
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=generator)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
               inputs: torch.Tensor, targets: torch.Tensor) -> None:
    loss = loss_fn(model(inputs), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def time_dataloader_loop(workload: Workload, epochs: int, workers: int, batch_size: int = BATCH_SIZE) -> float:
    """Time the per-image DataLoader loop, whose worker processes start anew each epoch, as by default."""
    model = new_model(workload)
    loader = image_loader(workload, workers, batch_size)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(epochs):
        for inputs, targets in loader:
            train_step(model, optimizer, loss_fn, inputs, targets)
    return time.perf_counter() - start


def time_resized_batches(workload: Workload, sizes: tuple[int, ...], batches: int, warmup: int,
                         batch_size: int = BATCH_SIZE) -> dict[int, list[float]]:
    """Time single batches of the DataLoader loop with the images resized to each of ``sizes`` pixels.

    Each size gets its own model, built for that input size, and its own loader. The
    sizes take turns batch by batch, so a slow spell of a shared CPU hits all of them.
    Each time covers fetching the batch (the per-image resize and transforms) and the
    training step. The first ``warmup`` batches of each size are run but not returned.
    """
    states = {}
    for size in sizes:
        model = new_model(workload, image_size=size)
        resize = None if size == workload.image_size else size
        loader = image_loader(workload, workers=0, batch_size=batch_size, resize=resize)
        optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
        model.train()
        states[size] = (model, optimizer, iter(loader))
    loss_fn = nn.CrossEntropyLoss()
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    for _ in range(warmup + batches):
        for size, (model, optimizer, batch_iterator) in states.items():
            start = time.perf_counter()
            inputs, targets = next(batch_iterator)
            train_step(model, optimizer, loss_fn, inputs, targets)
            seconds[size].append(time.perf_counter() - start)
    return {size: times[warmup:] for size, times in seconds.items()}
