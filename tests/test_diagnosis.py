"""Bias / variance / data-mismatch diagnosis on the textbook cases."""

import pytest

from pipeline.diagnosis import diagnose, render
from pipeline.messages import CATALOGUE, LANGUAGES


def test_high_variance_case():
    # train 1%, train-dev 5%, dev 5%: the gap is between train and train-dev.
    result = diagnose(0.01, 0.05, 0.05, human_level_error=0.0)
    assert result.avoidable_bias == pytest.approx(0.01)
    assert result.variance == pytest.approx(0.04)
    assert result.data_mismatch == pytest.approx(0.0)
    assert result.main_gap == "variance"


def test_high_bias_case():
    # train 10%, train-dev 11%, dev 12% with human level near 0: bias dominates.
    result = diagnose(0.10, 0.11, 0.12, human_level_error=0.0)
    assert result.avoidable_bias == pytest.approx(0.10)
    assert result.variance == pytest.approx(0.01)
    assert result.data_mismatch == pytest.approx(0.01)
    assert result.ranked == ["avoidable_bias"]


def test_bias_and_mismatch_case():
    # train 10%, train-dev 11%, dev 20%: bias and data mismatch are both large.
    result = diagnose(0.10, 0.11, 0.20, human_level_error=0.0)
    assert result.data_mismatch == pytest.approx(0.09)
    assert result.ranked == ["avoidable_bias", "data_mismatch"]


def test_better_than_human_level():
    result = diagnose(0.01, 0.015, 0.016, human_level_error=0.02)
    assert result.avoidable_bias == pytest.approx(-0.01)
    assert "avoidable_bias" not in result.ranked
    assert "below the stated human level" in render(result, "en")


def test_missing_human_level_uses_zero():
    result = diagnose(0.03, 0.03, 0.03)
    assert result.human_level_assumed
    assert result.avoidable_bias == pytest.approx(0.03)
    assert "not set" in render(result, "en")


def test_render_vietnamese_differs_and_ranks():
    result = diagnose(0.10, 0.11, 0.20, human_level_error=0.0)
    english, vietnamese = render(result, "en"), render(result, "vi")
    assert "Chẩn đoán" in vietnamese
    assert english != vietnamese
    assert english.count("\n  ") == vietnamese.count("\n  ")


def test_catalogue_has_every_language():
    for key, versions in CATALOGUE.items():
        assert set(versions) == set(LANGUAGES), key
        assert all(versions[lang].strip() for lang in LANGUAGES), key


def test_catalogue_placeholders_match():
    import string

    for key, versions in CATALOGUE.items():
        fields = [{name for _, name, _, _ in string.Formatter().parse(versions[lang]) if name}
                  for lang in LANGUAGES]
        assert fields[0] == fields[1], key


def test_noise_hides_small_gap_on_small_sets():
    # 1.3 points between train-dev and dev is within noise for 1,000 images each:
    # 2 * sqrt(0.448*0.552/1000 + 0.461*0.539/1000) = 0.0444.
    noisy = diagnose(0.46, 0.448, 0.461, human_level_error=0.06,
                     sizes={"train": 7000, "train_dev": 1000, "dev": 1000})
    assert noisy.noise["data_mismatch"] == pytest.approx(0.0444, abs=0.0005)
    assert noisy.ranked == ["avoidable_bias"]
    # The same gap on 100,000 images each is real.
    large = diagnose(0.46, 0.448, 0.461, human_level_error=0.06,
                     sizes={"train": 700000, "train_dev": 100000, "dev": 100000})
    assert large.ranked == ["avoidable_bias", "data_mismatch"]
