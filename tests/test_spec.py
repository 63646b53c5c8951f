"""Spec validation: every bad field is named, with its value and the fix."""

from pathlib import Path

import pytest
import yaml

from pipeline.params import Choice, FloatRange, Fixed, IntRange
from pipeline.spec import SpecError, load_spec, parse_spec


def _problems(raw):
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return "\n".join(caught.value.problems)


def test_minimal_spec_defaults():
    spec = parse_spec({"name": "x"})
    assert spec.data.source == "digits"
    assert spec.objective.metric == "macro_f1"
    assert spec.objective.direction == "maximize"
    assert spec.objective.constraints[0].metric == "latency_p95_ms"
    assert spec.train.lr == Fixed(1e-3)


def test_search_dimensions_parsed(tiny_spec):
    spec = parse_spec(tiny_spec)
    assert spec.train.lr == FloatRange(1e-3, 1e-2, log=True)
    assert spec.model.knobs("small_cnn")["width"] == Choice((8, 16))
    assert spec.model.knobs("small_cnn")["depth"] == Fixed(1)
    assert parse_spec({"name": "x", "model": {"small_cnn": {"depth": {"low": 1, "high": 3}}}}
                      ).model.knobs("small_cnn")["depth"] == IntRange(1, 3)


def test_yaml_exponent_without_dot():
    # PyYAML reads 1e-3 as text; it must still become a number.
    raw = yaml.safe_load("name: x\ntrain: {lr: {low: 1e-4, high: 1e-2, log: true}}")
    assert parse_spec(raw).train.lr == FloatRange(1e-4, 1e-2, log=True)


def test_unknown_key_named():
    text = _problems({"name": "x", "trian": {}})
    assert "unknown key 'trian'" in text
    assert "did you mean 'train'" in text


def test_unknown_nested_key_named():
    text = _problems({"name": "x", "train": {"learning_rate": 0.1}})
    assert "unknown key 'learning_rate'" in text


def test_unknown_model_named():
    text = _problems({"name": "x", "model": {"arch": "vgg99"}})
    assert "model.arch" in text
    assert "'vgg99'" in text
    assert "small_cnn" in text


def test_log_range_low_not_positive():
    text = _problems({"name": "x", "train": {"weight_decay": {"low": 0, "high": 1e-3, "log": True}}})
    assert "train.weight_decay" in text
    assert "low > 0" in text
    assert "low=0" in text


def test_fractions_must_sum_to_one():
    text = _problems({"name": "x", "data": {"fractions": {"train": 0.8, "train_dev": 0.1,
                                                          "dev": 0.1, "test": 0.1}}})
    assert "data.fractions" in text
    assert "1.1" in text
    assert "sum to 1" in text


def test_missing_data_path(tmp_path):
    missing = tmp_path / "nowhere"
    text = _problems({"name": "x", "data": {"source": "imagefolder", "path": str(missing)}})
    assert "data.path" in text
    assert str(missing) in text


def test_imagefolder_needs_path():
    assert "needs data.path" in _problems({"name": "x", "data": {"source": "imagefolder"}})


def test_cifar10_root_names_expected_folder(tmp_path):
    text = _problems({"name": "x", "data": {"source": "cifar10", "path": str(tmp_path)}})
    assert str(tmp_path / "cifar-10-batches-py") in text


def test_several_problems_reported_together():
    text = _problems({"name": "x", "train": {"lr": -1, "epochs": 0}, "objective": {"metric": "auc"}})
    assert "train.lr" in text
    assert "train.epochs" in text
    assert "objective.metric" in text


def test_constraint_needs_one_bound():
    text = _problems({"name": "x", "objective": {"constraints": [{"metric": "latency_p95_ms"}]}})
    assert "exactly one of 'max' or 'min'" in text


def test_missing_name():
    assert "name: required field is missing" in _problems({})


def test_knobs_for_unselected_arch():
    text = _problems({"name": "x", "model": {"arch": "small_cnn", "small_cnn": {"depthh": 2}}})
    assert "unknown knob 'depthh'" in text


def test_relative_data_path_from_spec_folder(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: x\ndata: {source: imagefolder, path: images}\n")
    assert load_spec(spec_file).data.path == (tmp_path / "images").resolve()


def test_yaml_tags_rejected(tmp_path):
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SpecError, match="invalid YAML"):
        load_spec(spec_file)


def test_shipped_specs_validate():
    for path in sorted(Path(__file__).resolve().parents[1].glob("studies/*.yaml")):
        spec = load_spec(path) if "cifar" not in path.name else None
        assert spec is None or spec.name


def test_pruner_needs_per_epoch_metric():
    text = _problems({"name": "x", "search": {"pruner": "median"}, "objective": {"metric": "latency_p95_ms"}})
    assert "search.pruner" in text
    assert "set search.pruner: none" in text


def test_crop_padding_searchable_and_bounded():
    spec = parse_spec({"name": "x", "train": {"augment_crop": {"choices": [0, 2, 4]}}})
    assert spec.train.augment_crop == Choice((0, 2, 4))
    problems = _problems({"name": "x", "train": {"augment_crop": -1}})
    assert "train.augment_crop" in problems
    assert "below the minimum 0" in problems


def test_compute_settings_validated():
    spec = parse_spec({"name": "x"})
    assert (spec.compute.amp, spec.compute.channels_last, spec.compute.compile) == (True, True, False)
    assert spec.compute.threads is None
    assert "compute.threads" in _problems({"name": "x", "compute": {"threads": 0}})
    assert "did you mean 'compile'" in _problems({"name": "x", "compute": {"compiled": True}})


def test_worker_threads_split_cores(monkeypatch):
    from pipeline import study

    monkeypatch.setattr(study.os, "cpu_count", lambda: 8)
    assert study.worker_threads(parse_spec({"name": "x"}), 2) == 4
    assert study.worker_threads(parse_spec({"name": "x"}), 16) == 1
    assert study.worker_threads(parse_spec({"name": "x", "compute": {"threads": 3}}), 2) == 3
