"""Error analysis stage: tag each misclassified dev image with the categories that fit it.

Categories may overlap, so their shares of the errors can add up to more than 1.
The ceiling of a category is its count over the number of dev images: the most
the dev error could drop if every error in that category were fixed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from pipeline.evaluate import Predictions
from pipeline.spec import ErrorAnalysisSpec


@dataclass(frozen=True)
class ErrorContext:
    """What categorizers may read: dev images, predictions and train-derived thresholds."""

    images: torch.Tensor  # uint8 dev images, N×C×H×W
    outputs: Predictions
    class_names: list[str]
    confusion: np.ndarray
    dark_threshold: float  # mean brightness in [0, 1]
    bright_threshold: float
    config: ErrorAnalysisSpec


# A categorizer maps the positions of the errors to {category: mask over those errors}.
Categorizer = Callable[[ErrorContext, np.ndarray], dict[str, np.ndarray]]


def brightness(images: torch.Tensor) -> np.ndarray:
    """Return each image's mean pixel value in [0, 1]."""
    return (images.float() / 255.0).mean(dim=(1, 2, 3)).numpy()


def _too_dark(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"too_dark": brightness(context.images[torch.from_numpy(errors)]) < context.dark_threshold}


def _too_bright(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"too_bright": brightness(context.images[torch.from_numpy(errors)]) > context.bright_threshold}


def _low_confidence(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"low_confidence": context.outputs.confidence[errors] < context.config.low_confidence}


def _confused_pairs(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    true, predicted = context.outputs.labels[errors], context.outputs.predicted[errors]
    categories = {}
    for a, b in most_confused_pairs(context.confusion, context.config.confused_pairs):
        name = f"confused:{context.class_names[a]}->{context.class_names[b]}"
        categories[name] = (true == a) & (predicted == b)
    return categories


CATEGORIZERS: dict[str, Categorizer] = {
    "too_dark": _too_dark,
    "too_bright": _too_bright,
    "low_confidence": _low_confidence,
    "confused_pair": _confused_pairs,
}


def most_confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Return up to ``count`` (true, predicted) pairs with the most errors, ties by class order."""
    matrix = np.asarray(confusion).copy()
    np.fill_diagonal(matrix, 0)
    cells = [(int(matrix[a, b]), a, b) for a in range(len(matrix)) for b in range(len(matrix)) if matrix[a, b] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [(a, b) for _, a, b in cells[:count]]


@dataclass(frozen=True)
class ErrorRecord:
    """One misclassified dev image."""

    index: int  # dataset index
    source: str
    true_label: str
    predicted_label: str
    confidence: float
    categories: list[str]


@dataclass(frozen=True)
class CategoryShare:
    """How many errors fall in a category, and what fixing them could gain."""

    count: int
    share_of_errors: float
    share_of_dev: float
    ceiling: float  # maximum drop in dev error, as a fraction of dev images


@dataclass(frozen=True)
class ErrorAnalysis:
    """All dev errors with their categories, and the breakdown by category."""

    dev_size: int
    error_count: int
    errors: list[ErrorRecord]
    breakdown: dict[str, CategoryShare]
    thresholds: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def brightness_thresholds(train_images: torch.Tensor, config: ErrorAnalysisSpec) -> tuple[float, float]:
    """Take the too-dark and too-bright cut-offs from percentiles of train brightness."""
    values = brightness(train_images)
    return (float(np.percentile(values, config.dark_percentile)),
            float(np.percentile(values, config.bright_percentile)))


def analyze_errors(dev_images: torch.Tensor, dev_indices: np.ndarray, sources: list[str],
                   outputs: Predictions, confusion: np.ndarray, class_names: list[str],
                   thresholds: tuple[float, float], config: ErrorAnalysisSpec) -> ErrorAnalysis:
    """Find the dev errors, categorize each, and count each category.

    Args:
        dev_images: uint8 dev images in the order of ``outputs``.
        dev_indices: dataset index of each dev image.
        sources: file path or id of every dataset image, by dataset index.
        outputs: the evaluation's predictions on dev; the model is not run again.
        confusion: the dev confusion matrix, rows true and columns predicted.
        class_names: names by label.
        thresholds: (too dark, too bright) brightness cut-offs.
        config: category settings from the spec.
    """
    context = ErrorContext(dev_images, outputs, class_names, np.asarray(confusion),
                           thresholds[0], thresholds[1], config)
    errors = np.flatnonzero(outputs.predicted != outputs.labels)
    masks: dict[str, np.ndarray] = {}
    for categorize in CATEGORIZERS.values():
        masks.update(categorize(context, errors))

    records = []
    for position, error in enumerate(errors):
        index = int(dev_indices[error])
        records.append(ErrorRecord(
            index=index,
            source=sources[index],
            true_label=class_names[outputs.labels[error]],
            predicted_label=class_names[outputs.predicted[error]],
            confidence=float(outputs.confidence[error]),
            categories=[name for name, mask in masks.items() if mask[position]],
        ))

    dev_size = len(outputs.labels)
    breakdown = {}
    for name, mask in masks.items():
        count = int(mask.sum())
        breakdown[name] = CategoryShare(count, count / len(errors) if len(errors) else 0.0,
                                        count / dev_size, count / dev_size)
    return ErrorAnalysis(dev_size, len(errors), records, breakdown,
                         {"too_dark": thresholds[0], "too_bright": thresholds[1],
                          "low_confidence": config.low_confidence})
