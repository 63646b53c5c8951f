"""Many workers, killed workers, failing and pruned trials, and MLflow's limits.

Workers are real processes. The PostgreSQL test starts a throwaway cluster and an
MLflow server, both listening on 127.0.0.1 only, and stops them afterwards.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from sqlalchemy.exc import IntegrityError, OperationalError

from pipeline.spec import parse_spec
from pipeline.study import run_study
from pipeline.summary import render_summary
from pipeline.tracking import Tracker, absolute_sqlite_uri, sanitize_keys

TRACKING = "sqlite:///mlruns/mlflow.db"
STORAGE = "sqlite:///mlruns/optuna.db"
PG_BINS = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _playbook(args, cwd, **kwargs):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def _write_spec(workdir, spec, name="spec.yaml"):
    (workdir / name).write_text(yaml.safe_dump(spec))
    return name


def _check_runs(client, study, expected):
    """Assert one parent run and one child run per trial, with the trial's params."""
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == expected
    assert sorted(t.number for t in trials) == list(range(expected))
    assert all(t.state.name == "COMPLETE" for t in trials)
    experiment = client.get_experiment_by_name(study.study_name)
    parents = client.search_runs([experiment.experiment_id], "tags.`playbook.role` = 'study'")
    assert len(parents) == 1
    children = client.search_runs([experiment.experiment_id], "tags.`playbook.role` = 'trial'",
                                  max_results=1000)
    assert len(children) == expected
    by_number = {int(run.data.tags["playbook.trial_number"]): run for run in children}
    assert sorted(by_number) == list(range(expected))
    for trial in trials:
        run = by_number[trial.number]
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        for name, value in trial.params.items():
            assert run.data.params[name] == str(value)


def test_two_workers_six_trials(workdir, tiny_spec):
    spec = _write_spec(workdir, tiny_spec)
    process = _playbook(["run", spec, "--workers", "2", "--trials", "6", "-q"], workdir)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert "database is locked" not in err
    study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    _check_runs(MlflowClient(absolute_sqlite_uri(TRACKING)), study, 6)
    assert "Study 'tiny': 6 trials (6 new in this run)" in out


# ---------------------------------------------------------------------------
# Several machines: PostgreSQL and an MLflow server on loopback


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; as root, run them as the postgres user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL cluster on 127.0.0.1 with databases optuna and mlflow."""
    if not PG_BINS or not (PG_BINS[-1] / "initdb").exists():
        reason = ("PostgreSQL server not installed (no /usr/lib/postgresql/*/bin/initdb); "
                  "apt-get install postgresql to run this test")
        if os.environ.get("PLAYBOOK_REQUIRE_SERVERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    psycopg = pytest.importorskip("psycopg", reason="pip install 'psycopg[binary]' to run this test")
    bin_dir = PG_BINS[-1]
    folder = Path(tempfile.mkdtemp(prefix="playbook-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    subprocess.run(_as_postgres([str(bin_dir / "initdb"), "-D", str(data), "-U", "playbook", "--auth=trust",
                                 "-E", "UTF8"]), check=True, capture_output=True)
    port = _free_port()
    server = subprocess.Popen(_as_postgres([str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                                            "-k", str(folder), "-c", "listen_addresses=127.0.0.1"]),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=playbook dbname=postgres",
                                     autocommit=True) as connection:
                    connection.execute("CREATE DATABASE optuna")
                    connection.execute("CREATE DATABASE mlflow")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        yield f"postgresql+psycopg://playbook@127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    """An MLflow tracking server on 127.0.0.1 with its runs in PostgreSQL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"{postgres}/mlflow", "--artifacts-destination", str(tmp_path / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("mlflow server did not start on 127.0.0.1")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def test_workers_share_postgres_and_mlflow_server(workdir, tiny_spec, postgres, mlflow_server):
    spec = _write_spec(workdir, tiny_spec)
    storage = f"{postgres}/optuna"
    # Two workers started at once, as two machines would be.
    workers = [_playbook(["run", spec, "--trials", "3", "-q", "--storage", storage,
                          "--tracking-uri", mlflow_server], workdir) for _ in range(2)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="tiny", storage=storage)
    _check_runs(MlflowClient(mlflow_server), study, 6)
    assert not (workdir / "mlruns").exists()


# ---------------------------------------------------------------------------
# Killed workers and heartbeats


def _slow_spec(tiny_spec, epochs=40):
    spec = dict(tiny_spec)
    spec["model"] = {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": 32}}
    spec["train"] = dict(tiny_spec["train"], epochs=epochs)
    spec["search"] = {"trials": 2, "heartbeat_interval_s": 1, "grace_period_s": 3}
    return spec


def _wait_for(condition, timeout=300, interval=0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError("condition not met in time")


def _trials():
    if not Path("mlruns/optuna.db").exists():
        return []
    try:
        study = optuna.load_study(study_name="tiny", storage=absolute_sqlite_uri(STORAGE))
    except KeyError:  # the study is not created yet
        return []
    except (IntegrityError, OperationalError):  # the worker is creating Optuna's tables right now
        return []
    return study.get_trials(deepcopy=False)


def test_killed_worker_trial_failed_and_retried(workdir, tiny_spec):
    spec = _write_spec(workdir, _slow_spec(tiny_spec))
    first = _playbook(["run", spec, "--trials", "2", "-q"], workdir)
    _wait_for(lambda: [t.state.name for t in _trials()] == ["COMPLETE", "RUNNING"]
              and "mlflow_run_id" in _trials()[1].user_attrs)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)

    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    killed = _trials()[1]
    assert killed.state.name == "RUNNING"  # no worker has run the stale check yet
    assert client.get_run(killed.user_attrs["mlflow_run_id"]).info.status == "RUNNING"
    time.sleep(4)  # longer than the 3 s grace period

    second = _playbook(["run", spec, "--trials", "1", "-q"], workdir)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err

    trials = _trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = trials[2]
    assert retry.params == killed.params
    assert retry.system_attrs["failed_trial"] == 1
    stale_run = client.get_run(killed.user_attrs["mlflow_run_id"])
    assert stale_run.info.status == "FAILED"
    assert stale_run.data.tags["playbook.failure_reason"] == "stale"
    assert client.get_run(trials[0].user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert client.get_run(retry.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    assert "stopped sending heartbeats" in err


def test_long_alive_trial_not_failed(workdir, tiny_spec):
    spec = _write_spec(workdir, _slow_spec(tiny_spec, epochs=150))
    slow = _playbook(["run", spec, "--trials", "1", "-q"], workdir)
    _wait_for(lambda: [t.state.name for t in _trials()] == ["RUNNING"])
    time.sleep(4)  # the running trial is now older than the grace period
    other = _playbook(["run", spec, "--trials", "1", "-q"], workdir)
    for process in (slow, other):
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err
    first, second = _trials()
    assert first.state.name == "COMPLETE"
    assert second.state.name == "COMPLETE"
    # The second worker checked for stale trials while the slow one was running.
    assert second.datetime_start < first.datetime_complete


# ---------------------------------------------------------------------------
# Failing and pruned trials


def test_all_trials_failed(workdir, tiny_spec, monkeypatch):
    import pipeline.trial

    real_train = pipeline.trial.train_model

    def diverging(model, data, config, device, on_epoch=None):
        with torch.no_grad():
            model.classifier.weight.fill_(float("nan"))
        return real_train(model, data, config, device, on_epoch)

    monkeypatch.setattr(pipeline.trial, "train_model", diverging)
    outcome = run_study(parse_spec(tiny_spec))
    assert outcome.counts == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 2, "feasible": 0}
    assert outcome.best is None
    assert "No trial completed" in render_summary(outcome, "en")
    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.tags["best.trial_number"] == "none"
    for trial in outcome.trials:
        run = client.get_run(trial.run_id)
        assert "dev_macro_f1" not in run.data.metrics
        assert all(value == value for value in run.data.metrics.values())  # no NaN logged


def test_all_failed_exit_code(workdir, tiny_spec, monkeypatch, capsys):
    import pipeline.trial
    from pipeline.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("simulated training failure")

    monkeypatch.setattr(pipeline.trial, "train_model", broken)
    spec = _write_spec(workdir, tiny_spec)
    assert main(["run", spec, "-q"]) == 1
    out = capsys.readouterr().out
    assert "complete 0 · pruned 0 · failed 2" in out
    assert "No trial completed" in out
    run = MlflowClient(absolute_sqlite_uri(TRACKING)).get_run(_trials()[0].user_attrs["mlflow_run_id"])
    assert run.data.tags["playbook.error"] == "RuntimeError: simulated training failure"


def test_median_pruner_marks_runs(workdir, tiny_spec):
    tiny_spec["train"] = {"lr": {"low": 1.0e-6, "high": 3.0e-2, "log": True}, "epochs": 4, "batch_size": 64}
    tiny_spec["search"] = {"trials": 8, "pruner": "median", "pruner_warmup_epochs": 0,
                           "pruner_startup_trials": 2}
    outcome = run_study(parse_spec(tiny_spec))
    assert outcome.counts["PRUNED"] >= 1
    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    for trial in outcome.trials:
        if trial.state != "PRUNED":
            continue
        run = client.get_run(trial.run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags["playbook.trial_state"] == "PRUNED"
        history = client.get_metric_history(trial.run_id, "dev_accuracy")
        assert 1 <= len(history) < 4
        assert "dev_macro_f1" not in run.data.metrics
    assert outcome.best.state == "COMPLETE"


# ---------------------------------------------------------------------------
# MLflow limits


def test_four_hundred_classes_all_stored(workdir):
    tracker = Tracker(TRACKING, "limits")
    run_id = tracker.create_parent_run()
    names = [f"class {index}" for index in range(400)]
    keys = sanitize_keys(names)
    metrics = {f"dev_{kind}/{keys[name]}": float(index) for index, name in enumerate(names)
               for kind in ("precision", "recall", "f1", "support")}
    tracker.log_metrics(run_id, metrics)
    stored = tracker.client.get_run(run_id).data.metrics
    assert len(stored) == 1600
    assert stored["dev_f1/class 399"] == 399.0


def test_sanitized_keys_never_collide():
    keys = sanitize_keys(["cat(1)", "cat[1]", "cat_1_", "dog/ok", "a,b"])
    assert len(set(keys.values())) == 5
    assert keys["dog/ok"] == "dog/ok"
    assert keys["a,b"] == "a_b"
    for key in keys.values():
        assert all(ch.isalnum() or ch in "_-./ " for ch in key)


def test_long_param_goes_to_artifact(workdir, caplog):
    tracker = Tracker(TRACKING, "limits")
    run_id = tracker.create_parent_run()
    tracker.log_params(run_id, {"notes": "x" * 7000, "short": "ok"})
    run = tracker.client.get_run(run_id)
    assert len(run.data.params["notes"]) == 6000
    assert run.data.params["notes"].endswith("...")
    assert run.data.params["short"] == "ok"
    artifacts = [a.path for a in tracker.client.list_artifacts(run_id, "params")]
    assert artifacts == ["params/notes.txt"]
    assert "over MLflow's 6000" in caplog.text


def test_gallery_names_stay_inside_folder():
    from pipeline.stages import gallery_filename

    for category in ("tag:../../evil", "confused:a/b->c", "..", "tag:x\\y"):
        name = gallery_filename(category)
        assert "/" not in name
        assert "\\" not in name
        assert not name.startswith(".")


def test_skipped_bad_files_logged_on_parent(workdir, tiny_spec):
    from PIL import Image

    for label in range(2):
        folder = workdir / "images" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(30):
            image = Image.new("RGB", (8, 8), (40 + 150 * label,) * 3)
            image.putpixel((i % 8, i // 8), (255, 0, i))
            image.save(folder / f"{i}.png")
    (workdir / "images" / "class0" / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    tiny_spec["data"] = {"source": "imagefolder", "path": str(workdir / "images"), "bad_files": "skip"}
    tiny_spec["search"] = {"trials": 1}
    outcome = run_study(parse_spec(tiny_spec))
    client = MlflowClient(absolute_sqlite_uri(TRACKING))
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["data.skipped_files"] == 1
    listed = Path(client.download_artifacts(outcome.parent_run_id, "bad_files.txt", str(workdir)))
    assert "broken.jpg" in listed.read_text()


def test_hyperband_pruner_uses_epochs(tiny_spec):
    from pipeline.study import make_pruner

    tiny_spec["train"]["epochs"] = {"choices": [4, 12]}
    tiny_spec["search"] = {"pruner": "hyperband", "pruner_warmup_epochs": 2}
    pruner = make_pruner(parse_spec(tiny_spec))
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert pruner._min_resource == 2
    assert pruner._max_resource == 12


def test_experiment_created_concurrently(workdir, monkeypatch):
    # Another worker creates the experiment between this worker's lookup and its create.
    from mlflow.tracking import MlflowClient as Client

    first = Tracker(TRACKING, "race")
    real_lookup = Client.get_experiment_by_name
    calls = []

    def stale_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real_lookup(self, name)

    monkeypatch.setattr(Client, "get_experiment_by_name", stale_lookup)
    second = Tracker(TRACKING, "race")
    assert second.experiment_id == first.experiment_id
    assert len(calls) == 2
