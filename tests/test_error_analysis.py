"""Error categories on hand-made images with known brightness, contrast and blur."""

import csv

import numpy as np
import pytest
import torch

from pipeline.error_analysis import (
    ManualTagsError,
    analyze_errors,
    brightness,
    contrast,
    fit_thresholds,
    most_confused_pairs,
    read_manual_tags,
    sharpness,
)
from pipeline.evaluate import Predictions
from pipeline.spec import ErrorAnalysisSpec


def _flat(levels, size=8):
    """Uniform gray images, one per level in 0..255."""
    return torch.tensor(levels, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, size, size).contiguous()


def _checkerboard(low, high, size=8):
    board = (torch.arange(size).view(-1, 1) + torch.arange(size)) % 2
    return (low + board * (high - low)).to(torch.uint8).view(1, 1, size, size)


def _probabilities(predicted, confidence, classes=3):
    rows = []
    for label, top in zip(predicted, confidence):
        row = np.full(classes, (1 - top) / (classes - 1))
        row[label] = top
        rows.append(row)
    return np.array(rows)


def _spec(**categorizers):
    return ErrorAnalysisSpec.model_validate({"categorizers": categorizers})


def test_brightness_of_known_levels():
    assert brightness(_flat([0, 51, 255])) == pytest.approx([0.0, 0.2, 1.0])


def test_contrast_of_checkerboard():
    # Half the pixels at 0 and half at 255: the standard deviation is 0.5 (about 0.504 unbiased).
    assert contrast(_checkerboard(0, 255))[0] == pytest.approx(0.5, abs=0.01)
    assert contrast(_flat([128]))[0] == pytest.approx(0.0)


def test_sharpness_drops_with_blur():
    sharp = _checkerboard(0, 255).float()
    blurred = torch.nn.functional.avg_pool2d(sharp, 3, stride=1, padding=1, count_include_pad=False)
    values = sharpness(torch.cat([sharp, blurred]).round().to(torch.uint8))
    # The Laplacian of a 0/1 checkerboard is ±4 on the 6×6 valid region: sample variance 16·36/35.
    assert values[0] == pytest.approx(16.0 * 36 / 35, rel=1e-4)
    assert values[1] < values[0] / 4
    assert sharpness(_flat([90]))[0] == pytest.approx(0.0)


def test_thresholds_from_train_percentiles():
    train = _flat(np.round(np.arange(0, 101) * 2.55).astype(int).tolist())
    spec = _spec(brightness={"dark_percentile": 10, "bright_percentile": 90})
    thresholds = fit_thresholds(train, spec)
    assert thresholds["too_dark"] == pytest.approx(0.10, abs=0.005)
    assert thresholds["too_bright"] == pytest.approx(0.90, abs=0.005)


def test_fixed_thresholds_win_over_percentiles():
    spec = _spec(brightness={"dark": 0.3, "bright": 0.7}, contrast={"threshold": 0.05}, blur={"threshold": 2.0})
    thresholds = fit_thresholds(_flat([0, 255]), spec)
    assert thresholds == {"too_dark": 0.3, "too_bright": 0.7, "low_contrast": 0.05, "blurry": 2.0}


def test_disabled_categorizer_absent():
    spec = _spec(contrast=False, blur=None)
    thresholds = fit_thresholds(_flat([0, 255]), spec)
    assert "low_contrast" not in thresholds
    assert "blurry" not in thresholds


def test_most_confused_pairs_from_matrix():
    confusion = np.array([[5, 3, 0], [0, 5, 1], [4, 0, 5]])
    assert most_confused_pairs(confusion, 2) == [(2, 0), (0, 1)]
    assert most_confused_pairs(np.eye(3, dtype=int) * 4, 3) == []


def _six_images():
    # Brightness 0.02, 0.5, 0.98, 0.5 (flat), a sharp checkerboard, and 0.5 again.
    images = torch.cat([_flat([5, 128, 250, 128]), _checkerboard(0, 255), _flat([128])])
    labels = np.array([0, 1, 2, 0, 0, 1])
    predicted = np.array([1, 1, 0, 1, 1, 1])
    confidence = np.array([0.95, 0.9, 0.4, 0.6, 0.45, 0.8])
    confusion = np.array([[0, 3, 0], [0, 2, 0], [1, 0, 0]])
    return images, Predictions(_probabilities(predicted, confidence), labels), confusion


def test_categories_and_breakdown():
    images, outputs, confusion = _six_images()
    spec = _spec(low_confidence={"threshold": 0.5}, high_confidence={"threshold": 0.9},
                 confused_pairs={"count": 1})
    thresholds = {"too_dark": 0.1, "too_bright": 0.9, "low_contrast": 0.05, "blurry": 1.0}
    result = analyze_errors(images, np.arange(100, 106), [f"img{i}" for i in range(106)], outputs, confusion,
                            ["a", "b", "c"], thresholds, spec)

    assert result.error_count == 4
    assert [record.index for record in result.errors] == [100, 102, 103, 104]
    by_index = {record.index: set(record.categories) for record in result.errors}
    assert by_index[100] == {"too_dark", "low_contrast", "blurry", "high_confidence", "confused:a->b"}
    assert by_index[102] == {"too_bright", "low_contrast", "blurry", "low_confidence"}
    assert by_index[103] == {"low_contrast", "blurry", "confused:a->b"}
    assert by_index[104] == {"low_confidence", "confused:a->b"}
    pair = result.breakdown["confused:a->b"]
    assert pair.count == 3
    assert pair.share_of_errors == pytest.approx(0.75)
    assert pair.share_of_dev == pytest.approx(0.5)
    assert pair.ceiling == pytest.approx(0.5)
    assert result.breakdown["high_confidence"].count == 1
    assert result.errors[1].source == "img102"
    assert result.errors[1].true_label == "c"
    assert result.errors[1].predicted_label == "a"


def test_manual_tags_merged(tmp_path):
    images, outputs, confusion = _six_images()
    path = tmp_path / "tags.csv"
    path.write_text("index,tag\n100,smudged\n103,smudged\n103,wrong label\n101,smudged\n", encoding="utf-8")
    tags = read_manual_tags(path, dataset_size=200)
    assert tags[103] == ["smudged", "wrong label"]
    result = analyze_errors(images, np.arange(100, 106), [f"img{i}" for i in range(106)], outputs, confusion,
                            ["a", "b", "c"], {"too_dark": 0.1, "too_bright": 0.9, "low_contrast": 0.05,
                                              "blurry": 1.0}, _spec(), tags)
    # 101 is classified correctly, so its tag counts for no error.
    assert result.breakdown["tag:smudged"].count == 2
    assert result.breakdown["tag:wrong label"].count == 1
    assert "tag:wrong label" in result.errors[2].categories


def test_errors_csv_columns(tmp_path):
    images, outputs, confusion = _six_images()
    result = analyze_errors(images, np.arange(6), [f"img{i}" for i in range(6)], outputs, confusion,
                            ["a", "b", "c"], {"too_dark": 0.1, "too_bright": 0.9, "low_contrast": 0.05,
                                              "blurry": 1.0}, _spec())
    rows = list(csv.DictReader(result.write_csv(tmp_path / "errors.csv").open()))
    assert len(rows) == 4
    assert rows[0]["index"] == "0"
    assert rows[0]["source"] == "img0"
    assert rows[0]["true_label"] == "a"
    assert rows[0]["predicted_label"] == "b"
    assert float(rows[0]["confidence"]) == pytest.approx(0.95)
    assert "too_dark" in rows[0]["categories"].split(";")


@pytest.mark.parametrize("content, message", [
    ("idx,tag\n1,a\n", "columns index,tag"),
    ("index,tag\nx,a\n", "row 2: index 'x' is not an integer"),
    ("index,tag\n1,a\n999,b\n", "row 3: index 999 is outside"),
    ("index,tag\n1,\n", "row 2: empty tag"),
])
def test_manual_tags_bad_rows(tmp_path, content, message):
    path = tmp_path / "tags.csv"
    path.write_text(content)
    with pytest.raises(ManualTagsError, match=message):
        read_manual_tags(path, dataset_size=10)
