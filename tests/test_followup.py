"""After the search: the final test, stage reruns, the report, and data mismatch in the diagnosis."""

import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.finalize import AlreadyFinalized, finalize
from pipeline.logged import LoggedRunError
from pipeline.report import write_report
from pipeline.rerun import rerun_stage
from pipeline.spec import parse_spec
from pipeline.study import run_study
from pipeline.tracking import absolute_sqlite_uri

TRACKING = "sqlite:///mlruns/mlflow.db"
STORAGE = "sqlite:///mlruns/optuna.db"
STUDIES = Path(__file__).resolve().parents[1] / "studies"
TRAINED = {"optimizer": "adam", "lr": 0.005, "weight_decay": 1.0e-5, "batch_size": 64, "epochs": 8,
           "dropout": 0.1}


def _client():
    return MlflowClient(absolute_sqlite_uri(TRACKING))


@pytest.fixture
def study_spec(workdir, tiny_spec):
    tiny_spec["train"] = dict(TRAINED, epochs=2)
    spec = parse_spec(tiny_spec)
    run_study(spec)
    return spec


def test_finalize_logs_test_metrics(study_spec):
    result = finalize(study_spec, STORAGE, TRACKING)
    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    parent = _client().get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(result.test["accuracy"])
    assert parent.data.metrics["dev_overfitting"] == pytest.approx(result.test["error"] - result.dev["error"])
    assert parent.data.tags["playbook.final_test.trial"] == str(result.trial_number)
    assert result.diagnosis.dev_overfitting == pytest.approx(result.test["error"] - result.dev["error"])
    assert 0.0 <= result.test["accuracy"] <= 1.0


def test_finalize_refuses_second_run(study_spec):
    first = finalize(study_spec, STORAGE, TRACKING)
    with pytest.raises(AlreadyFinalized) as refused:
        finalize(study_spec, STORAGE, TRACKING)
    assert refused.value.earlier["test"]["accuracy"] == pytest.approx(first.test["accuracy"])
    earlier = []
    again = finalize(study_spec, STORAGE, TRACKING, force=True, earlier_out=earlier)
    assert earlier[0]["trial_number"] == first.trial_number
    assert again.runs == 2
    # Same weights and test images: the forced rerun measures the same accuracy.
    assert again.test["accuracy"] == first.test["accuracy"]


def _trial_run_id(number=0):
    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    return study.trials[number].user_attrs["mlflow_run_id"]


@pytest.mark.parametrize("stage", ["evaluate", "error-analysis", "diagnosis"])
def test_rerun_reproduces_original(study_spec, stage):
    run_id = _trial_run_id()
    result = rerun_stage(run_id, stage, TRACKING)
    assert result.changes
    assert [c.name for c in result.changes if c.changed] == []
    run = _client().get_run(result.run_id)
    assert run.data.tags["playbook.rerun_of"] == run_id
    assert run.data.tags["mlflow.parentRunId"] == run_id
    assert run.info.status == "FINISHED"


def test_rerun_evaluate_metrics_equal_logged(study_spec):
    run_id = _trial_run_id()
    result = rerun_stage(run_id, "evaluate", TRACKING)
    client = _client()
    original, rerun = client.get_run(run_id).data.metrics, client.get_run(result.run_id).data.metrics
    for key in ("dev_accuracy", "dev_macro_f1", "train_error", "train_dev_error", "dev_f1/7"):
        assert rerun[key] == original[key], key


def test_rerun_with_new_thresholds_reports_change(study_spec):
    spec = parse_spec({"name": "tiny", "error_analysis": {"categorizers": {"low_confidence": {"threshold": 0.99}}}})
    result = rerun_stage(_trial_run_id(), "error-analysis", TRACKING, spec)
    changed = {c.name: c for c in result.changes if c.changed}
    assert changed["threshold low_confidence"].before == 0.5
    assert changed["threshold low_confidence"].after == 0.99
    assert "dev_errors" not in changed


def test_rerun_rejects_parent_run(study_spec):
    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    with pytest.raises(LoggedRunError, match="not a playbook trial run"):
        rerun_stage(study.user_attrs["mlflow_parent_run_id"], "evaluate", TRACKING)


def test_rerun_missing_weights(study_spec):
    run_id = _trial_run_id()
    artifact_dir = Path(_client().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (artifact_dir / "model" / "state_dict.pt").unlink()
    with pytest.raises(LoggedRunError, match="no artifact model/state_dict.pt"):
        rerun_stage(run_id, "evaluate", TRACKING)


def test_rerun_incompatible_version(study_spec):
    run_id = _trial_run_id()
    artifact_dir = Path(_client().get_run(run_id).info.artifact_uri.removeprefix("file://"))
    config_path = artifact_dir / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["format_version"] = 99
    config_path.write_text(json.dumps(config))
    with pytest.raises(LoggedRunError, match="model format 99"):
        rerun_stage(run_id, "evaluate", TRACKING)


def test_report_has_pictures_and_tables(study_spec, workdir):
    path = write_report(study_spec, STORAGE, TRACKING, workdir / "report.html", lang="vi")
    page = path.read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") >= 4
    assert "Báo cáo study: tiny" in page
    assert "Lịch sử tối ưu" in page
    assert "majority" in page
    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    artifacts = {a.path for a in _client().list_artifacts(study.user_attrs["mlflow_parent_run_id"])}
    assert "report.html" in artifacts


def _shipped(name, workdir):
    raw = yaml.safe_load((STUDIES / name).read_text())
    raw["model"] = {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": 16}}
    raw["train"] = dict(TRAINED)
    raw["search"] = {"trials": 1}
    raw["latency"] = {"warmup": 2, "repeats": 10}
    return parse_spec(raw)


def test_mismatch_study_diagnoses_mismatch(workdir):
    outcome = run_study(_shipped("digits_mismatch.yaml", workdir))
    diagnosis = outcome.best.diagnosis
    assert diagnosis["main_gap"] == "data_mismatch"
    assert diagnosis["data_mismatch"] > 0.1


def test_default_study_not_mismatch(workdir):
    outcome = run_study(_shipped("digits.yaml", workdir))
    assert outcome.best.diagnosis["main_gap"] != "data_mismatch"
    assert outcome.best.dev_metrics["accuracy"] > 0.95
