"""Optuna storage for one or many workers, with heartbeats that catch dead workers.

Every RDB storage (SQLite on one machine, PostgreSQL or MySQL across machines)
gets a heartbeat: a running trial whose worker stops beating for longer than the
grace period is marked failed the next time any worker starts a trial. Its MLflow
run is then closed as FAILED, and the trial is queued once more with the same
params. A slow trial keeps beating while its worker lives, because Optuna sends
heartbeats from a thread. So it is not failed, and a test checks this with a
second worker started during such a trial.
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import Engine, event
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from pipeline.spec import SearchSpec
from pipeline.tracking import TAG_STATE, Tracker, absolute_sqlite_uri, ensure_sqlite_folder

log = logging.getLogger(__name__)

CREATE_ATTEMPTS = 5
# Seconds a SQLite connection waits for another process's write lock before failing.
SQLITE_LOCK_TIMEOUT_S = 60


class StaleTrialHandler:
    """Close the MLflow run of a trial whose worker died, then queue the trial again once."""

    def __init__(self, tracking_uri: str, study_name: str, max_retry: int = 1) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        log.warning("trial %d stopped sending heartbeats (its worker died); marked failed%s", trial.number,
                    " and queued again with the same params" if self._will_retry(trial) else "")
        if run_id is not None:
            tracker = Tracker(self.tracking_uri, self.study_name)
            if tracker.client.get_run(run_id).info.status == "RUNNING":
                tracker.set_tags(run_id, {TAG_STATE: "FAIL", "playbook.failure_reason": "stale",
                                          "playbook.error": "the worker stopped sending heartbeats (killed or "
                                                            "lost); the trial was marked failed"})
                tracker.finish(run_id, "FAILED")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry(study, trial)

    def _will_retry(self, trial: optuna.trial.FrozenTrial) -> bool:
        return len(trial.system_attrs.get("retry_history", [])) < self.retry._max_retry


def use_write_ahead_log(engine: Engine) -> None:
    """Switch a SQLite engine's connections to write-ahead logging without a sync on every commit.

    Optuna commits each suggested value, intermediate value and attribute on its
    own, and SQLite's default rollback journal syncs the disk several times per
    commit: tens of milliseconds per call on an ordinary disk. With a write-ahead
    log and ``synchronous=NORMAL`` a commit is a file append. A killed process
    loses nothing already committed; an operating-system crash or power cut can
    lose the last commits, but the database stays consistent. Readers no longer
    block the writer, which helps several workers on one machine. The log needs
    shared memory, so the database must be on a local disk, as SQLite advises anyway.
    """
    def configure(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", configure)
    engine.dispose()  # connections opened before the listener reconnect with it


def make_storage(url: str, search: SearchSpec, tracking_uri: str, study_name: str) -> RDBStorage:
    """Open an RDB storage with heartbeats; SQLite gets a lock timeout for several processes."""
    ensure_sqlite_folder(url)
    engine_kwargs = {}
    if url.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": SQLITE_LOCK_TIMEOUT_S}}
    # Workers that start together on an empty database race to create Optuna's tables.
    # The loser gets a duplicate-object error, and the tables exist when it tries again.
    for attempt in range(1, CREATE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
                storage = RDBStorage(
                    absolute_sqlite_uri(url),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=search.heartbeat_interval_s,
                    grace_period=search.grace_period_s,
                    heartbeat_stale_trial_callback=StaleTrialHandler(tracking_uri, study_name),
                )
            if url.startswith("sqlite:"):
                use_write_ahead_log(storage.engine)
            return storage
        except (IntegrityError, ProgrammingError, OperationalError) as error:
            if attempt == CREATE_ATTEMPTS:
                raise
            log.info("opening storage %s failed (%s), attempt %d of %d; retrying", url,
                     type(error).__name__, attempt, CREATE_ATTEMPTS)
            time.sleep(random.uniform(0.5, 1.5) * attempt)
    raise AssertionError("unreachable")
