"""Benchmark 2: what a whole trial costs next to its pure training time.

Runs a digits study whose trials all do the same work (a 6-layer plain CNN,
5 epochs, fixed hyperparameters), then reads each trial's stage timings from
MLflow and its wall time from Optuna. In the same run it trains the same model
outside any study, so the in-study training time can be checked against it.

    python benchmarks/trial_overhead.py            # full run, writes docs/BENCHMARKS.md
    python benchmarks/trial_overhead.py --quick    # 3 trials, prints only
"""

from __future__ import annotations

import argparse
import datetime
import logging
import tempfile
import time
from pathlib import Path

import optuna
import torch
from mlflow.tracking import MlflowClient

from common import cpu_times, load_note, median, other_cpu_share, publish, table, verdict
from pipeline.data import load_images, prepare, split_dataset
from pipeline.models import build_model
from pipeline.spec import DataSpec, Fractions, parse_spec
from pipeline.study import run_study
from pipeline.train import TrainConfig, train_model

EPOCHS = 5
BATCH_SIZE = 64
LR = 1e-3
KNOBS = {"depth": 3, "width": 32}
TARGET_OVERHEAD = 0.10
STAGES = ("dev_scoring", "evaluate", "error_analysis", "diagnosis", "logging")


def study_spec(trials: int) -> dict:
    return {
        "name": "overhead", "seed": 0,
        "data": {"source": "digits"},
        "model": {"arch": "small_cnn", "small_cnn": KNOBS},
        "train": {"lr": LR, "batch_size": BATCH_SIZE, "epochs": EPOCHS, "schedule": "cosine"},
        "search": {"trials": trials},
    }


def digits_prepared():
    data = load_images(DataSpec(source="digits"))
    return prepare(data, split_dataset(data.labels, Fractions(), seed=0))


def forward_pass_floor(sizes: dict[str, int]) -> float:
    """Return the evaluation's share of the training work, counted in images through the network.

    A training step costs about three forward passes (forward, then backward for
    the inputs and for the weights). The method itself needs one pass over
    train and train-dev at the end and one over dev after every epoch.
    """
    evaluated = sizes["train"] + sizes["train_dev"] + EPOCHS * sizes["dev"]
    return evaluated / (3 * EPOCHS * sizes["train"])


def standalone_training_seconds(repeats: int) -> list[float]:
    """Train the same model on the same split outside a study; return the seconds of the optimization steps."""
    prepared = digits_prepared()
    seconds = []
    for repeat in range(repeats + 1):
        torch.manual_seed(repeat)
        model = build_model("small_cnn", 1, 10, 8, KNOBS)
        result = train_model(model, prepared, TrainConfig(lr=LR, batch_size=BATCH_SIZE, epochs=EPOCHS, seed=repeat),
                             torch.device("cpu"))
        if repeat > 0:  # the first run warms up the allocator and the kernels
            seconds.append(result.seconds - result.dev_seconds)
    return seconds


def trial_rows(folder: Path, trials: int) -> tuple[list[dict], float]:
    """Run the study; return per-trial timings and the wall time from trial 1's start to the study's end."""
    spec = parse_spec(study_spec(trials), source="benchmark spec")
    storage, tracking = f"sqlite:///{folder}/optuna.db", f"sqlite:///{folder}/mlflow.db"
    started = time.perf_counter()
    run_study(spec, storage=storage, tracking_uri=tracking)
    total = time.perf_counter() - started
    ended = datetime.datetime.now()  # Optuna's trial timestamps are naive local times

    study = optuna.load_study(study_name="overhead", storage=storage)
    client = MlflowClient(tracking)
    rows = []
    for trial in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        metrics = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics
        row = {name: metrics[f"stage_seconds/{name}"] for name in ("train_steps", *STAGES)}
        row["trial"] = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append(row)
    # From the start of trial 1 (trial 0 pays first-use costs) to the end of run_study, which
    # waits for the queued MLflow writes: the study's real cost of the later trials.
    second_start = sorted(t.datetime_start for t in study.trials)[1]
    span = (ended - second_start).total_seconds()
    print(f"study wall time {total:.2f} s; {span:.2f} s from the start of trial 1 to the end")
    return rows, span


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials in the study (default 12)")
    parser.add_argument("--quick", action="store_true", help="3 trials, print only")
    args = parser.parse_args()
    trials = 3 if args.quick else args.trials
    logging.basicConfig(level=logging.WARNING)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    start_times, started = cpu_times(), time.perf_counter()
    standalone = standalone_training_seconds(repeats=3 if args.quick else 5)
    with tempfile.TemporaryDirectory() as folder:
        rows, span = trial_rows(Path(folder), trials)
    rows = rows[1:]  # trial 0 also pays for the first-use costs of MLflow and the plots

    train = median([row["train_steps"] for row in rows])
    trial = median([row["trial"] for row in rows])
    stage_medians = {name: median([row[name] for row in rows]) for name in STAGES}
    other = trial - train - sum(stage_medians.values())
    per_trial_in_study = span / len(rows)
    overhead = trial / train - 1
    study_overhead = per_trial_in_study / train - 1

    lines = [["pure training (optimization steps), inside the study", f"{1000 * train:.0f}", "1.00"],
             ["pure training, same model and data outside any study", f"{1000 * median(standalone):.0f}",
              f"{median(standalone) / train:.2f}"]]
    labels = {"dev_scoring": "dev accuracy after each epoch (pruning, learning curves)",
              "evaluate": "evaluate: train / train-dev / dev metrics, p50 / p95 latency",
              "error_analysis": "error analysis", "diagnosis": "diagnosis",
              "logging": "MLflow logging on the trial's thread (writes are queued)"}
    for name in STAGES:
        lines.append([labels[name], f"{1000 * stage_medians[name]:.1f}", f"{stage_medians[name] / train:.3f}"])
    lines.append(["Optuna calls and the rest (remainder)", f"{1000 * other:.1f}", f"{other / train:.3f}"])
    lines.append(["whole trial, as Optuna times it", f"{1000 * trial:.0f}", f"{trial / train:.2f}"])
    lines.append(["study wall time per trial, queued MLflow writes included", f"{1000 * per_trial_in_study:.0f}",
                  f"{per_trial_in_study / train:.2f}"])
    body = [
        f"A digits study of {len(rows) + 1} trials, all with the same fixed hyperparameters: small_cnn "
        f"(depth 3, width 32), Adam, batch {BATCH_SIZE}, {EPOCHS} epochs, {len(digits_prepared().x['train']):,} "
        f"training images. Medians over "
        f"trials 1–{len(rows)} (trial 0 pays first-use costs and is left out). Pure training is the time in "
        "the optimization steps only; everything else is overhead.",
        "",
        table(["part of a trial", "ms (median)", "× pure training"], lines),
        "",
        floor_text(),
        "",
        verdict("whole trial over pure training, minus 1", overhead * 100, TARGET_OVERHEAD * 100,
                higher_is_better=False, unit="%"),
        verdict("study wall time per trial over pure training, minus 1", study_overhead * 100,
                TARGET_OVERHEAD * 100, higher_is_better=False, unit="%"),
    ]
    body += ["", load_note(other_cpu_share(start_times), time.perf_counter() - started)]
    publish("trial-overhead", "Trial overhead", "\n".join(body) + "\n\n" + EXPLANATION, write=not args.quick)


def floor_text() -> str:
    sizes = {name: len(tensor) for name, tensor in digits_prepared().x.items()}
    floor = forward_pass_floor(sizes)
    evaluated = sizes["train"] + sizes["train_dev"] + EPOCHS * sizes["dev"]
    return (f"The arithmetic floor: with {sizes['train']:,} train, {sizes['train_dev']:,} train-dev and "
            f"{sizes['dev']:,} dev images, the evaluation the method needs (train and train-dev once, dev "
            f"after each of {EPOCHS} epochs) sends {evaluated:,} images through the network. Training takes "
            f"{EPOCHS} × {sizes['train']:,} steps of about three forward passes each. So evaluation alone is "
            f"{100 * floor:.1f}% of the training work, before any latency timing, tracking or Optuna call.")


EXPLANATION = """\
Where the overhead comes from, and why the 10% target is missed at this size:

- The floor above: at 5 epochs the method's own evaluation is about 12% of the
  training work, so a 5-epoch digits trial cannot stay under 10% while it measures
  train, train-dev and per-epoch dev error. The share falls as trials get longer:
  at 20 epochs the same arithmetic gives about 7%.
- Scoring dev after every epoch is what pruning and the learning curves need. It
  and the evaluate stage run an inference copy with batch norm folded into the
  convolutions, about 30% faster than the trained model in eval mode.
- The evaluate stage runs the model once over the train and train-dev splits (dev
  reuses the last epoch's logits) and times 110 single-image forward passes for the
  p50 and p95 latency.
- Optuna writes each epoch's intermediate value, the constraint and the trial's
  results to its storage, each in its own transaction.
- MLflow writes go to a background thread, so the trial's thread only queues them.
  The results logged after training are held and written in one call when the run
  closes, and figures are drawn on that thread. That work still shares the two
  cores with the next trial's training, which is why pure training inside the study
  is slower than outside it. The last table row includes the wait for the queue
  at the end of the study."""


if __name__ == "__main__":
    main()
