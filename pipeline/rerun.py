"""Rerun one stage of a logged trial, for example after changing error-analysis thresholds.

The trial's weights, split and spec come from its MLflow artifacts. The result
goes to a new run nested under the original and tagged with its id, and the
figures that changed are reported next to the originals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.error_analysis import fit_thresholds, read_manual_tags
from pipeline.logged import LoggedTrial, load_logged_trial
from pipeline.spec import StudySpec
from pipeline.stages import (
    SCORE_FIELDS,
    diagnosis_stage,
    error_analysis_stage,
    evaluate_stage,
    log_diagnosis,
    log_error_analysis,
    log_evaluation,
)
from pipeline.study import resolve_device
from pipeline.tracking import TAG_ROLE, TAG_STUDY, Tracker

log = logging.getLogger(__name__)

STAGES = ("evaluate", "error-analysis", "diagnosis")


@dataclass(frozen=True)
class Change:
    """One figure of the rerun next to the original's."""

    name: str
    before: float | str | None
    after: float | str | None

    @property
    def changed(self) -> bool:
        if isinstance(self.before, float) and isinstance(self.after, float):
            return abs(self.before - self.after) > 1e-12
        return self.before != self.after


@dataclass(frozen=True)
class RerunResult:
    """The new run and how its figures compare with the original run's."""

    original_run_id: str
    run_id: str
    stage: str
    changes: list[Change]
    remeasured: dict[str, float]  # timings, which differ on every run and are not compared


def rerun_stage(run_id: str, stage: str, tracking_uri: str, spec: StudySpec | None = None) -> RerunResult:
    """Rerun ``stage`` of the trial logged as ``run_id`` and log the result to a new nested run.

    Args:
        run_id: the MLflow run id of a finished trial.
        stage: one of ``evaluate``, ``error-analysis`` or ``diagnosis``.
        tracking_uri: the MLflow tracking URI that contains the run.
        spec: settings to use instead of the logged spec (its data must match the logged split).
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage '{stage}'; use one of {', '.join(STAGES)}")
    client_tracker = Tracker.for_run(tracking_uri, run_id)
    trial = load_logged_trial(client_tracker, run_id)
    spec = spec or trial.spec
    new_run = client_tracker.client.create_run(
        client_tracker.experiment_id, run_name=f"rerun-{stage}-trial-{trial.trial_number}",
        tags={"mlflow.parentRunId": run_id, TAG_ROLE: "rerun", TAG_STUDY: trial.spec.name,
              "playbook.rerun_of": run_id, "playbook.stage": stage})
    new_run_id = new_run.info.run_id
    try:
        changes, remeasured = _STAGE_RUNNERS[stage](client_tracker, new_run_id, trial, spec)
    except BaseException:
        client_tracker.finish(new_run_id, "FAILED")
        raise
    client_tracker.finish(new_run_id, "FINISHED")
    return RerunResult(run_id, new_run_id, stage, changes, remeasured)


def _rerun_evaluate(tracker: Tracker, run_id: str, trial: LoggedTrial, spec: StudySpec
                    ) -> tuple[list[Change], dict[str, float]]:
    data, split = trial.load_data(spec)
    prepared = trial.prepare(data, split, ("train", "train_dev", "dev"))
    evaluation = evaluate_stage(trial.build_model(), prepared, resolve_device(spec.device), data.num_classes,
                                spec.latency)
    log_evaluation(tracker, run_id, evaluation, data.class_names, split.hash, step=0)
    changes = []
    for part, score in evaluation.scores.items():
        for field in SCORE_FIELDS:
            changes.append(Change(f"{part}_{field}", trial.evaluation[part][field], getattr(score, field)))
        changes.append(Change(f"{part}_confusion", str(trial.evaluation[part]["confusion"]), str(score.confusion)))
    remeasured = {}
    if evaluation.latency is not None:
        remeasured = {"latency_p50_ms": evaluation.latency.p50_ms, "latency_p95_ms": evaluation.latency.p95_ms}
    return changes, remeasured


def _rerun_error_analysis(tracker: Tracker, run_id: str, trial: LoggedTrial, spec: StudySpec
                          ) -> tuple[list[Change], dict[str, float]]:
    data, split = trial.load_data(spec)
    prepared = trial.prepare(data, split, ("dev",))
    evaluation = evaluate_stage(trial.build_model(), prepared, resolve_device(spec.device), data.num_classes,
                                latency=None, parts=("dev",))
    config = spec.error_analysis
    thresholds = fit_thresholds(data.images[torch.from_numpy(split.train)], config)
    tags = read_manual_tags(config.manual_tags, len(data.labels)) if config.manual_tags else None
    analysis = error_analysis_stage(evaluation, data, split.dev, thresholds, config, tags)
    log_error_analysis(tracker, run_id, analysis, data, config, step=0)

    before = (trial.error_analysis or {}).get("breakdown", {})
    changes = [Change("dev_errors", (trial.error_analysis or {}).get("error_count"), analysis.error_count)]
    for name in sorted(set(before) | set(analysis.breakdown)):
        old = before.get(name, {}).get("count")
        new = analysis.breakdown[name].count if name in analysis.breakdown else None
        changes.append(Change(f"{name} count", old, new))
    for name, value in analysis.thresholds.items():
        changes.append(Change(f"threshold {name}", (trial.error_analysis or {}).get("thresholds", {}).get(name),
                              value))
    return changes, {}


def _rerun_diagnosis(tracker: Tracker, run_id: str, trial: LoggedTrial, spec: StudySpec
                     ) -> tuple[list[Change], dict[str, float]]:
    errors = {part: 1.0 - trial.evaluation[part]["accuracy"] for part in ("train", "train_dev", "dev")}
    sizes = {part: sum(trial.evaluation[part]["support"]) for part in ("train", "train_dev", "dev")}
    diagnosis = diagnosis_stage(errors, spec.diagnosis, sizes)
    log_diagnosis(tracker, run_id, diagnosis, step=0)
    before = trial.diagnosis or {}
    changes = [Change(name, before.get(name), value) for name, value in diagnosis.gaps().items()]
    changes.append(Change("ranked", str(before.get("ranked")), str(diagnosis.ranked)))
    return changes, {}


_STAGE_RUNNERS = {
    "evaluate": _rerun_evaluate,
    "error-analysis": _rerun_error_analysis,
    "diagnosis": _rerun_diagnosis,
}


def render_rerun(result: RerunResult) -> str:
    """Write which figures changed, old and new, and the new run's id."""
    changed = [change for change in result.changes if change.changed]
    lines = [f"Reran stage '{result.stage}' of run {result.original_run_id}; logged as run {result.run_id}.",
             f"{len(changed)} of {len(result.changes)} figures changed."]
    for change in changed:
        lines.append(f"  {change.name}: {_show(change.before)} -> {_show(change.after)}")
    for name, value in result.remeasured.items():
        lines.append(f"  {name} (remeasured): {value:.4f}")
    return "\n".join(lines)


def _show(value: float | str | None) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
