"""Baseline stage: two quick classifiers that every trial is read against.

The majority class shows what a model that learned nothing scores; a linear
classifier on per-channel mean colour shows what the crudest image feature gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from pipeline.data import ImageData, Split
from pipeline.metrics import Metrics, classification_metrics


@dataclass(frozen=True)
class BaselineResult:
    """Dev metrics of each baseline, keyed by baseline name."""

    dev: dict[str, Metrics]


def run_baseline(data: ImageData, split: Split) -> BaselineResult:
    """Fit both baselines on the train split and score them on dev."""
    labels = data.labels.numpy()
    train_y, dev_y = labels[split.train], labels[split.dev]
    classes = list(range(data.num_classes))

    majority = int(np.bincount(train_y, minlength=data.num_classes).argmax())
    majority_pred = np.full_like(dev_y, majority)

    features = mean_colour(data.images)
    model = LogisticRegression(max_iter=1000)
    model.fit(features[split.train], train_y)
    linear_pred = model.predict(features[split.dev])

    return BaselineResult(dev={
        "majority": classification_metrics(dev_y, majority_pred, classes),
        "mean_colour_linear": classification_metrics(dev_y, linear_pred, classes),
    })


def mean_colour(images: torch.Tensor) -> np.ndarray:
    """Return the per-channel mean pixel value of each image, in [0, 1]."""
    return (images.float() / 255.0).mean(dim=(2, 3)).numpy()
