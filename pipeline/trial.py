"""One Optuna trial: sample hyperparameters, then train, evaluate, analyze errors and diagnose.

Every stage is a function of its own module; this module only wires them
together and records what each returns in the trial's MLflow run.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from pipeline import plots
from pipeline.data import ImageData, PreparedData, Split
from pipeline.diagnosis import Diagnosis, diagnose, render
from pipeline.error_analysis import ErrorAnalysis, analyze_errors
from pipeline.evaluate import Latency, Predictions, evaluate, measure_latency, predictions
from pipeline.metrics import Metrics, classification_metrics
from pipeline.models import build_model, count_parameters
from pipeline.spec import METRICS, PER_EPOCH_METRICS, StudySpec, TrainSpec
from pipeline.tracking import TAG_STATE, Tracker, sanitize_keys
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
    brightness_thresholds: tuple[float, float]
    tracker: Tracker
    parent_run_id: str
    lang: str


@dataclass(frozen=True)
class TrialResult:
    """Everything one finished trial measured."""

    hyperparameters: dict[str, Any]
    training: TrainResult
    dev: Metrics
    train: Metrics
    train_dev: Metrics
    latency: Latency
    param_count: int
    errors: ErrorAnalysis
    diagnosis: Diagnosis
    objective: float
    constraint_violations: dict[str, float]

    @property
    def feasible(self) -> bool:
        return all(value <= 0 for value in self.constraint_violations.values())

    def metric(self, name: str) -> float:
        """Return one of the spec's metric names measured on dev."""
        if name == "latency_p50_ms":
            return self.latency.p50_ms
        if name == "latency_p95_ms":
            return self.latency.p95_ms
        if name == "param_count":
            return float(self.param_count)
        return float(getattr(self.dev, name))


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
    trial.set_user_attr("dev_metrics", {name: result.metric(name) for name in METRICS})
    trial.set_user_attr("diagnosis", result.diagnosis.to_dict())
    tracker.set_tags(run_id, {TAG_STATE: "COMPLETE", "playbook.feasible": result.feasible})
    tracker.finish(run_id, "FINISHED")
    return result.objective


def _run_stages(trial: optuna.Trial, context: StudyContext, hyperparameters: dict[str, Any],
                run_id: str) -> TrialResult:
    spec, data, tracker, device = context.spec, context.data, context.tracker, context.device
    arch = hyperparameters["arch"]
    knobs = {key.split(".", 1)[1]: value for key, value in hyperparameters.items() if key.startswith(f"{arch}.")}
    seed = spec.seed + trial.number
    torch.manual_seed(seed)
    model = build_model(arch, data.channels, data.num_classes, data.image_size, knobs,
                        dropout=hyperparameters["dropout"])
    config = TrainConfig(**{name: hyperparameters[name] for name in
                            ("optimizer", "lr", "weight_decay", "momentum", "batch_size", "epochs",
                             "schedule", "augment_flip")}, seed=seed)
    labels = list(range(data.num_classes))
    # A pruner needs a per-epoch objective (the spec enforces that); otherwise report accuracy.
    report_metric = spec.objective.metric if spec.objective.metric in PER_EPOCH_METRICS else "accuracy"

    def on_epoch(epoch: EpochResult) -> None:
        dev_now = classification_metrics(context.prepared.y["dev"].numpy(), epoch.dev_predicted, labels)
        tracker.log_metrics(run_id, {"train_loss": epoch.train_loss, "train_accuracy": epoch.train_accuracy,
                                     "dev_accuracy": epoch.dev_accuracy, f"dev_{report_metric}_epoch":
                                     getattr(dev_now, report_metric), "lr": epoch.lr,
                                     "epoch_seconds": epoch.seconds}, step=epoch.epoch)
        log.info("trial %d epoch %d/%d: train_loss %.4f train_acc %.4f dev_acc %.4f (%.1fs)",
                 trial.number, epoch.epoch + 1, config.epochs, epoch.train_loss,
                 epoch.train_accuracy, epoch.dev_accuracy, epoch.seconds)
        trial.report(getattr(dev_now, report_metric), epoch.epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch.epoch + 1}")

    training = train_model(model, context.prepared, config, device, on_epoch)

    # Evaluate: one pass per split; error analysis reuses the dev outputs.
    outputs: dict[str, Predictions] = {
        name: predictions(model, context.prepared.x[name], context.prepared.y[name], device)
        for name in ("train", "train_dev", "dev")
    }
    scores = {name: evaluate(output, data.num_classes) for name, output in outputs.items()}
    latency = measure_latency(model, context.prepared.x["dev"], device, spec.latency.batch_size,
                              spec.latency.warmup, spec.latency.repeats)
    param_count = count_parameters(model)

    dev_index = context.split.dev
    errors = analyze_errors(data.images[torch.from_numpy(dev_index)], dev_index, data.sources,
                            outputs["dev"], np.asarray(scores["dev"].confusion), data.class_names,
                            context.brightness_thresholds, spec.error_analysis)
    diagnosis = diagnose(scores["train"].error, scores["train_dev"].error, scores["dev"].error,
                         spec.diagnosis.human_level_error, spec.diagnosis.min_gap)

    partial = TrialResult(hyperparameters, training, scores["dev"], scores["train"], scores["train_dev"],
                          latency, param_count, errors, diagnosis, 0.0, {})
    violations = {c.metric: c.violation(partial.metric(c.metric)) for c in spec.objective.constraints}
    result = TrialResult(**{**partial.__dict__, "objective": partial.metric(spec.objective.metric),
                            "constraint_violations": violations})
    _log_result(tracker, run_id, result, model, context)
    return result


def _log_result(tracker: Tracker, run_id: str, result: TrialResult, model: torch.nn.Module,
                context: StudyContext) -> None:
    data, spec = context.data, context.spec
    dev = result.dev
    metrics: dict[str, float] = {
        "objective": result.objective,
        "feasible": float(result.feasible),
        "dev_accuracy": dev.accuracy,
        "dev_macro_precision": dev.macro_precision,
        "dev_macro_recall": dev.macro_recall,
        "dev_macro_f1": dev.macro_f1,
        "train_error": result.diagnosis.train_error,
        "train_dev_error": result.diagnosis.train_dev_error,
        "dev_error": result.diagnosis.dev_error,
        "avoidable_bias": result.diagnosis.avoidable_bias,
        "variance": result.diagnosis.variance,
        "data_mismatch": result.diagnosis.data_mismatch,
        "latency_p50_ms": result.latency.p50_ms,
        "latency_p95_ms": result.latency.p95_ms,
        "param_count": float(result.param_count),
        "train_seconds": result.training.seconds,
        "train_images_per_second": result.training.images_per_second,
        "dev_errors": float(result.errors.error_count),
    }
    class_keys = sanitize_keys(data.class_names)
    for label, name in enumerate(data.class_names):
        key = class_keys[name]
        metrics[f"dev_precision/{key}"] = dev.precision[label]
        metrics[f"dev_recall/{key}"] = dev.recall[label]
        metrics[f"dev_f1/{key}"] = dev.f1[label]
        metrics[f"dev_support/{key}"] = float(dev.support[label])
    category_keys = sanitize_keys(list(result.errors.breakdown))
    for name, share in result.errors.breakdown.items():
        metrics[f"error_share/{category_keys[name]}"] = share.share_of_errors
    for name, violation in result.constraint_violations.items():
        metrics[f"constraint/{name}"] = violation
    tracker.log_metrics(run_id, metrics, step=len(result.training.history))
    tracker.set_tags(run_id, {"playbook.latency_device": result.latency.device,
                              "playbook.latency_batch_size": result.latency.batch_size,
                              "playbook.latency_threads": result.latency.threads,
                              "playbook.zero_division": dev.zero_division,
                              "playbook.main_gap": result.diagnosis.main_gap or "none"})

    evaluation = {
        "labels": data.class_names,
        "zero_division": dev.zero_division,
        "dev": asdict(dev), "train": asdict(result.train), "train_dev": asdict(result.train_dev),
        "latency": asdict(result.latency),
        "param_count": result.param_count,
        "split_hash": context.split.hash,
    }
    tracker.log_json(run_id, evaluation, "evaluation.json")
    tracker.log_json(run_id, result.errors.to_dict(), "error_analysis.json")
    tracker.log_json(run_id, result.diagnosis.to_dict(), "diagnosis.json")
    tracker.log_text(run_id, render(result.diagnosis, context.lang) + "\n", f"diagnosis.{context.lang}.txt")
    tracker.log_json(run_id, {"arch": result.hyperparameters["arch"], "hyperparameters": result.hyperparameters,
                              "in_channels": data.channels, "num_classes": data.num_classes,
                              "image_size": data.image_size, "class_names": data.class_names,
                              "normalization": asdict(context.prepared.stats)}, "model/config.json")
    tracker.log_state_dict(run_id, model)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        plots.confusion_matrix_png(dev.confusion, data.class_names, folder / "confusion_matrix.png",
                                   f"dev confusion matrix, accuracy {dev.accuracy:.4f}")
        shown = result.errors.errors[: spec.error_analysis.grid_size]
        images = data.images[torch.tensor([record.index for record in shown], dtype=torch.int64)]
        captions = [f"#{r.index} {r.true_label}→{r.predicted_label} ({r.confidence:.2f})" for r in shown]
        plots.image_grid_png(images, captions, folder / "misclassified.png",
                             "dev errors: true→predicted (confidence)")
        tracker.log_file(run_id, folder / "confusion_matrix.png")
        tracker.log_file(run_id, folder / "misclassified.png")
