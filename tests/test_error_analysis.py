"""Error categories on hand-made images and predictions."""

import numpy as np
import pytest
import torch

from pipeline.error_analysis import analyze_errors, brightness_thresholds, most_confused_pairs
from pipeline.evaluate import Predictions
from pipeline.spec import ErrorAnalysisSpec


def _probabilities(predicted, confidence, classes=3):
    rows = []
    for label, top in zip(predicted, confidence):
        row = np.full(classes, (1 - top) / (classes - 1))
        row[label] = top
        rows.append(row)
    return np.array(rows)


def test_most_confused_pairs_from_matrix():
    confusion = np.array([[5, 3, 0], [0, 5, 1], [4, 0, 5]])
    assert most_confused_pairs(confusion, 2) == [(2, 0), (0, 1)]
    assert most_confused_pairs(np.eye(3, dtype=int) * 4, 3) == []


def test_brightness_thresholds_from_train_percentiles():
    levels = torch.arange(0, 101, dtype=torch.float32) * 2.55
    images = levels.round().to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    dark, bright = brightness_thresholds(images, ErrorAnalysisSpec(dark_percentile=10, bright_percentile=90))
    assert dark == pytest.approx(0.10, abs=0.005)
    assert bright == pytest.approx(0.90, abs=0.005)


def test_categories_and_breakdown():
    # Six dev images: brightness 0.02, 0.5, 0.98, 0.5, 0.5, 0.5; labels and predictions below.
    values = [5, 128, 250, 128, 128, 128]
    images = torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 3, 3).contiguous()
    labels = np.array([0, 1, 2, 0, 0, 1])
    predicted = np.array([1, 1, 0, 1, 1, 1])
    confidence = np.array([0.9, 0.9, 0.4, 0.95, 0.45, 0.8])
    outputs = Predictions(_probabilities(predicted, confidence), labels)
    confusion = np.array([[0, 3, 0], [0, 2, 0], [1, 0, 0]])
    result = analyze_errors(images, np.arange(100, 106), [f"img{i}" for i in range(106)], outputs, confusion,
                            ["a", "b", "c"], (0.1, 0.9), ErrorAnalysisSpec(low_confidence=0.5, confused_pairs=1))

    assert result.error_count == 4
    assert [record.index for record in result.errors] == [100, 102, 103, 104]
    by_index = {record.index: set(record.categories) for record in result.errors}
    assert by_index[100] == {"too_dark", "confused:a->b"}
    assert by_index[102] == {"too_bright", "low_confidence"}
    assert by_index[104] == {"low_confidence", "confused:a->b"}
    pair = result.breakdown["confused:a->b"]
    assert pair.count == 3
    assert pair.share_of_errors == pytest.approx(0.75)
    assert pair.ceiling == pytest.approx(0.5)
    assert result.breakdown["too_dark"].count == 1
    assert result.errors[1].source == "img102"
    assert result.errors[1].true_label == "c"
    assert result.errors[1].predicted_label == "a"
