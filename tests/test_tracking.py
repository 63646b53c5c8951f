"""The background MLflow writer: order, failures that do not stop later writes, flushing, batching."""

import json
import logging
import threading

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.tracking import Tracker


@pytest.fixture
def tracker(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "writer-test", background=True)
    yield tracker
    tracker.close()


def test_background_writes_land_in_order(tracker, tmp_path):
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    for step in range(3):
        tracker.log_metrics(run_id, {"loss": 1.0 / (step + 1)}, step=step)
    tracker.log_text(run_id, "index,tag\n1,blurry\n", "scratch.csv")
    tracker.log_json(run_id, {"a": 1}, "nested/record.json")
    tracker.log_state_dict(run_id, torch.nn.Linear(2, 1))
    tracker.set_tags(run_id, {"state": "done"})
    tracker.finish(run_id, "FINISHED")
    tracker.flush()

    client = MlflowClient(tracker.tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert run.data.tags["state"] == "done"
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"scratch.csv", "nested", "model"} <= names
    folder = client.download_artifacts(run_id, "", str(tmp_path / "down"))
    assert (tmp_path / "down" / "scratch.csv").read_text() == "index,tag\n1,blurry\n"
    state = torch.load(f"{folder}/model/state_dict.pt", weights_only=True)
    assert set(state) == {"weight", "bias"}


def test_caller_does_not_wait_for_writes(tracker):
    release = threading.Event()
    done = []
    tracker.writer.submit("blocked write", lambda: (release.wait(10), done.append(1)))
    tracker.writer.submit("next write", lambda: done.append(2))
    assert done == []  # both writes are still queued behind the blocked one
    release.set()
    tracker.flush()
    assert done == [1, 2]


def test_failed_write_is_logged_and_later_writes_run(tracker, caplog):
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    with caplog.at_level(logging.ERROR):
        tracker.log_metrics("0" * 32, {"x": 1.0})
        tracker.log_metrics(run_id, {"x": 2.0})
        tracker.flush()
    assert tracker.writer.failures == 1
    assert "MLflow write failed (log 1 metrics to run 00000000" in caplog.text
    assert MlflowClient(tracker.tracking_uri).get_run(run_id).data.metrics["x"] == 2.0


def test_close_flushes_and_removes_staging(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "close-test", background=True)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    tracker.log_text(run_id, "hello\n", "note.txt")
    staging = tracker.writer.staging
    tracker.close()
    assert not staging.exists()
    assert tracker.writer is None
    tracker.finish(run_id)  # synchronous once closed
    assert MlflowClient(tracker.tracking_uri).get_run(run_id).info.status == "FINISHED"


@pytest.mark.parametrize("background", [True, False])
def test_held_values_land_in_few_calls(tmp_path, background):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "batch-test", background=background)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    calls = _record_calls(tracker.client, "log_batch")
    tracker.hold(run_id)
    tracker.log_metrics(run_id, {f"m{i}": float(i) for i in range(1500)}, step=5)
    tracker.log_metrics(run_id, {"m0": -1.0}, step=5)  # the same key at the same step keeps the last value
    tracker.set_tags(run_id, {f"t{i}": i for i in range(150)})
    assert calls == []  # held until the run closes
    tracker.finish(run_id, "FINISHED")  # closing writes the held values first
    tracker.close()

    # 1,500 metrics and 150 tags: 100 tags + 900 metrics, then 50 tags + 600 metrics.
    assert [(len(kwargs["metrics"]), len(kwargs["tags"])) for _, kwargs in calls] == [(900, 100), (600, 50)]
    run = MlflowClient(tracker.tracking_uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(run.data.metrics) == 1500
    assert run.data.metrics["m0"] == -1.0
    assert run.data.metrics["m1499"] == 1499.0
    assert sum(key.startswith("t") for key in run.data.tags) == 150


def test_rendered_artifacts_are_drawn_on_the_writer_thread(tracker, tmp_path):
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    threads = []

    def draw(path):
        threads.append(threading.current_thread().name)
        path.write_text("drawn")

    def draw_folder(folder):
        (folder / "a.txt").write_text("a")
        (folder / "b.txt").write_text("b")

    tracker.log_rendered(run_id, "figures/plot.txt", draw)
    tracker.log_rendered_folder(run_id, "gallery", draw_folder)
    tracker.log_rendered_folder(run_id, "empty", lambda folder: None)
    tracker.flush()

    assert threads == ["mlflow-writer"]
    tracker.client.download_artifacts(run_id, "", str(tmp_path / "down"))
    assert (tmp_path / "down" / "figures" / "plot.txt").read_text() == "drawn"
    assert sorted(p.name for p in (tmp_path / "down" / "gallery").iterdir()) == ["a.txt", "b.txt"]
    assert not (tmp_path / "down" / "empty").exists()
    assert list(tracker.writer.staging.iterdir()) == []  # staged copies are removed after upload


@pytest.mark.parametrize("background", [True, False])
def test_held_artifacts_upload_once(tmp_path, background):
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "held-files", background=background)
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    folder_uploads = _record_calls(tracker.client, "log_artifacts")
    file_uploads = _record_calls(tracker.client, "log_artifact")
    tracker.hold(run_id)
    tracker.log_json(run_id, {"a": 1}, "record.json")
    tracker.log_text(run_id, "hello", "notes/readme.txt")
    tracker.log_state_dict(run_id, torch.nn.Linear(2, 1))
    tracker.log_rendered_folder(run_id, "gallery", lambda folder: (folder / "x.png").write_bytes(b"png"))
    tracker.log_rendered_folder(run_id, "empty", lambda folder: None)
    tracker.flush()
    assert folder_uploads + file_uploads == []
    tracker.release(run_id)
    tracker.close()

    assert len(folder_uploads) == 1
    assert file_uploads == []
    tracker.client.download_artifacts(run_id, "", str(tmp_path / "down"))
    down = tmp_path / "down"
    assert json.loads((down / "record.json").read_text()) == {"a": 1}
    assert (down / "notes" / "readme.txt").read_text() == "hello"
    assert set(torch.load(down / "model" / "state_dict.pt", weights_only=True)) == {"weight", "bias"}
    assert (down / "gallery" / "x.png").read_bytes() == b"png"
    assert not (down / "empty").exists()


def _record_calls(client, name):
    """Wrap the client's method ``name`` so that it still runs and each call's (args, kwargs) is recorded."""
    calls = []
    method = getattr(client, name)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return method(*args, **kwargs)

    setattr(client, name, recording)
    return calls
