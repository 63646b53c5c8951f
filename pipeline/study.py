"""Study orchestration: validate, load and split once, then run trials under Optuna.

Order matters for bad input: the spec is validated and the data loaded and split
before any storage, experiment or run is created, so a study that cannot start
leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from pipeline import progress
from pipeline.baseline import BaselineResult, run_baseline
from pipeline.data import ImageData, Split, load_study_data, prepare
from pipeline.error_analysis import fit_thresholds, read_manual_tags
from pipeline.models import hub_checkpoint_path, load_pretrained_state
from pipeline.spec import StudySpec, spec_to_dict
from pipeline.storage import make_storage
from pipeline.tracking import DEFAULT_ROOT, Tracker, default_tracking_uri
from pipeline.trial import StudyContext, run_trial

log = logging.getLogger(__name__)

ATTR_SPLIT_HASH = "split_hash"
ATTR_PARENT_RUN = "mlflow_parent_run_id"
ATTR_BASELINE = "baseline_dev"
# Seconds to wait for other workers' parent runs on a shared server storage, and how
# far back a parent run may have started to count as created at the same time.
PARENT_CLAIM_WAIT_S = 2.0
PARENT_CLAIM_WINDOW_MS = 10 * 60 * 1000


class StudyError(RuntimeError):
    """A study that cannot start or resume, with the reason and the fix."""


@dataclass(frozen=True)
class TrialSummary:
    """One trial as the summary shows it."""

    number: int
    state: str
    value: float | None
    feasible: bool
    params: dict[str, Any]
    dev_metrics: dict[str, float]
    run_id: str | None
    diagnosis: dict[str, Any] | None = None


@dataclass(frozen=True)
class StudyOutcome:
    """Report of a finished ``run_study`` call."""

    study_name: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    direction: str
    metric: str
    constraints: list[str]
    trials: list[TrialSummary]
    new_trials: int
    baseline: dict[str, dict[str, float]]
    best: TrialSummary | None
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)


def default_storage(root: Path = DEFAULT_ROOT) -> str:
    """Return the Optuna storage used when none is given: SQLite under ``root``."""
    return f"sqlite:///{root.as_posix()}/optuna.db"


def resolve_device(name: str) -> torch.device:
    """Map the spec's device to a torch device; 'auto' takes CUDA when present."""
    if name == "cuda" and not torch.cuda.is_available():
        raise StudyError("device 'cuda' requested but CUDA is not available; set device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Build the spec's pruner; it reads the dev metric that each epoch reports."""
    if spec.search.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.search.pruner_startup_trials,
                                           n_warmup_steps=spec.search.pruner_warmup_epochs)
    if spec.search.pruner == "hyperband":
        epochs = spec.train.epochs
        max_epochs = getattr(epochs, "value", None) or getattr(epochs, "high", None) or max(epochs.choices)
        return optuna.pruners.HyperbandPruner(min_resource=max(1, spec.search.pruner_warmup_epochs),
                                              max_resource=int(max_epochs))
    # Optuna's default is a median pruner; a plain search must not prune silently.
    return optuna.pruners.NopPruner()


def load_pretrained_weights(spec: StudySpec) -> dict[str, torch.Tensor] | None:
    """Load the transfer model's ImageNet weights before any trial, if the spec can choose it.

    Raises:
        StudyError: when no weights file is found and the spec does not allow random weights.
    """
    if "resnet18_transfer" not in spec.model.arch_names:
        return None
    path = spec.model.pretrained.weights or hub_checkpoint_path()
    if path.is_file():
        try:
            state = load_pretrained_state(path)
        except (OSError, ValueError) as error:
            raise StudyError(f"model.pretrained.weights: {error}") from None
        log.info("resnet18_transfer starts from the ImageNet weights in %s", path)
        return state
    if spec.model.pretrained.allow_random_init:
        log.warning("no ResNet-18 weights at %s; resnet18_transfer trials start from random weights "
                    "(model.pretrained.allow_random_init is true) and their runs are tagged "
                    "playbook.pretrained=false", path)
        return None
    raise StudyError(f"resnet18_transfer needs ImageNet weights, and none were found at {path}. Copy "
                     "torchvision's resnet18-f37072fd.pth there, or set model.pretrained.weights to its path, "
                     "or set model.pretrained.allow_random_init: true to train from random weights. "
                     "Nothing is downloaded.")


def load_and_split(spec: StudySpec) -> tuple[ImageData, Split]:
    """Data stage for the whole study: decode once and split with the spec's seed."""
    data, split, _ = load_study_data(spec.data)
    log.info("data: %s, %d images of %d×%d×%d, %d classes; split train %d / train-dev %d / dev %d / test %d "
             "(hash %s)", spec.data.source, len(data.labels), data.channels, data.image_size, data.image_size,
             data.num_classes, len(split.train), len(split.train_dev), len(split.dev), len(split.test),
             split.hash[:12])
    return data, split


@dataclass
class OpenedStudy:
    """A study ready to run trials in this process."""

    study: optuna.Study
    context: StudyContext
    existing: int  # trials the study had before this command
    baseline: dict[str, dict[str, float]]


def open_study(spec: StudySpec, storage: str, tracking_uri: str, lang: str, worker_index: int = 0) -> OpenedStudy:
    """Validate the data, then create or resume the study, its parent run and its baseline.

    Everything that can fail on bad input (data, pretrained weights, manual tags,
    a changed split) is checked before storage, experiment or run are created.
    """
    device = resolve_device(spec.device)
    data, split = load_and_split(spec)
    pretrained = load_pretrained_weights(spec)
    manual_tags = None
    if spec.error_analysis.manual_tags is not None:
        manual_tags = read_manual_tags(spec.error_analysis.manual_tags, len(data.labels))

    study = optuna.create_study(
        study_name=spec.name, storage=make_storage(storage, spec.search, tracking_uri, spec.name),
        direction=spec.objective.direction, pruner=make_pruner(spec), load_if_exists=True,
    )
    if study.direction.name.lower() != spec.objective.direction:
        raise StudyError(f"study '{spec.name}' in {storage} was created to "
                         f"{study.direction.name.lower()}, but objective.metric '{spec.objective.metric}' "
                         f"needs {spec.objective.direction}; use a new study name")
    existing = len(study.trials)
    # Seeding with the trial count and the worker index keeps resumed studies and parallel
    # workers from redrawing each other's values, and keeps each run reproducible.
    study.sampler = optuna.samplers.RandomSampler(seed=spec.seed + existing + 1_000_003 * worker_index)

    known_hash = study.user_attrs.get(ATTR_SPLIT_HASH)
    if known_hash is not None and known_hash != split.hash:
        raise StudyError(f"study '{spec.name}' was split with hash {known_hash[:12]}, but the data and "
                         f"split settings now give {split.hash[:12]}; the data, data.fractions or "
                         "data.split_seed changed. Restore them, or use a new study name.")

    tracker = Tracker(tracking_uri, spec.name, background=True)
    parent_run_id = study.user_attrs.get(ATTR_PARENT_RUN)
    if parent_run_id is None:
        parent_run_id, baseline = _start_study_run(study, tracker, spec, data, split, storage)
    else:
        tracker.reopen(parent_run_id)
        baseline = study.user_attrs.get(ATTR_BASELINE, {})
        log.info("resuming study '%s' with %d earlier trials (MLflow parent run %s)",
                 spec.name, existing, parent_run_id)

    context = StudyContext(
        # On a GPU the split tensors stay there for every trial instead of being copied per trial.
        spec=spec, data=data, split=split, prepared=prepare(data, split).to(device), device=device,
        thresholds=fit_thresholds(data.images[torch.from_numpy(split.train)], spec.error_analysis),
        manual_tags=manual_tags, pretrained=pretrained,
        tracker=tracker, parent_run_id=parent_run_id, lang=spec.language if lang is None else lang,
    )
    return OpenedStudy(study, context, existing, baseline)


def run_trials(opened: OpenedStudy, n_trials: int) -> None:
    """Run ``n_trials`` trials in this process; a failing trial is recorded and the loop goes on."""
    spec = opened.context.spec
    opened.study.optimize(lambda trial: run_trial(trial, opened.context), n_trials=n_trials,
                          timeout=spec.search.timeout_s, catch=(Exception,), callbacks=[_TrialLogger(spec)])


def run_study(spec: StudySpec, trials: int | None = None, storage: str | None = None,
              tracking_uri: str | None = None, lang: str | None = None, workers: int = 1) -> StudyOutcome:
    """Create or resume the spec's study and run ``trials`` more trials.

    Args:
        spec: a validated study spec.
        trials: trials to add, in total over all workers; the spec's ``search.trials`` when None.
        storage: Optuna storage URL; SQLite under ./mlruns when None.
        tracking_uri: MLflow tracking URI; ``MLFLOW_TRACKING_URI`` or SQLite under ./mlruns when None.
        lang: language of the diagnosis text; the spec's when None.
        workers: worker processes on this machine; they share the cores and the storage.
    """
    started = time.perf_counter()
    storage = storage or default_storage()
    tracking_uri = tracking_uri or default_tracking_uri()
    lang = lang or spec.language
    n_trials = trials if trials is not None else spec.search.trials
    if workers < 1:
        raise StudyError(f"--workers must be at least 1, got {workers}")

    if workers == 1 and spec.compute.threads:
        set_threads(spec.compute.threads)
    opened = open_study(spec, storage, tracking_uri, lang)
    context = opened.context
    _log_baseline(opened.baseline)
    log.info("running %d trial(s) of study '%s' on %s with %d worker(s) of %d thread(s); tracking %s, storage %s",
             n_trials, spec.name, context.device, workers,
             torch.get_num_threads() if workers == 1 else worker_threads(spec, workers), tracking_uri, storage)
    progress.current().start(n_trials)
    try:
        try:
            if workers == 1:
                run_trials(opened, n_trials)
            else:
                run_workers(spec, storage, tracking_uri, lang, n_trials, workers)
        except BaseException:
            context.tracker.finish(context.parent_run_id, "KILLED")
            raise
        finally:
            progress.current().close()

        study = opened.study
        context.tracker.flush()
        outcome = summarize(study, spec, storage, tracking_uri, context.tracker.experiment_id,
                            context.parent_run_id, new_trials=len(study.get_trials(deepcopy=False)) - opened.existing,
                            baseline=opened.baseline, seconds=time.perf_counter() - started)
        _record_best(context.tracker, context.parent_run_id, outcome)
        context.tracker.finish(context.parent_run_id, "FINISHED")
    finally:
        # Waits for the queued MLflow writes, also when the study stops on an error or Ctrl-C.
        context.tracker.close()
    return outcome


def worker_threads(spec: StudySpec, workers: int) -> int:
    """Return the torch threads of each of several workers: ``compute.threads``, else the cores split evenly."""
    return spec.compute.threads or max(1, (os.cpu_count() or 1) // workers)


def set_threads(threads: int) -> None:
    """Set torch's intra-op threads, and OpenMP's for libraries started after this."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def run_workers(spec: StudySpec, storage: str, tracking_uri: str, lang: str, n_trials: int, workers: int) -> None:
    """Run the trials in ``workers`` processes that split the trials and the CPU cores between them.

    Each worker decodes the data once for itself and runs its share of the trials
    against the shared storage. A worker that dies loses only its running trial,
    which the next heartbeat check marks failed and queues again.
    """
    shares = [n_trials // workers + (1 if index < n_trials % workers else 0) for index in range(workers)]
    threads = worker_threads(spec, workers)
    context = multiprocessing.get_context("spawn")
    processes = []
    for index, share in enumerate(shares):
        if share == 0:
            continue
        process = context.Process(
            target=_worker_main, name=f"worker-{index}",
            args=(spec_to_dict(spec), storage, tracking_uri, lang, share, threads, index,
                  logging.getLogger("pipeline").getEffectiveLevel()))
        process.start()
        processes.append(process)
    for process in processes:
        process.join()
        if process.exitcode != 0:
            log.error("%s exited with code %s; its finished trials are kept", process.name, process.exitcode)


def _worker_main(raw_spec: dict[str, Any], storage: str, tracking_uri: str, lang: str, n_trials: int,
                 threads: int, index: int, level: int) -> None:
    from pipeline.spec import parse_spec

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s [worker {index}] %(message)s",
                                           datefmt="%H:%M:%S"))
    logging.getLogger().handlers[:] = [handler]
    logging.getLogger("pipeline").setLevel(level)
    optuna.logging.disable_default_handler()
    optuna.logging.set_verbosity(logging.WARNING)
    # K workers each starting one thread per core would oversubscribe the CPU.
    set_threads(threads)
    spec = parse_spec(raw_spec, source="worker spec")
    opened = open_study(spec, storage, tracking_uri, lang, worker_index=index + 1)
    try:
        run_trials(opened, n_trials)
    finally:
        opened.context.tracker.close()


def _start_study_run(study: optuna.Study, tracker: Tracker, spec: StudySpec, data: ImageData,
                     split: Split, storage: str) -> tuple[str, dict[str, dict[str, float]]]:
    """Create the parent run with the spec, split manifest and baseline; once per study.

    Workers on several machines may start a new study at the same moment, and each
    creates a parent run. Each then waits a moment, so that the others' runs are
    visible, and keeps the earliest started parent run of this study. A worker whose
    own run is not the earliest deletes it. Runs that start later find the earliest
    one already there, so every worker settles on the same run.
    """
    study_key = _study_key(study, storage)
    parent_run_id = tracker.create_parent_run(study_key)
    started_ms = tracker.client.get_run(parent_run_id).info.start_time
    if not storage.startswith("sqlite:"):
        time.sleep(PARENT_CLAIM_WAIT_S)
    winner = tracker.earliest_parent_run(study_key, since_ms=started_ms - PARENT_CLAIM_WINDOW_MS)
    study.set_user_attr(ATTR_PARENT_RUN, winner)
    if winner != parent_run_id:
        log.info("another worker created this study's parent run %s at the same time; using it", winner)
        tracker.client.delete_run(parent_run_id)
        return winner, study.user_attrs.get(ATTR_BASELINE, {})
    study.set_user_attr(ATTR_SPLIT_HASH, split.hash)

    plain = spec_to_dict(spec)
    tracker.log_params(parent_run_id, {
        "data.source": spec.data.source, "data.path": spec.data.path, "data.images": len(data.labels),
        "data.classes": data.num_classes, "data.image_size": data.image_size, "data.channels": data.channels,
        "split.hash": split.hash, "split.seed": split.seed,
        **{f"split.{name}": len(split.part(name)) for name in ("train", "train_dev", "dev", "test")},
        "objective.metric": spec.objective.metric, "objective.direction": spec.objective.direction,
        "objective.constraints": "; ".join(_constraint_text(c) for c in spec.objective.constraints) or "none",
        "sampler": spec.search.sampler, "seed": spec.seed,
        "human_level_error": spec.diagnosis.human_level_error,
    })
    tracker.set_tags(parent_run_id, {"optuna.storage_study": spec.name})
    tracker.log_text(parent_run_id, yaml.safe_dump(plain, sort_keys=False, allow_unicode=True), "spec.yaml")
    tracker.log_json(parent_run_id, split.manifest(), "split_manifest.json")
    if data.skipped:
        tracker.log_text(parent_run_id, "\n".join(data.skipped) + "\n", "bad_files.txt")
        tracker.log_metrics(parent_run_id, {"data.skipped_files": float(len(data.skipped))})

    result = run_baseline(data, split)
    baseline = _baseline_dict(result)
    study.set_user_attr(ATTR_BASELINE, baseline)
    tracker.log_metrics(parent_run_id, {f"baseline.{name}.dev_{metric}": value
                                        for name, values in baseline.items() for metric, value in values.items()})
    tracker.log_json(parent_run_id, baseline, "baseline.json")
    return parent_run_id, baseline


def _study_key(study: optuna.Study, storage: str) -> str:
    """Name this Optuna study in this storage, without any password in the URL."""
    location = re.sub(r"//[^@/]*@", "//", storage)
    return hashlib.sha1(f"{location}#{study._study_id}#{study.study_name}".encode()).hexdigest()[:16]


def _baseline_dict(result: BaselineResult) -> dict[str, dict[str, float]]:
    return {name: {"accuracy": m.accuracy, "macro_f1": m.macro_f1, "macro_precision": m.macro_precision,
                   "macro_recall": m.macro_recall} for name, m in result.dev.items()}


def _log_baseline(baseline: dict[str, dict[str, float]]) -> None:
    for name, values in baseline.items():
        log.info("baseline %s: dev accuracy %.4f, macro F1 %.4f", name, values["accuracy"], values["macro_f1"])


def _constraint_text(constraint: Any) -> str:
    bound = f"<= {constraint.max:g}" if constraint.max is not None else f">= {constraint.min:g}"
    return f"{constraint.metric} {bound}"


class _TrialLogger:
    """Log one line per finished trial: number, state, value, params and the best so far."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        best = best_feasible_trial(study.get_trials(deepcopy=False), self.spec.objective.direction)
        best_text = f"trial {best.number} with {best.value:.4f}" if best else "none feasible yet"
        progress.current().trial_finished(f"{best.value:.4f} (#{best.number})" if best else "-")
        if trial.state == optuna.trial.TrialState.COMPLETE:
            feasible = "feasible" if trial.user_attrs.get("feasible") else "infeasible"
            log.info("trial %d finished: %s %.4f (%s), params %s; best: %s", trial.number,
                     self.spec.objective.metric, trial.value, feasible, trial.params, best_text)
        elif trial.state == optuna.trial.TrialState.PRUNED:
            log.info("trial %d pruned, params %s; best: %s", trial.number, trial.params, best_text)
        else:
            log.warning("trial %d %s (%s), params %s; best: %s", trial.number, trial.state.name.lower(),
                        trial.user_attrs.get("failure_reason", "error"), trial.params, best_text)


def best_feasible_trial(trials: list[optuna.trial.FrozenTrial], direction: str) -> optuna.trial.FrozenTrial | None:
    """Return the best complete trial that meets every constraint; ties go to the earlier trial.

    Optuna's random sampler ignores constraints, so ``study.best_trial`` may be
    infeasible; this is the pipeline's own choice of best.
    """
    candidates = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                  and t.user_attrs.get("feasible") is True and t.value is not None and t.value == t.value]
    if not candidates:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(candidates, key=lambda t: (sign * t.value, t.number))


def summarize(study: optuna.Study, spec: StudySpec, storage: str, tracking_uri: str, experiment_id: str,
              parent_run_id: str, new_trials: int, baseline: dict, seconds: float) -> StudyOutcome:
    """Collect trial states, the best feasible trial and the baseline into a StudyOutcome."""
    frozen = study.get_trials(deepcopy=False)
    rows = [TrialSummary(t.number, t.state.name, t.value, bool(t.user_attrs.get("feasible")), dict(t.params),
                         dict(t.user_attrs.get("dev_metrics", {})), t.user_attrs.get("mlflow_run_id"),
                         t.user_attrs.get("diagnosis"))
            for t in frozen]
    best = best_feasible_trial(frozen, spec.objective.direction)
    counts = {state: sum(1 for row in rows if row.state == state) for state in ("COMPLETE", "PRUNED", "FAIL")}
    counts["feasible"] = sum(1 for row in rows if row.state == "COMPLETE" and row.feasible)
    return StudyOutcome(
        study_name=spec.name, storage=storage, tracking_uri=tracking_uri, experiment_id=experiment_id,
        parent_run_id=parent_run_id, direction=spec.objective.direction, metric=spec.objective.metric,
        constraints=[_constraint_text(c) for c in spec.objective.constraints], trials=rows,
        new_trials=new_trials, baseline=baseline,
        best=next((row for row in rows if best is not None and row.number == best.number), None),
        seconds=seconds, counts=counts,
    )


def _record_best(tracker: Tracker, parent_run_id: str, outcome: StudyOutcome) -> None:
    """Tag the parent run with the best feasible trial; metrics carry the trial count as step."""
    step = len(outcome.trials)
    tracker.log_metrics(parent_run_id, {"trials.complete": outcome.counts["COMPLETE"],
                                        "trials.pruned": outcome.counts["PRUNED"],
                                        "trials.failed": outcome.counts["FAIL"],
                                        "trials.feasible": outcome.counts["feasible"]}, step=step)
    best = outcome.best
    if best is None:
        tracker.set_tags(parent_run_id, {"best.trial_number": "none"})
        return
    tracker.set_tags(parent_run_id, {"best.trial_number": best.number, "best.run_id": best.run_id,
                                     **{f"best.param.{key}": value for key, value in best.params.items()}})
    tracker.log_metrics(parent_run_id, {f"best.dev_{name}": value for name, value in best.dev_metrics.items()},
                        step=step)
