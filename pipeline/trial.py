"""One Optuna trial: sample hyperparameters, then train, evaluate, analyze errors and diagnose.

Every stage is a function of its own module; this module only wires them
together and records what each returns in the trial's MLflow run.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import optuna
import torch

from pipeline import __version__, progress
from pipeline.data import ImageData, PreparedData, Split, resize_prepared
from pipeline.diagnosis import Diagnosis
from pipeline.error_analysis import ErrorAnalysis
from pipeline.logged import MODEL_FORMAT_VERSION
from pipeline.metrics import classification_metrics
from pipeline.models import build_model, flops_per_image, input_resolution
from pipeline.spec import METRICS, PER_EPOCH_METRICS, StudySpec, TrainSpec
from pipeline.stages import (
    Evaluation,
    diagnosis_stage,
    error_analysis_stage,
    evaluate_stage,
    log_diagnosis,
    log_error_analysis,
    log_evaluation,
)
from pipeline.tracking import TAG_STATE, Tracker
from pipeline.train import Diverged, EpochResult, TrainConfig, TrainResult, train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StudyContext:
    """State shared by every trial of a study: spec, data, split, device and tracking."""

    spec: StudySpec
    data: ImageData
    split: Split
    prepared: PreparedData
    device: torch.device
    thresholds: dict[str, float]  # error-analysis cut-offs fitted on train images
    manual_tags: dict[int, list[str]] | None
    pretrained: dict[str, torch.Tensor] | None  # ImageNet weights for resnet18_transfer
    tracker: Tracker
    parent_run_id: str
    lang: str
    resized: dict[int, PreparedData] = field(default_factory=dict)  # prepared data by input resolution
    flops: dict[str, int] = field(default_factory=dict)  # FLOPs per image by architecture, knobs and resolution

    def prepared_at(self, size: int) -> PreparedData:
        """Return the prepared data at ``size`` pixels, resizing once per size and process."""
        if size == self.data.image_size:
            return self.prepared
        if size not in self.resized:
            log.info("resizing the prepared images once from %d to %d pixels", self.data.image_size, size)
            self.resized[size] = resize_prepared(self.prepared, size)
        return self.resized[size]


@dataclass(frozen=True)
class TrialResult:
    """Everything one finished trial measured."""

    hyperparameters: dict[str, Any]
    training: TrainResult
    evaluation: Evaluation
    errors: ErrorAnalysis
    diagnosis: Diagnosis
    objective: float
    constraint_violations: dict[str, float]

    @property
    def feasible(self) -> bool:
        return all(value <= 0 for value in self.constraint_violations.values())


def sample_hyperparameters(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Draw each searched hyperparameter from the trial; fixed ones pass through.

    Model knobs are named ``<arch>.<knob>`` so that two architectures never share
    one Optuna parameter with two distributions.
    """
    values: dict[str, Any] = {}
    for name in TrainSpec.model_fields:
        setting = getattr(spec.train, name)
        values[name] = setting.suggest(trial, name) if hasattr(setting, "suggest") else setting
    arch = spec.model.arch.suggest(trial, "arch")
    values["arch"] = arch
    for knob, setting in spec.model.knobs(arch).items():
        values[f"{arch}.{knob}"] = setting.suggest(trial, f"{arch}.{knob}")
    return values


def model_knobs(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Return the chosen architecture's knobs without their ``<arch>.`` prefix."""
    prefix = f"{hyperparameters['arch']}."
    return {key.removeprefix(prefix): value for key, value in hyperparameters.items() if key.startswith(prefix)}


def run_trial(trial: optuna.Trial, context: StudyContext) -> float:
    """Run every stage for one trial and return the optimizing metric on dev.

    The trial's MLflow run ends FINISHED, KILLED (pruned) or FAILED; an error is
    tagged on the run and re-raised so that Optuna records the trial as failed.
    """
    spec, tracker = context.spec, context.tracker
    hyperparameters = sample_hyperparameters(trial, spec)
    run_id = tracker.create_trial_run(context.parent_run_id, trial.number, hyperparameters)
    trial.set_user_attr("mlflow_run_id", run_id)
    try:
        result = _run_stages(trial, context, hyperparameters, run_id)
    except optuna.TrialPruned:
        tracker.set_tags(run_id, {TAG_STATE: "PRUNED"})
        tracker.finish(run_id, "KILLED")
        raise
    except Exception as error:
        reason = "diverged" if isinstance(error, Diverged) else "exception"
        trial.set_user_attr("failure_reason", reason)
        tracker.set_tags(run_id, {TAG_STATE: "FAIL", "playbook.failure_reason": reason,
                                  "playbook.error": f"{type(error).__name__}: {error}"})
        tracker.finish(run_id, "FAILED")
        raise
    except BaseException:  # KeyboardInterrupt or SystemExit: close the run, then stop
        tracker.set_tags(run_id, {TAG_STATE: "INTERRUPTED"})
        tracker.finish(run_id, "KILLED")
        raise

    for name, violation in result.constraint_violations.items():
        trial.set_constraint(name, violation)
    trial.set_user_attr("feasible", result.feasible)
    trial.set_user_attr("dev_metrics", {name: result.evaluation.metric(name) for name in METRICS})
    trial.set_user_attr("diagnosis", result.diagnosis.to_dict())
    tracker.log_metrics(run_id, {"objective": result.objective, "feasible": float(result.feasible),
                                 **{f"constraint/{k}": v for k, v in result.constraint_violations.items()}},
                        step=len(result.training.history))
    tracker.set_tags(run_id, {TAG_STATE: "COMPLETE", "playbook.feasible": result.feasible})
    tracker.finish(run_id, "FINISHED")
    return result.objective


def _run_stages(trial: optuna.Trial, context: StudyContext, hyperparameters: dict[str, Any],
                run_id: str) -> TrialResult:
    spec, data, tracker, device = context.spec, context.data, context.tracker, context.device
    seed = spec.seed + trial.number
    arch, knobs = hyperparameters["arch"], model_knobs(hyperparameters)
    resolution = input_resolution(arch, knobs, data.image_size)
    prepared = context.prepared_at(resolution)
    extra = {}
    if arch == "resnet18_transfer":
        extra["pretrained"] = context.pretrained
        tracker.set_tags(run_id, {"playbook.pretrained": context.pretrained is not None})
    torch.manual_seed(seed)
    model = build_model(arch, data.channels, data.num_classes, resolution, {**knobs, **extra},
                        dropout=hyperparameters["dropout"])
    # Counting runs the model once under FlopCounterMode; trials that share a shape share the count.
    shape = repr((arch, sorted(knobs.items()), data.channels, data.num_classes, resolution))
    if shape not in context.flops:
        context.flops[shape] = flops_per_image(model, data.channels, resolution)
    flops = context.flops[shape]
    tracker.log_metrics(run_id, {"flops_per_image": float(flops), "input_resolution": float(resolution)})
    compute = spec.compute
    config = TrainConfig(**{name: hyperparameters[name] for name in
                            ("optimizer", "lr", "weight_decay", "momentum", "batch_size", "epochs",
                             "schedule", "augment_flip", "augment_crop")},
                         seed=seed, amp=compute.amp, channels_last=compute.channels_last, compile=compute.compile)
    labels = list(range(data.num_classes))
    # A pruner needs a per-epoch objective (the spec enforces that); otherwise report accuracy.
    report_metric = spec.objective.metric if spec.objective.metric in PER_EPOCH_METRICS else "accuracy"

    def on_epoch(epoch: EpochResult) -> None:
        dev_now = classification_metrics(prepared.y["dev"].numpy(), epoch.dev_predicted, labels)
        tracker.log_metrics(run_id, {"train_loss": epoch.train_loss, "train_accuracy": epoch.train_accuracy,
                                     "dev_accuracy": epoch.dev_accuracy, f"dev_{report_metric}_epoch":
                                     getattr(dev_now, report_metric), "lr": epoch.lr,
                                     "epoch_seconds": epoch.seconds}, step=epoch.epoch)
        progress.current().epoch(trial.number, epoch.epoch + 1, config.epochs, epoch.train_loss,
                                 epoch.train_accuracy, epoch.dev_accuracy, epoch.seconds)
        trial.report(getattr(dev_now, report_metric), epoch.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch.epoch + 1}")

    clock = StageClock()
    with clock("train"):
        training = train_model(model, prepared, config, device, on_epoch)
    step = len(training.history)
    # Results logged after training are held, and written in about three MLflow calls when the run closes.
    tracker.hold(run_id)
    with clock("logging"):
        # A training step costs about 3 forward passes (forward, and backward for inputs and weights).
        tracker.log_metrics(run_id, {"train_seconds": training.seconds,
                                     "train_images_per_second": training.images_per_second,
                                     "train_flops_per_second": 3.0 * flops * training.images_per_second},
                            step=step)
        log_model(tracker, run_id, model, hyperparameters, context, resolution)

    with clock("evaluate"):
        known = {"dev": training.dev_logits} if training.dev_logits is not None else None
        evaluation = evaluate_stage(model, prepared, device, data.num_classes, spec.latency, known_logits=known)
    with clock("logging"):
        log_evaluation(tracker, run_id, evaluation, data.class_names, context.split.hash, step)

    with clock("error_analysis"):
        errors = error_analysis_stage(evaluation, data, context.split.dev, context.thresholds,
                                      spec.error_analysis, context.manual_tags)
    with clock("logging"):
        log_error_analysis(tracker, run_id, errors, data, spec.error_analysis, step)

    with clock("diagnosis"):
        scores = evaluation.scores.items()
        diagnosis = diagnosis_stage({name: score.error for name, score in scores}, spec.diagnosis,
                                    {name: sum(score.support) for name, score in scores})
    with clock("logging"):
        log_diagnosis(tracker, run_id, diagnosis, step)

    # Pure training excludes the per-epoch dev scoring, which exists for pruning and the learning curves.
    seconds = {"train_steps": training.seconds - training.dev_seconds, "dev_scoring": training.dev_seconds,
               **{name: value for name, value in clock.seconds.items() if name != "train"}}
    tracker.log_metrics(run_id, {f"stage_seconds/{name}": value for name, value in seconds.items()}, step=step)
    violations = {c.metric: c.violation(evaluation.metric(c.metric)) for c in spec.objective.constraints}
    return TrialResult(hyperparameters, training, evaluation, errors, diagnosis,
                       evaluation.metric(spec.objective.metric), violations)


class StageClock:
    """Wall time per stage name, summed over every ``with clock(name):`` block."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


def log_model(tracker: Tracker, run_id: str, model: torch.nn.Module, hyperparameters: dict[str, Any],
              context: StudyContext, resolution: int) -> None:
    """Log the state dict and the config that rebuilds the model, for reruns and the final test."""
    data = context.data
    tracker.log_json(run_id, {
        "format_version": MODEL_FORMAT_VERSION,
        "playbook_version": __version__,
        "arch": hyperparameters["arch"],
        "knobs": model_knobs(hyperparameters),
        "hyperparameters": hyperparameters,
        "in_channels": data.channels,
        "num_classes": data.num_classes,
        "image_size": resolution,
        "native_image_size": data.image_size,
        "class_names": data.class_names,
        "normalization": asdict(context.prepared.stats),
        "split_hash": context.split.hash,
    }, "model/config.json")
    tracker.log_state_dict(run_id, model)
