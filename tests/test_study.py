"""Whole studies on digits, read back through MlflowClient and optuna.load_study."""

import json
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.data import load_images, prepare, split_from_manifest
from pipeline.models import build_model
from pipeline.spec import DataSpec, parse_spec
from pipeline.study import StudyError, run_study
from pipeline.summary import render_summary
from pipeline.tracking import absolute_sqlite_uri
from pipeline.train import predict

TRACKING = "sqlite:///mlruns/mlflow.db"
STORAGE = "sqlite:///mlruns/optuna.db"


def _client() -> MlflowClient:
    # MLflow caches a store per URI string, so tests in different folders need absolute URIs.
    return MlflowClient(absolute_sqlite_uri(TRACKING))


def _study() -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))


def _children(client, experiment_id, parent_id):
    runs = client.search_runs([experiment_id], filter_string="tags.`playbook.role` = 'trial'")
    assert all(run.data.tags["mlflow.parentRunId"] == parent_id for run in runs)
    return sorted(runs, key=lambda run: int(run.data.tags["playbook.trial_number"]))


@pytest.fixture
def finished(workdir, tiny_spec):
    """A finished 2-trial study in the working folder."""
    outcome = run_study(parse_spec(tiny_spec))
    return outcome


def test_study_records_trials_in_mlflow(finished, workdir):
    assert (workdir / "mlruns" / "mlflow.db").is_file()
    assert (workdir / "mlruns" / "optuna.db").is_file()
    client = _client()
    experiment = client.get_experiment_by_name("tiny")
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`playbook.role` = 'study'")
    assert [run.info.run_id for run in parents] == [finished.parent_run_id]
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert "baseline.majority.dev_accuracy" in parent.data.metrics
    assert parent.data.params["split.hash"] == json.loads(
        Path(client.download_artifacts(parent.info.run_id, "split_manifest.json", str(workdir))).read_text())["hash"]

    study = _study()
    children = _children(client, experiment.experiment_id, parent.info.run_id)
    assert len(children) == len(study.trials) == 2
    for trial, run in zip(study.trials, children):
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.info.status == "FINISHED"
        assert run.data.tags["playbook.trial_state"] == "COMPLETE"
        assert run.data.tags["playbook.study"] == "tiny"
        for name, value in trial.params.items():
            assert run.data.params[name] == str(value)
        assert run.data.metrics["dev_macro_f1"] == pytest.approx(trial.value)
        for key in ("dev_accuracy", "latency_p95_ms", "latency_p50_ms", "train_error", "train_dev_error",
                    "avoidable_bias", "variance", "data_mismatch", "dev_f1/3", "dev_support/3"):
            assert key in run.data.metrics, key
        history = client.get_metric_history(run.info.run_id, "train_loss")
        assert [m.step for m in history] == [0]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"confusion_matrix.png", "misclassified.png", "error_analysis.json", "diagnosis.json",
                "evaluation.json", "model"} <= artifacts


def test_logged_weights_reproduce_dev_accuracy(finished, workdir):
    client = _client()
    run = client.get_run(finished.best.run_id)
    folder = Path(client.download_artifacts(run.info.run_id, "model", str(workdir / "download")))
    config = json.loads((folder / "config.json").read_text())
    state = torch.load(folder / "state_dict.pt", weights_only=True)
    arch = config["arch"]
    knobs = {k.split(".", 1)[1]: v for k, v in config["hyperparameters"].items() if k.startswith(arch + ".")}
    model = build_model(arch, config["in_channels"], config["num_classes"], config["image_size"], knobs)
    model.load_state_dict(state)

    parent = client.get_run(finished.parent_run_id)
    manifest = json.loads(Path(client.download_artifacts(parent.info.run_id, "split_manifest.json",
                                                         str(workdir / "download"))).read_text())
    data = load_images(DataSpec(source="digits"))
    prepared = prepare(data, split_from_manifest(manifest))
    logits = predict(model, prepared.x["dev"], torch.device("cpu"))
    accuracy = float((logits.argmax(1) == prepared.y["dev"]).float().mean())
    assert accuracy == pytest.approx(run.data.metrics["dev_accuracy"])


def test_resume_adds_trials(finished, workdir, tiny_spec):
    again = run_study(parse_spec(tiny_spec), trials=1)
    assert again.parent_run_id == finished.parent_run_id
    assert again.new_trials == 1
    study = _study()
    assert [t.number for t in study.trials] == [0, 1, 2]
    lrs = [t.params["lr"] for t in study.trials]
    assert len(set(lrs)) == 3  # the resumed sampler did not redraw trial 0's values
    client = _client()
    experiment = client.get_experiment_by_name("tiny")
    assert len(_children(client, experiment.experiment_id, finished.parent_run_id)) == 3
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`playbook.role` = 'study'")
    assert len(parents) == 1


def test_resume_with_changed_split_rejected(finished, tiny_spec):
    tiny_spec["data"] = {"split_seed": 1}
    with pytest.raises(StudyError, match="split"):
        run_study(parse_spec(tiny_spec), trials=1)


def test_best_is_feasible_and_highest(finished):
    complete = [t for t in finished.trials if t.state == "COMPLETE" and t.feasible]
    assert finished.best.value == max(t.value for t in complete)
    text = render_summary(finished, "en")
    assert f"Best feasible trial: #{finished.best.number}" in text
    assert "mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db" in text
    assert "Hoàn tất".lower() in render_summary(finished, "vi").lower()


def test_infeasible_trials_never_best(workdir, tiny_spec):
    tiny_spec["objective"] = {"constraints": [{"metric": "latency_p95_ms", "max": 1.0e-6}]}
    outcome = run_study(parse_spec(tiny_spec))
    assert outcome.counts["COMPLETE"] == 2
    assert outcome.counts["feasible"] == 0
    assert outcome.best is None
    assert "No trial meets every constraint" in render_summary(outcome, "en")
    study = _study()
    assert all(t.system_attrs["constraints:latency_p95_ms"] > 0 for t in study.trials)


def test_failed_trial_does_not_stop_study(workdir, tiny_spec, monkeypatch):
    # Batch norm keeps this small net from diverging on its own, so the SGD trials start
    # from NaN weights. The real training loop must then detect the NaN loss.
    import pipeline.trial

    real_train = pipeline.trial.train_model

    def poisoned_train(model, data, config, device, on_epoch=None):
        if config.optimizer == "sgd":
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))
        return real_train(model, data, config, device, on_epoch)

    monkeypatch.setattr(pipeline.trial, "train_model", poisoned_train)
    tiny_spec["train"]["optimizer"] = {"choices": ["sgd", "adam"]}
    tiny_spec["seed"] = 3
    outcome = run_study(parse_spec(tiny_spec), trials=4)
    study = _study()
    states = [t.state.name for t in study.trials]
    assert len(states) == 4
    assert "COMPLETE" in states
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed and all(t.params["optimizer"] == "sgd" for t in failed)
    assert all(t.user_attrs["failure_reason"] == "diverged" for t in failed)
    client = _client()
    for trial in failed:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["playbook.failure_reason"] == "diverged"
        assert "Diverged" in run.data.tags["playbook.error"]
    assert outcome.counts["FAIL"] == len(failed)


def test_test_split_untouched(finished):
    client = _client()
    for trial in finished.trials:
        metrics = client.get_run(trial.run_id).data.metrics
        assert not [key for key in metrics if key.startswith("test")]


def test_trials_log_stage_timings(finished):
    client = _client()
    study = _study()
    for trial in study.trials:
        metrics = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
        stages = {name: metrics[f"stage_seconds/{name}"] for name in
                  ("train_steps", "dev_scoring", "evaluate", "error_analysis", "diagnosis", "logging")}
        assert all(value > 0 for value in stages.values())
        # The train stage's own clock covers the steps and the per-epoch dev scoring.
        assert stages["train_steps"] + stages["dev_scoring"] == pytest.approx(metrics["train_seconds"], rel=1e-6)
        wall = (trial.datetime_complete - trial.datetime_start).total_seconds()
        assert sum(stages.values()) < wall + 0.01  # Optuna's timestamps have millisecond precision


def test_sqlite_storage_uses_write_ahead_log(finished, workdir):
    import sqlite3

    for name in ("optuna.db", "mlflow.db"):
        with sqlite3.connect(workdir / "mlruns" / name) as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
