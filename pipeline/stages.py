"""The evaluate, error-analysis and diagnosis stages, and how each is recorded in MLflow.

A trial calls them in order; ``playbook rerun`` and ``playbook finalize`` call
them one at a time on a logged trial. Each ``log_*`` function writes one stage's
outputs to a run, so a rerun records exactly what the trial recorded.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import plots
from pipeline.data import ImageData, PreparedData
from pipeline.diagnosis import Diagnosis, diagnose, render
from pipeline.error_analysis import ErrorAnalysis, analyze_errors
from pipeline.evaluate import Latency, Predictions, evaluate, measure_latency, predictions
from pipeline.messages import LANGUAGES
from pipeline.metrics import Metrics
from pipeline.models import count_parameters
from pipeline.spec import DiagnosisSpec, ErrorAnalysisSpec, LatencySpec
from pipeline.tracking import Tracker, safe_filename, sanitize_keys
from pipeline.train import inference_copy

SCORE_FIELDS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


@dataclass(frozen=True)
class Evaluation:
    """Predictions and scores of one model on some splits, and its cost."""

    outputs: dict[str, Predictions]
    scores: dict[str, Metrics]
    latency: Latency | None
    param_count: int

    def metric(self, name: str, split: str = "dev") -> float:
        """Return a spec metric name (accuracy, latency_p95_ms, param_count, ...) on ``split``."""
        if name in ("latency_p50_ms", "latency_p95_ms"):
            if self.latency is None:
                raise ValueError(f"{name} was not measured in this evaluation")
            return getattr(self.latency, name.removeprefix("latency_"))
        if name == "param_count":
            return float(self.param_count)
        return float(getattr(self.scores[split], name))


def evaluate_stage(model: torch.nn.Module, prepared: PreparedData, device: torch.device, num_classes: int,
                   latency: LatencySpec | None, parts: tuple[str, ...] = ("train", "train_dev", "dev"),
                   known_logits: dict[str, torch.Tensor] | None = None) -> Evaluation:
    """Run the model once over each split, score it, and time per-image inference on dev.

    ``known_logits`` are outputs the caller already has for some splits (the train
    stage's dev logits after its last epoch); those splits are not run again.
    Predictions and latency come from the model with batch norm folded into its
    convolutions (``inference_copy``), as the train stage scores dev.
    """
    known_logits = known_logits or {}
    folded = inference_copy(model)
    outputs = {name: Predictions.from_logits(known_logits[name], prepared.y[name]) if name in known_logits
               else predictions(folded, prepared.x[name], prepared.y[name], device) for name in parts}
    scores = {name: evaluate(output, num_classes) for name, output in outputs.items()}
    timing = None
    if latency is not None:
        timing = measure_latency(folded, prepared.x["dev"], device, latency.batch_size, latency.warmup,
                                 latency.repeats)
    return Evaluation(outputs, scores, timing, count_parameters(model))


def error_analysis_stage(evaluation: Evaluation, data: ImageData, dev_indices: np.ndarray,
                         thresholds: dict[str, float], config: ErrorAnalysisSpec,
                         manual_tags: dict[int, list[str]] | None) -> ErrorAnalysis:
    """Categorize the dev errors from the evaluation's predictions; the model is not run again."""
    return analyze_errors(data.images[torch.from_numpy(dev_indices)], dev_indices, data.sources,
                          evaluation.outputs["dev"], np.asarray(evaluation.scores["dev"].confusion),
                          data.class_names, thresholds, config, manual_tags)


def diagnosis_stage(errors: dict[str, float], config: DiagnosisSpec,
                    sizes: dict[str, int] | None = None) -> Diagnosis:
    """Diagnose from error rates keyed by split name (train, train_dev, dev, optionally test)."""
    return diagnose(errors["train"], errors["train_dev"], errors["dev"], config.human_level_error,
                    config.min_gap, errors.get("test"), sizes)


# ---------------------------------------------------------------------------
# Recording


def evaluation_metrics(evaluation: Evaluation, class_names: list[str]) -> dict[str, float]:
    """Flatten an evaluation into MLflow metrics: per split, per dev class, and cost."""
    metrics: dict[str, float] = {}
    for split, score in evaluation.scores.items():
        metrics[f"{split}_error"] = score.error
        if split in ("dev", "test"):
            metrics.update({f"{split}_{name}": getattr(score, name) for name in SCORE_FIELDS})
    if "dev" in evaluation.scores:
        dev = evaluation.scores["dev"]
        keys = sanitize_keys(class_names)
        for label, name in enumerate(class_names):
            metrics[f"dev_precision/{keys[name]}"] = dev.precision[label]
            metrics[f"dev_recall/{keys[name]}"] = dev.recall[label]
            metrics[f"dev_f1/{keys[name]}"] = dev.f1[label]
            metrics[f"dev_support/{keys[name]}"] = float(dev.support[label])
    if evaluation.latency is not None:
        metrics["latency_p50_ms"] = evaluation.latency.p50_ms
        metrics["latency_p95_ms"] = evaluation.latency.p95_ms
    metrics["param_count"] = float(evaluation.param_count)
    return metrics


def evaluation_record(evaluation: Evaluation, class_names: list[str], split_hash: str) -> dict:
    """Return the JSON record of an evaluation, as stored in ``evaluation.json``."""
    return {
        "labels": class_names,
        "zero_division": next(iter(evaluation.scores.values())).zero_division,
        **{split: asdict(score) for split, score in evaluation.scores.items()},
        "latency": asdict(evaluation.latency) if evaluation.latency is not None else None,
        "param_count": evaluation.param_count,
        "split_hash": split_hash,
    }


def log_evaluation(tracker: Tracker, run_id: str, evaluation: Evaluation, class_names: list[str],
                   split_hash: str, step: int) -> None:
    """Log the evaluation's metrics, ``evaluation.json`` and the dev confusion matrix."""
    tracker.log_metrics(run_id, evaluation_metrics(evaluation, class_names), step=step)
    tags = {"playbook.zero_division": next(iter(evaluation.scores.values())).zero_division}
    if evaluation.latency is not None:
        tags.update({"playbook.latency_device": evaluation.latency.device,
                     "playbook.latency_batch_size": evaluation.latency.batch_size,
                     "playbook.latency_threads": evaluation.latency.threads})
    tracker.set_tags(run_id, tags)
    tracker.log_json(run_id, evaluation_record(evaluation, class_names, split_hash), "evaluation.json")
    if "dev" in evaluation.scores:
        dev = evaluation.scores["dev"]
        title = f"dev confusion matrix, accuracy {dev.accuracy:.4f}"
        tracker.log_rendered(run_id, "confusion_matrix.png",
                             lambda path: plots.confusion_matrix_png(dev.confusion, class_names, path, title))


def error_metrics(analysis: ErrorAnalysis) -> dict[str, float]:
    """Return per-category shares as MLflow metrics with sanitized keys."""
    keys = sanitize_keys(list(analysis.breakdown))
    metrics = {"dev_errors": float(analysis.error_count)}
    for name, share in analysis.breakdown.items():
        metrics[f"error_share/{keys[name]}"] = share.share_of_errors
        metrics[f"error_ceiling/{keys[name]}"] = share.ceiling
    return metrics


def log_error_analysis(tracker: Tracker, run_id: str, analysis: ErrorAnalysis, data: ImageData,
                       config: ErrorAnalysisSpec, step: int) -> None:
    """Log category shares, ``error_analysis.json``, ``errors.csv``, the error grid and galleries."""
    tracker.log_metrics(run_id, error_metrics(analysis), step=step)
    tracker.log_json(run_id, analysis.to_dict(), "error_analysis.json")
    # With a background writer these files are written on its thread, so they read only finished results.
    tracker.log_rendered(run_id, "errors.csv", analysis.write_csv)
    tracker.log_rendered(run_id, "misclassified.png", lambda path: _error_grid(
        analysis.errors[: config.grid_size], data, path, "dev errors: index, confidence p, true->predicted"))

    def draw_galleries(folder: Path) -> None:
        for name in analysis.breakdown:
            members = analysis.members(name)
            if members:
                _error_grid(members[: config.gallery_size], data, folder / gallery_filename(name),
                            f"{name}: {len(members)} errors")

    tracker.log_rendered_folder(run_id, "gallery", draw_galleries)


def gallery_filename(category: str) -> str:
    """Return the gallery file of a category: a plain name, with a hash when cleaning changed it."""
    name = safe_filename(category)
    if name != category:
        name = f"{name}-{hashlib.sha1(category.encode()).hexdigest()[:6]}"
    return f"{name}.png"


def _error_grid(records: list, data: ImageData, path: Path, title: str) -> Path:
    images = data.images[torch.tensor([record.index for record in records], dtype=torch.int64)]
    captions = [f"#{r.index} p={r.confidence:.2f}\n{r.true_label}->{r.predicted_label}" for r in records]
    return plots.image_grid_png(images, captions, path, title)


def log_diagnosis(tracker: Tracker, run_id: str, diagnosis: Diagnosis, step: int) -> None:
    """Log the gaps as metrics, ``diagnosis.json``, and the advice in every language."""
    tracker.log_metrics(run_id, diagnosis.gaps(), step=step)
    tracker.set_tags(run_id, {"playbook.main_gap": diagnosis.main_gap or "none"})
    tracker.log_json(run_id, diagnosis.to_dict(), "diagnosis.json")
    for lang in LANGUAGES:
        tracker.log_text(run_id, render(diagnosis, lang) + "\n", f"diagnosis.{lang}.txt")
