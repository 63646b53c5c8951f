"""Error analysis stage: tag each misclassified dev image with the categories that fit it.

Categorizers form a registry; the spec picks and configures them. Cut-offs that
depend on the images (too dark, low contrast, blurry) come from percentiles of the
train images unless the spec fixes them, and are fitted once per study.

Categories may overlap, so their shares of the errors can add up to more than 1.
The ceiling of a category is its count over the number of dev images: the most
the dev error could drop if every error in that category were fixed.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data import DataError
from pipeline.evaluate import Predictions
from pipeline.spec import Categorizers, ErrorAnalysisSpec

# ---------------------------------------------------------------------------
# Image statistics, each in [0, 1] pixel units


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Return N×1×H×W float images in [0, 1], using BT.601 luma weights for colour."""
    pixels = images.float() / 255.0
    if pixels.shape[1] == 3:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        pixels = (pixels * weights).sum(1, keepdim=True)
    return pixels


def brightness(images: torch.Tensor) -> np.ndarray:
    """Return each image's mean pixel value over all channels."""
    return (images.float() / 255.0).mean(dim=(1, 2, 3)).numpy()


def contrast(images: torch.Tensor) -> np.ndarray:
    """Return each image's RMS contrast: the standard deviation of its gray levels."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    return grayscale(images).flatten(1).std(dim=1).numpy()


def sharpness(images: torch.Tensor) -> np.ndarray:
    """Return the variance of the Laplacian of each gray image; blurry images score low."""
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    response = F.conv2d(grayscale(images), kernel)  # valid region only, so borders add no edges
    return response.flatten(1).var(dim=1).numpy()


# ---------------------------------------------------------------------------
# Categorizers


@dataclass(frozen=True)
class ErrorContext:
    """Inputs of every categorizer: dev images, predictions, cut-offs and settings."""

    images: torch.Tensor  # uint8 dev images, N×C×H×W
    outputs: Predictions
    class_names: list[str]
    confusion: np.ndarray
    thresholds: dict[str, float]
    settings: Categorizers


# A categorizer maps the positions of the errors to {category: mask over those errors}.
Categorizer = Callable[[ErrorContext, np.ndarray], dict[str, np.ndarray]]


def _brightness(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    values = brightness(context.images[torch.from_numpy(errors)])
    return {"too_dark": values < context.thresholds["too_dark"],
            "too_bright": values > context.thresholds["too_bright"]}


def _contrast(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"low_contrast": contrast(context.images[torch.from_numpy(errors)]) < context.thresholds["low_contrast"]}


def _blur(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"blurry": sharpness(context.images[torch.from_numpy(errors)]) < context.thresholds["blurry"]}


def _low_confidence(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    return {"low_confidence": context.outputs.confidence[errors] < context.settings.low_confidence.threshold}


def _high_confidence(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    # Confident mistakes are the first place to look for wrong labels.
    return {"high_confidence": context.outputs.confidence[errors] >= context.settings.high_confidence.threshold}


def _confused_pairs(context: ErrorContext, errors: np.ndarray) -> dict[str, np.ndarray]:
    true, predicted = context.outputs.labels[errors], context.outputs.predicted[errors]
    categories = {}
    for a, b in most_confused_pairs(context.confusion, context.settings.confused_pairs.count):
        name = f"confused:{context.class_names[a]}->{context.class_names[b]}"
        categories[name] = (true == a) & (predicted == b)
    return categories


CATEGORIZERS: dict[str, Categorizer] = {
    "brightness": _brightness,
    "contrast": _contrast,
    "blur": _blur,
    "low_confidence": _low_confidence,
    "high_confidence": _high_confidence,
    "confused_pairs": _confused_pairs,
}


def most_confused_pairs(confusion: np.ndarray, count: int) -> list[tuple[int, int]]:
    """Return up to ``count`` (true, predicted) pairs with the most errors, ties by class order."""
    matrix = np.asarray(confusion).copy()
    np.fill_diagonal(matrix, 0)
    cells = [(int(matrix[a, b]), a, b) for a in range(len(matrix)) for b in range(len(matrix)) if matrix[a, b] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [(a, b) for _, a, b in cells[:count]]


def fit_thresholds(train_images: torch.Tensor, config: ErrorAnalysisSpec) -> dict[str, float]:
    """Fix the image-statistic cut-offs: from the spec where given, else train percentiles."""
    settings = config.categorizers
    thresholds: dict[str, float] = {}
    if settings.brightness is not None:
        values = brightness(train_images)
        b = settings.brightness
        thresholds["too_dark"] = b.dark if b.dark is not None else float(np.percentile(values, b.dark_percentile))
        thresholds["too_bright"] = (b.bright if b.bright is not None
                                    else float(np.percentile(values, b.bright_percentile)))
    for name, key, statistic in (("contrast", "low_contrast", contrast), ("blur", "blurry", sharpness)):
        setting = getattr(settings, name)
        if setting is not None:
            thresholds[key] = (setting.threshold if setting.threshold is not None
                               else float(np.percentile(statistic(train_images), setting.percentile)))
    return thresholds


# ---------------------------------------------------------------------------
# Manual tags


class ManualTagsError(DataError):
    """A manual-tags CSV that cannot be read, with the row and the fix."""


def read_manual_tags(path: Path, dataset_size: int) -> dict[int, list[str]]:
    """Read a CSV of ``index,tag`` rows, as a person tagging errors in a spreadsheet writes it.

    An index may appear on several rows to carry several tags.

    Raises:
        ManualTagsError: a missing column, an index that is not an integer or is
            outside the dataset, or an empty tag; the message names the row.
    """
    tags: dict[int, list[str]] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"index", "tag"} <= set(reader.fieldnames):
            raise ManualTagsError(f"{path}: needs a header row with columns index,tag; got {reader.fieldnames}")
        for row_number, row in enumerate(reader, start=2):
            raw_index, tag = (row["index"] or "").strip(), (row["tag"] or "").strip()
            try:
                index = int(raw_index)
            except ValueError:
                raise ManualTagsError(f"{path}, row {row_number}: index {raw_index!r} is not an integer") from None
            if not 0 <= index < dataset_size:
                raise ManualTagsError(f"{path}, row {row_number}: index {index} is outside the dataset "
                                      f"(0..{dataset_size - 1}); use dataset indices as in errors.csv")
            if not tag:
                raise ManualTagsError(f"{path}, row {row_number}: empty tag; write a tag or drop the row")
            tags.setdefault(index, [])
            if tag not in tags[index]:
                tags[index].append(tag)
    return tags


# ---------------------------------------------------------------------------
# Breakdown


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

    @classmethod
    def from_dict(cls, data: dict) -> ErrorAnalysis:
        return cls(data["dev_size"], data["error_count"], [ErrorRecord(**r) for r in data["errors"]],
                   {name: CategoryShare(**share) for name, share in data["breakdown"].items()},
                   data["thresholds"])

    def members(self, category: str) -> list[ErrorRecord]:
        return [record for record in self.errors if category in record.categories]

    def write_csv(self, path: Path) -> Path:
        """Write one row per error for manual review; categories are joined by ';'."""
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["index", "source", "true_label", "predicted_label", "confidence", "categories"])
            for r in self.errors:
                writer.writerow([r.index, r.source, r.true_label, r.predicted_label, f"{r.confidence:.6f}",
                                 ";".join(r.categories)])
        return path


def analyze_errors(dev_images: torch.Tensor, dev_indices: np.ndarray, sources: list[str],
                   outputs: Predictions, confusion: np.ndarray, class_names: list[str],
                   thresholds: dict[str, float], config: ErrorAnalysisSpec,
                   manual_tags: dict[int, list[str]] | None = None) -> ErrorAnalysis:
    """Find the dev errors, categorize each, and count each category.

    Args:
        dev_images: uint8 dev images in the order of ``outputs``.
        dev_indices: dataset index of each dev image.
        sources: file path or id of every dataset image, by dataset index.
        outputs: the evaluation's predictions on dev; the model is not run again.
        confusion: the dev confusion matrix, rows true and columns predicted.
        class_names: names by label.
        thresholds: image-statistic cut-offs from ``fit_thresholds``.
        config: which categorizers run, with their settings.
        manual_tags: tags by dataset index; each becomes a category ``tag:<name>``.
    """
    context = ErrorContext(dev_images, outputs, class_names, np.asarray(confusion), thresholds, config.categorizers)
    errors = np.flatnonzero(outputs.predicted != outputs.labels)
    masks: dict[str, np.ndarray] = {}
    for name, categorize in CATEGORIZERS.items():
        if getattr(config.categorizers, name) is not None:
            masks.update(categorize(context, errors))
    if manual_tags:
        error_indices = dev_indices[errors]
        names = sorted({tag for tags in manual_tags.values() for tag in tags})
        for tag in names:
            masks[f"tag:{tag}"] = np.array([tag in manual_tags.get(int(i), []) for i in error_indices], dtype=bool)

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
    recorded = dict(thresholds)
    if config.categorizers.low_confidence is not None:
        recorded["low_confidence"] = config.categorizers.low_confidence.threshold
    if config.categorizers.high_confidence is not None:
        recorded["high_confidence"] = config.categorizers.high_confidence.threshold
    return ErrorAnalysis(dev_size, len(errors), records, breakdown, recorded)
