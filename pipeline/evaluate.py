"""Evaluate stage: dev metrics from one batched pass, and per-image inference latency."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from pipeline.metrics import Metrics, classification_metrics
from pipeline.train import predict


@dataclass(frozen=True)
class Predictions:
    """Model outputs on one split, kept so later stages need not run the model again."""

    probabilities: np.ndarray  # N×K softmax outputs
    labels: np.ndarray  # true labels

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor) -> Predictions:
        """Keep the softmax of ``logits`` with the true ``labels``."""
        return cls(torch.softmax(logits.float().cpu(), dim=1).numpy(), labels.cpu().numpy())

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return self.probabilities.max(axis=1)


@dataclass(frozen=True)
class Latency:
    """Per-image inference latency measured with a monotonic clock after warm-up."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    batch_size: int
    repeats: int
    device: str
    threads: int


def predictions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Predictions:
    """Run the model once over ``images`` and keep the softmax outputs."""
    return Predictions.from_logits(predict(model, images, device), labels)


def evaluate(outputs: Predictions, num_classes: int, zero_division: float = 0.0) -> Metrics:
    """Score predictions over the full label set ``0 .. num_classes - 1``."""
    return classification_metrics(outputs.labels, outputs.predicted, list(range(num_classes)), zero_division)


@torch.inference_mode()
def measure_latency(model: nn.Module, images: torch.Tensor, device: torch.device,
                    batch_size: int = 1, warmup: int = 10, repeats: int = 100) -> Latency:
    """Time ``repeats`` forward passes of ``batch_size`` images and report per-image times.

    Inputs are copied to the device before timing, so the figure is model compute
    only. On CUDA each pass is bracketed by synchronization, since kernels run
    asynchronously and the clock would otherwise stop early.
    """
    model.eval().to(device)
    count = max(1, min(batch_size, len(images)))
    batches = [images[(i * count) % len(images):][:count].to(device) for i in range(warmup + repeats)]
    cuda = device.type == "cuda"
    timings = []
    for i, batch in enumerate(batches):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        model(batch)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            timings.append((time.perf_counter() - start) * 1000.0 / len(batch))
    values = np.asarray(timings)
    return Latency(
        p50_ms=float(np.percentile(values, 50)),
        p95_ms=float(np.percentile(values, 95)),
        mean_ms=float(values.mean()),
        batch_size=count,
        repeats=repeats,
        device=str(device),
        threads=torch.get_num_threads(),
    )
