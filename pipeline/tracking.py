"""MLflow tracking: one experiment per study, a parent run for the study, a child run per trial.

Everything goes through ``MlflowClient`` with explicit run ids, never the fluent
API's active run, so several trials or processes cannot log into each other's runs.
A study's tracker writes from a background thread, so that database commits and
artifact copies overlap the next trial's training instead of delaying it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import logging
import os
import queue
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

DEFAULT_ROOT = Path("mlruns")
TAG_ROLE = "playbook.role"
TAG_STUDY = "playbook.study"
TAG_TRIAL = "playbook.trial_number"
TAG_STATE = "playbook.trial_state"
TAG_STUDY_KEY = "playbook.study_key"  # names one Optuna study in one storage
# Limits of MLflow 3.x (mlflow.utils.validation): values past them make log calls fail.
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS_AND_TAGS = 100
MAX_PARAM_LENGTH = 6000

_KEY_FORBIDDEN = re.compile(r"[^A-Za-z0-9_\-./ ]")


class TrackingError(RuntimeError):
    """A run or experiment that is missing or cannot be used, with the fix."""


def default_tracking_uri(root: Path = DEFAULT_ROOT) -> str:
    """Return ``MLFLOW_TRACKING_URI`` if set, else a SQLite store under ``root``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{root.as_posix()}/mlflow.db"


def sanitize_keys(names: list[str]) -> dict[str, str]:
    """Map each name to an MLflow-safe key, adding a short hash where two would collide."""
    keys: dict[str, str] = {}
    taken: dict[str, str] = {}
    for name in names:
        key = _KEY_FORBIDDEN.sub("_", name)[:200]
        if key in taken and taken[key] != name:
            key = f"{key}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"
        taken[key] = name
        keys[name] = key
    return keys


def sanitize_key(name: str) -> str:
    """Replace characters MLflow rejects in keys with '_'."""
    return _KEY_FORBIDDEN.sub("_", name)[:250]


_FILENAME_FORBIDDEN = re.compile(r"[^A-Za-z0-9_\-.]")


def safe_filename(name: str) -> str:
    """Turn a name from the data (a class, a category, a tag) into one plain file name.

    Path separators become '_', and a leading dot is dropped, so the result can
    never point outside the folder it is written to.
    """
    cleaned = _FILENAME_FORBIDDEN.sub("_", name).lstrip(".")[:120]
    return cleaned or "unnamed"


def _sqlite_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, keep artifacts in an ``artifacts`` folder beside the database."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    return (database.parent / "artifacts").resolve().as_uri()


def absolute_sqlite_uri(uri: str) -> str:
    """Anchor a relative ``sqlite:///`` path at the current folder.

    MLflow caches one store per URI string in a process, so a relative URI used
    from two folders would silently reach the first folder's database.
    """
    if not uri.startswith("sqlite:///") or uri.startswith("sqlite:////"):
        return uri
    path, _, query = uri.removeprefix("sqlite:///").partition("?")
    absolute = "sqlite:///" + Path(path).resolve().as_posix()
    return f"{absolute}?{query}" if query else absolute


def ensure_sqlite_folder(uri: str) -> None:
    """Create the folder of a ``sqlite:///`` database file so SQLite can create the file."""
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def use_write_ahead_log(database: str) -> None:
    """Put a SQLite database file in write-ahead-log mode, which then applies to every later connection.

    A commit then syncs the disk once instead of several times, and readers such as
    a running ``mlflow ui`` no longer block the writer.
    """
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=60)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error as error:
        log.warning("could not switch %s to write-ahead logging (%s); MLflow writes stay slower", database, error)


class BackgroundWriter:
    """One thread that runs submitted MLflow writes in order, so the caller does not wait for them.

    A single thread keeps the order of the writes: a run's metrics and artifacts land
    before the call that closes it. A write that fails is logged with its error and
    counted; it does not stop the writes after it. Files to upload are staged in a
    private folder first, so callers may delete theirs at once.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], None]] | None] = queue.Queue()
        self.staging = Path(tempfile.mkdtemp(prefix="playbook-tracking-"))
        self.failures = 0
        self.busy_seconds = 0.0  # time spent writing, for the trial-overhead benchmark
        self._staged = 0
        self._thread = threading.Thread(target=self._run, name="mlflow-writer", daemon=True)
        self._thread.start()

    def submit(self, description: str, write: Callable[[], None]) -> None:
        """Queue ``write``; ``description`` names it in the log if it fails."""
        self._queue.put((description, write))

    def stage_path(self, filename: str) -> Path:
        """Return a fresh path in the staging folder for a file to upload."""
        self._staged += 1
        folder = self.staging / str(self._staged)
        folder.mkdir()
        return folder / filename

    def flush(self) -> None:
        """Block until every write submitted so far is done."""
        self._queue.join()

    def close(self) -> None:
        """Finish the queued writes, stop the thread and remove the staging folder."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        shutil.rmtree(self.staging, ignore_errors=True)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                description, write = item
                started = time.perf_counter()
                try:
                    write()
                except Exception as error:  # a lost write must not stop the study or the writes after it
                    self.failures += 1
                    log.error("MLflow write failed (%s): %s: %s", description, type(error).__name__, error)
                self.busy_seconds += time.perf_counter() - started
            finally:
                self._queue.task_done()


class Tracker:
    """Experiment and runs of one study.

    With ``background=True`` the writes of values and artifacts, and closing runs,
    happen on a ``BackgroundWriter`` thread; call ``flush`` before reading them back
    and ``close`` at the end. Creating runs and reading stay synchronous.
    """

    def __init__(self, tracking_uri: str, study_name: str, background: bool = False) -> None:
        ensure_sqlite_folder(tracking_uri)
        self.tracking_uri = absolute_sqlite_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        self.study_name = study_name
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None:
            try:
                self.experiment_id = self.client.create_experiment(
                    study_name, artifact_location=self._artifact_location(),
                    tags={TAG_STUDY: study_name})
            except MlflowException as error:
                # Another worker created it between the lookup and the create.
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                log.info("experiment '%s' was just created by another worker; using it", study_name)
                self.experiment_id = self.client.get_experiment_by_name(study_name).experiment_id
        else:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment '{study_name}' is deleted; restore it with "
                                   f"'mlflow experiments restore' or choose another study name")
            self.experiment_id = experiment.experiment_id
        if self.tracking_uri.startswith("sqlite:///"):
            use_write_ahead_log(self.tracking_uri.removeprefix("sqlite:///"))
        self.writer = BackgroundWriter() if background else None
        self._held: dict[str, HeldValues] = {}  # what ``hold`` keeps back, by run id

    def _write(self, description: str, write: Callable[[], None]) -> None:
        if self.writer is None:
            write()
        else:
            self.writer.submit(description, write)

    def flush(self) -> None:
        """Wait for the background writes submitted so far; a no-op without a writer."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Finish the background writes and stop the writer thread; writes after this are synchronous."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
            if writer.failures:
                log.error("%d MLflow write(s) failed in this study; see the errors above", writer.failures)

    @classmethod
    def for_run(cls, tracking_uri: str, run_id: str) -> Tracker:
        """Open the tracker of the study that logged ``run_id``."""
        client = MlflowClient(tracking_uri=absolute_sqlite_uri(tracking_uri))
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise TrackingError(f"run {run_id} not found in {tracking_uri}; check the run id and "
                               "--tracking-uri") from None
        experiment = client.get_experiment(run.info.experiment_id)
        return cls(tracking_uri, experiment.name)

    def _artifact_location(self) -> str | None:
        root = _sqlite_artifact_root(self.tracking_uri)
        return None if root is None else f"{root}/{sanitize_key(self.study_name)}"

    # -- runs ---------------------------------------------------------------

    def create_parent_run(self, study_key: str = "") -> str:
        run = self.client.create_run(self.experiment_id, run_name=f"study-{self.study_name}",
                                     tags={TAG_ROLE: "study", TAG_STUDY: self.study_name,
                                           TAG_STUDY_KEY: study_key})
        return run.info.run_id

    def earliest_parent_run(self, study_key: str, since_ms: int) -> str:
        """Return the earliest parent run with ``study_key`` started at or after ``since_ms``."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(f"tags.`{TAG_ROLE}` = 'study' and tags.`{TAG_STUDY_KEY}` = '{study_key}' "
                           f"and attributes.start_time >= {since_ms}"),
            max_results=100)
        return min(runs, key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id

    def create_trial_run(self, parent_run_id: str, trial_number: int, params: dict[str, Any]) -> str:
        """Start the nested run of one trial and write its params once."""
        run = self.client.create_run(self.experiment_id, run_name=f"trial-{trial_number}", tags={
            "mlflow.parentRunId": parent_run_id,
            TAG_ROLE: "trial",
            TAG_STUDY: self.study_name,
            TAG_TRIAL: str(trial_number),
            TAG_STATE: "RUNNING",
        })
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Close a run as FINISHED, FAILED or KILLED, after writing what ``hold`` kept back for it."""
        self.release(run_id)
        self._write(f"close run {run_id} as {status}", lambda: self.client.set_terminated(run_id, status=status))

    # -- values -------------------------------------------------------------

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        """Write params in batches; a value past MLflow's length limit goes to an artifact."""
        items = []
        for key, value in params.items():
            text = str(value)
            if len(text) > MAX_PARAM_LENGTH:
                log.warning("param %s is %d characters, over MLflow's %d; logging it as "
                            "artifact params/%s.txt and a truncated param",
                            key, len(text), MAX_PARAM_LENGTH, sanitize_key(key))
                self.log_text(run_id, text, f"params/{sanitize_key(key)}.txt")
                text = text[: MAX_PARAM_LENGTH - 3] + "..."
            items.append(Param(sanitize_key(key), text))
        for start in range(0, len(items), MAX_BATCH_PARAMS_AND_TAGS):
            self._log_batch(run_id, params=items[start:start + MAX_BATCH_PARAMS_AND_TAGS])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """Write metrics in batches of at most MLflow's limit; non-finite values are skipped."""
        stamp = int(time.time() * 1000)
        items = [Metric(sanitize_key(key), float(value), stamp, step)
                 for key, value in metrics.items() if value is not None and _finite(value)]
        if run_id in self._held:
            self._held[run_id].metrics.update({(item.key, item.step): item for item in items})
            return
        for start in range(0, len(items), MAX_BATCH_METRICS):
            self._log_batch(run_id, metrics=items[start:start + MAX_BATCH_METRICS])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        items = [RunTag(sanitize_key(key), str(value)[:8000]) for key, value in tags.items()]
        if run_id in self._held:
            self._held[run_id].tags.update({item.key: item for item in items})
            return
        for start in range(0, len(items), MAX_BATCH_PARAMS_AND_TAGS):
            self._log_batch(run_id, tags=items[start:start + MAX_BATCH_PARAMS_AND_TAGS])

    def hold(self, run_id: str) -> None:
        """Hold the metrics, tags and artifacts logged to ``run_id`` from now on until ``release`` or ``finish``.

        MLflow's SQL store spends a few milliseconds on each call, whatever it holds.
        Held metrics and tags go out in as few ``log_batch`` calls as MLflow's limits
        allow, and held artifacts in one ``log_artifacts`` call, so the two dozen
        calls that log a trial's results become about three. A metric logged twice at
        one step keeps its last value, as does a tag.
        """
        self._held.setdefault(run_id, HeldValues())

    def release(self, run_id: str) -> None:
        """Write what ``hold`` kept back for ``run_id`` and stop holding; a no-op for a run not held."""
        held = self._held.pop(run_id, None)
        if held is None:
            return
        metrics, tags = list(held.metrics.values()), list(held.tags.values())
        while metrics or tags:
            tag_part, tags = tags[:MAX_BATCH_PARAMS_AND_TAGS], tags[MAX_BATCH_PARAMS_AND_TAGS:]
            room = MAX_BATCH_METRICS - len(tag_part)  # MLflow caps a batch's metrics, params and tags together
            metric_part, metrics = metrics[:room], metrics[room:]
            self._log_batch(run_id, metrics=metric_part, tags=tag_part)
        if held.files is not None:
            # The writer stages the folder inside a numbered folder of its own, which goes with it.
            scratch = held.files if self.writer is None else held.files.parent
            self._write(f"upload held artifacts to run {run_id}",
                        lambda: self._upload_tree(run_id, held.files, scratch))

    def _held_path(self, run_id: str, name: str) -> Path:
        """Return where the held artifact ``name`` is written, creating the run's folder and its parents."""
        held = self._held[run_id]
        if held.files is None:
            if self.writer is not None:
                held.files = self.writer.stage_path("artifacts")
                held.files.mkdir()
            else:
                held.files = Path(tempfile.mkdtemp(prefix="playbook-artifacts-"))
        path = held.files / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _upload_tree(self, run_id: str, root: Path, scratch: Path) -> None:
        try:
            for folder in sorted(root.rglob("*"), key=lambda path: len(path.parts), reverse=True):
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()  # a gallery with no errors logs nothing
            if any(root.iterdir()):
                self.client.log_artifacts(run_id, str(root))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _log_batch(self, run_id: str, **items: list) -> None:
        kinds = ", ".join(f"{len(values)} {kind}" for kind, values in items.items() if values)
        self._write(f"log {kinds} to run {run_id}", lambda: self.client.log_batch(run_id, **items))

    # -- artifacts ----------------------------------------------------------

    def log_text(self, run_id: str, content: str, name: str) -> None:
        self.log_rendered(run_id, name, lambda path: path.write_text(content, encoding="utf-8"))

    def log_json(self, run_id: str, data: Any, name: str) -> None:
        self.log_text(run_id, json.dumps(data, indent=2, ensure_ascii=False), name)

    def log_state_dict(self, run_id: str, model: torch.nn.Module, name: str = "model/state_dict.pt") -> None:
        """Save the model's weights (state dict only, so loading needs no pickled code)."""
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        # Saved now, not on the writer thread, so training the model further cannot change what is logged.
        self.log_rendered(run_id, name, lambda path: torch.save(state, path), now=True)

    def log_rendered(self, run_id: str, name: str, fill: Callable[[Path], object], now: bool = False) -> None:
        """Log the artifact ``name`` ("folder/file.ext") that ``fill(path)`` writes.

        With a background writer, ``fill`` runs on the writer thread unless ``now``,
        so drawing figures and encoding files stay off the trial's thread. It must
        therefore read only values that no longer change.
        """
        if run_id in self._held:
            self._fill_later(self._held_path(run_id, name), fill, now, f"write {name} for run {run_id}")
            return
        folder, _, filename = name.rpartition("/")
        folder = folder or None
        if self.writer is None:
            with tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch) / filename
                fill(path)
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
            return
        path = self.writer.stage_path(filename)
        if now:
            fill(path)
            self._upload(run_id, path, folder)
            return

        def write() -> None:
            try:
                fill(path)
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
            finally:
                shutil.rmtree(path.parent, ignore_errors=True)

        self._write(f"write and upload {name} to run {run_id}", write)

    def log_rendered_folder(self, run_id: str, folder: str, fill: Callable[[Path], object]) -> None:
        """Log the files that ``fill(path)`` writes into the empty folder ``path`` under ``folder``.

        Like ``log_rendered``: with a background writer ``fill`` runs on the writer thread.
        An empty folder logs nothing.
        """
        if run_id in self._held:
            target = self._held_path(run_id, folder)
            target.mkdir(exist_ok=True)
            self._fill_later(target, fill, False, f"write {folder}/ for run {run_id}")
            return
        if self.writer is None:
            with tempfile.TemporaryDirectory() as scratch:
                fill(Path(scratch))
                if any(Path(scratch).iterdir()):
                    self.client.log_artifacts(run_id, scratch, artifact_path=folder)
            return
        staged = self.writer.stage_path(safe_filename(folder))
        staged.mkdir()

        def write() -> None:
            try:
                fill(staged)
                if any(staged.iterdir()):
                    self.client.log_artifacts(run_id, str(staged), artifact_path=folder)
            finally:
                shutil.rmtree(staged.parent, ignore_errors=True)

        self._write(f"write and upload {folder}/ to run {run_id}", write)

    def _fill_later(self, path: Path, fill: Callable[[Path], object], now: bool, description: str) -> None:
        """Run ``fill(path)`` on the writer thread, or at once when ``now`` or without a writer."""
        if self.writer is None or now:
            fill(path)
        else:
            self._write(description, lambda: fill(path))

    def _upload(self, run_id: str, staged: Path, folder: str | None) -> None:
        def upload() -> None:
            try:
                self.client.log_artifact(run_id, str(staged), artifact_path=folder)
            finally:
                shutil.rmtree(staged.parent, ignore_errors=True)

        self._write(f"upload {folder or '.'}/{staged.name} to run {run_id}", upload)


@dataclass
class HeldValues:
    """Metrics, tags and artifacts that ``Tracker.hold`` keeps back for one run until it is released."""

    metrics: dict[tuple[str, int], Metric] = field(default_factory=dict)  # by key and step
    tags: dict[str, RunTag] = field(default_factory=dict)
    files: Path | None = None  # artifacts, laid out as they will be in the run


def _finite(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
