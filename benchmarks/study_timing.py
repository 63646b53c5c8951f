"""Run a study with `playbook run` in a temporary folder and read its trials' timing back.

Each study runs as its own `python -m pipeline run` command, so every run starts
cold: no run inherits imports, caches or warmed-up kernels from an earlier run in
the same process. The Optuna and MLflow stores live in a fresh temporary folder
per run, so no benchmark touches the repository's mlruns/ and no run resumes
another's study.
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from mlflow.tracking import MlflowClient

from common import ROOT

COMPLETE = optuna.trial.TrialState.COMPLETE
PRUNED = optuna.trial.TrialState.PRUNED
FAIL = optuna.trial.TrialState.FAIL


@dataclass(frozen=True)
class StudyRun:
    """One finished study: its trials and the wall-clock times around them."""

    trials: list[optuna.trial.FrozenTrial]  # sorted by trial number
    wall_s: float  # the whole `playbook run` command
    setup_s: float  # from the command's start to the first trial's start: imports, data, baseline, MLflow
    epoch_seconds: dict[int, float]  # trial number -> seconds spent in training epochs, from MLflow

    def in_state(self, state: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
        return [trial for trial in self.trials if trial.state == state]

    @property
    def first_start(self) -> datetime.datetime:
        return min(trial.datetime_start for trial in self.trials)

    @property
    def trial_phase_s(self) -> float:
        """Seconds from the first trial's start to the last trial's end."""
        last = max(trial.datetime_complete for trial in self.trials if trial.datetime_complete is not None)
        return (last - self.first_start).total_seconds()

    @property
    def epochs(self) -> int:
        """Epochs run over all trials: each epoch reports one intermediate value."""
        return sum(len(trial.intermediate_values) for trial in self.trials)


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float:
    """Return the seconds from the trial's start to its end."""
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def run_in_tempdir(raw_spec: dict[str, Any], trials: int, workers: int = 1) -> StudyRun:
    """Run ``trials`` trials of the spec with `playbook run` in a new temporary folder and read them back.

    Raises:
        RuntimeError: when the command fails or records no trials. The message ends with the command's output.
    """
    with tempfile.TemporaryDirectory(prefix="playbook-bench-") as name:
        folder = Path(name)
        spec_path = folder / f"{raw_spec['name']}.yaml"
        spec_path.write_text(yaml.safe_dump(raw_spec, sort_keys=False))
        storage = f"sqlite:///{folder}/optuna.db"
        tracking_uri = f"sqlite:///{folder}/mlflow.db"
        command = [sys.executable, "-m", "pipeline", "run", str(spec_path), "--quiet", "--trials", str(trials),
                   "--workers", str(workers), "--storage", storage, "--tracking-uri", tracking_uri]
        # Optuna stamps trials with naive local time, so the command's start is taken the same way.
        called_at = datetime.datetime.now()
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall_s = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` failed with exit code {result.returncode}:\n"
                               f"{(result.stdout + result.stderr)[-3000:]}")

        study = optuna.load_study(study_name=raw_spec["name"], storage=storage)
        frozen = sorted(study.get_trials(deepcopy=False), key=lambda trial: trial.number)
        epoch_seconds = read_epoch_seconds(tracking_uri, frozen)
    if not frozen:
        raise RuntimeError(f"study '{raw_spec['name']}' recorded no trials, so there is no timing to read. "
                           f"Output of `playbook run`:\n{(result.stdout + result.stderr)[-3000:]}")
    setup_s = (min(trial.datetime_start for trial in frozen) - called_at).total_seconds()
    return StudyRun(frozen, wall_s, setup_s, epoch_seconds)


def read_epoch_seconds(tracking_uri: str, trials: list[optuna.trial.FrozenTrial]) -> dict[int, float]:
    """Sum each trial's per-epoch ``epoch_seconds`` metric from its MLflow run."""
    client = MlflowClient(tracking_uri)
    seconds = {}
    for trial in trials:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id is not None:
            seconds[trial.number] = sum(metric.value for metric in client.get_metric_history(run_id, "epoch_seconds"))
    return seconds
