"""Time to a target dev accuracy: random search with and without the median pruner.

For each dataset the script runs one study with random search and no pruner, and
one with the same sampler seed, the same trials and Optuna's median pruner. Both
studies draw the same hyperparameters in the same order, and trial n trains with
the same seed in both, so the pruned study is the unpruned one with some trials
stopped early. The script checks that, then compares the epochs spent, the time
until the first trial reaching the target finished, and the best dev accuracy.

    python benchmarks/time_to_target.py            # full run, writes its section of docs/BENCHMARKS.md
    python benchmarks/time_to_target.py --quick    # smoke test with tiny studies; prints only
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import optuna
import yaml

from common import (CIFAR_SUBSET, ROOT, cpu_times, load_note, median, other_cpu_share, plural, publish, table,
                    verdict)
from study_timing import COMPLETE, FAIL, PRUNED, StudyRun, run_in_tempdir, trial_seconds

from pipeline.cache import ENV_CACHE_DIR
from pipeline.data import load_study_data
from pipeline.spec import parse_spec

DIGITS_SPEC = ROOT / "studies" / "digits.yaml"
MAX_EPOCH_RATIO = 0.6  # the pruned study may spend at most this share of the unpruned study's epochs
MAX_BEST_GAP_POINTS = 1.0  # its best dev accuracy may be at most this many points below


@dataclass(frozen=True)
class Setup:
    """One dataset's pair of studies: the spec without a search block, and the pruner settings."""

    dataset: str
    description: str
    raw_spec: dict[str, Any]
    trials: int
    epochs: int
    target: float  # dev accuracy whose first arrival is timed
    warmup_epochs: int
    startup_trials: int


@dataclass(frozen=True)
class Comparison:
    """Both studies of one setup and the fairness checks between them."""

    setup: Setup
    unpruned: StudyRun
    pruned: StudyRun
    data_load_s: tuple[float, float]  # seconds of the first load, from an empty image cache, and of the second
    same_params: int  # trial numbers whose sampled hyperparameters are equal in both studies
    same_curves: int  # trial numbers whose per-epoch dev accuracy in the pruned study repeats the unpruned one's


def digits_train_block() -> dict[str, Any]:
    """Return the train ranges of studies/digits.yaml."""
    return dict(yaml.safe_load(DIGITS_SPEC.read_text())["train"])


def digits_setup(quick: bool) -> Setup:
    raw = yaml.safe_load(DIGITS_SPEC.read_text())
    epochs = 3 if quick else 8
    raw["name"] = "bench_time_to_target_digits"
    raw["train"]["epochs"] = epochs
    # No latency constraint: under CPU noise it could make one study's trial infeasible and not the other's.
    raw["objective"] = {"metric": "accuracy", "constraints": []}
    return Setup(
        dataset="digits",
        description=(f"scikit-learn's 8×8 digits with the model and train ranges of studies/digits.yaml, "
                     f"{plural(epochs, 'epoch')} per trial in place of 20"),
        raw_spec=raw, trials=6 if quick else 40, epochs=epochs, target=0.98,
        warmup_epochs=0 if quick else 1, startup_trials=2 if quick else 5)


def cifar_setup(quick: bool) -> Setup:
    epochs = 1 if quick else 4
    train = digits_train_block()
    train["epochs"] = epochs
    raw = {
        "name": "bench_time_to_target_cifar10",
        "seed": 0,
        "data": {
            "source": "imagefolder", "path": str(CIFAR_SUBSET / "train"), "image_size": 32,
            # Train on 3,000 of the 10,000 images so that a trial takes seconds on a CPU.
            "fractions": {"train": 0.3, "train_dev": 0.05, "dev": 0.1, "test": 0.55},
        },
        "model": {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": {"choices": [16, 32]}}},
        "train": train,
        "objective": {"metric": "accuracy", "constraints": []},
    }
    return Setup(
        dataset="cifar10",
        description=(f"the CIFAR-10 JPEG subset at 32 px, training on 3,000 of its 10,000 train images "
                     f"and scoring 1,000 dev images; small_cnn of depth 2 and width 16 or 32, the train "
                     f"ranges of studies/digits.yaml, {plural(epochs, 'epoch')} per trial"),
        raw_spec=raw, trials=3 if quick else 12, epochs=epochs, target=0.45,
        warmup_epochs=0 if quick else 1, startup_trials=1 if quick else 3)


def with_search(raw_spec: dict[str, Any], setup: Setup, pruner: str) -> dict[str, Any]:
    raw = copy.deepcopy(raw_spec)
    raw["search"] = {"trials": setup.trials, "sampler": "random", "pruner": pruner,
                     "pruner_warmup_epochs": setup.warmup_epochs, "pruner_startup_trials": setup.startup_trials}
    return raw


def time_data_load(raw_spec: dict[str, Any]) -> tuple[float, float]:
    """Load and split the spec's data twice, as each study does before its first trial.

    Returns the seconds of the first load, which decodes the images when the image
    cache is empty, and of the second, which may read them from the cache.
    """
    spec = parse_spec(raw_spec, source="benchmark spec")
    seconds = []
    for _ in range(2):
        started = time.perf_counter()
        load_study_data(spec.data)
        seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]


def compare(setup: Setup) -> Comparison:
    data_load_s = time_data_load(with_search(setup.raw_spec, setup, "none"))
    print(f"{setup.dataset}: data load {data_load_s[0]:.2f} s, then {data_load_s[1]:.2f} s; "
          f"running {setup.trials} trials without a pruner")
    unpruned = run_in_tempdir(with_search(setup.raw_spec, setup, "none"), setup.trials)
    print(f"{setup.dataset}: {unpruned.wall_s:.0f} s; running {setup.trials} trials with the median pruner")
    pruned = run_in_tempdir(with_search(setup.raw_spec, setup, "median"), setup.trials)
    print(f"{setup.dataset}: {pruned.wall_s:.0f} s")

    unpruned_by_number = {trial.number: trial for trial in unpruned.trials}
    same_params = same_curves = 0
    for trial in pruned.trials:
        other = unpruned_by_number.get(trial.number)
        if other is None:
            continue
        same_params += trial.params == other.params
        steps = sorted(trial.intermediate_values)
        same_curves += all(other.intermediate_values.get(step) == trial.intermediate_values[step] for step in steps)
    return Comparison(setup, unpruned, pruned, data_load_s, same_params, same_curves)


def best_trial(run: StudyRun) -> optuna.trial.FrozenTrial | None:
    complete = run.in_state(COMPLETE)
    return max(complete, key=lambda trial: (trial.value, -trial.number)) if complete else None


def first_at_target(run: StudyRun, target: float) -> optuna.trial.FrozenTrial | None:
    """Return the first trial to finish with a dev accuracy of at least ``target``."""
    reached = [trial for trial in run.in_state(COMPLETE) if trial.value >= target]
    return min(reached, key=lambda trial: trial.datetime_complete) if reached else None


def seconds_to_target(run: StudyRun, target: float) -> float | None:
    trial = first_at_target(run, target)
    return None if trial is None else (trial.datetime_complete - run.first_start).total_seconds()


def median_or_none(values: list[float]) -> float | None:
    return median(values) if values else None


def cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio_cell(pruned: float | None, unpruned: float | None) -> str:
    return "-" if pruned is None or not unpruned else f"{pruned / unpruned:.2f}"


def figure_rows(comparison: Comparison) -> list[list[object]]:
    """Tabulate both studies side by side, with pruned / unpruned in the last column."""
    setup, unpruned, pruned = comparison.setup, comparison.unpruned, comparison.pruned
    rows: list[list[object]] = []

    def add(name: str, unpruned_value: float | None, pruned_value: float | None, digits: int = 1,
            ratio: bool = True) -> None:
        rows.append([name, cell(unpruned_value, digits), cell(pruned_value, digits),
                     ratio_cell(pruned_value, unpruned_value) if ratio else ""])

    rows.append(["trials complete / pruned / failed",
                 *(f"{len(run.in_state(COMPLETE))} / {len(run.in_state(PRUNED))} / {len(run.in_state(FAIL))}"
                   for run in (unpruned, pruned)), ""])
    add("epochs spent", unpruned.epochs, pruned.epochs, digits=0)
    targets = [first_at_target(run, setup.target) for run in (unpruned, pruned)]
    seconds = [seconds_to_target(run, setup.target) for run in (unpruned, pruned)]
    rows.append([f"s until a trial with dev accuracy ≥ {setup.target:g} finished (trial number)",
                 *("not reached" if trial is None else f"{value:.1f} (#{trial.number})"
                   for trial, value in zip(targets, seconds)),
                 ratio_cell(seconds[1], seconds[0])])
    add("trial phase s (first trial start to last trial end)", unpruned.trial_phase_s, pruned.trial_phase_s)
    add("s in training epochs (MLflow epoch_seconds, summed)",
        sum(unpruned.epoch_seconds.values()), sum(pruned.epoch_seconds.values()))
    add("setup s before the first trial (imports, data, baseline, MLflow)", unpruned.setup_s, pruned.setup_s)
    add("`playbook run` wall s", unpruned.wall_s, pruned.wall_s)
    bests = [best_trial(run) for run in (unpruned, pruned)]
    rows.append(["best dev accuracy (trial number)",
                 *("-" if trial is None else f"{trial.value:.4f} (#{trial.number})" for trial in bests), ""])
    add("median s per complete trial", median_or_none([trial_seconds(t) for t in unpruned.in_state(COMPLETE)]),
        median_or_none([trial_seconds(t) for t in pruned.in_state(COMPLETE)]))
    add("median s per pruned trial", None, median_or_none([trial_seconds(t) for t in pruned.in_state(PRUNED)]),
        ratio=False)
    add("median epochs per pruned trial", None,
        median_or_none([len(t.intermediate_values) for t in pruned.in_state(PRUNED)]), ratio=False)
    return rows


def best_gap_points(comparison: Comparison) -> float | None:
    """Return how many points of dev accuracy the pruned study's best is below the unpruned study's."""
    unpruned_best, pruned_best = best_trial(comparison.unpruned), best_trial(comparison.pruned)
    if unpruned_best is None or pruned_best is None:
        return None
    return 100.0 * (unpruned_best.value - pruned_best.value)


def verdict_lines(comparison: Comparison) -> list[str]:
    """State each target with MISSED plainly, and the reason under a missed one."""
    setup, unpruned, pruned = comparison.setup, comparison.unpruned, comparison.pruned
    name = setup.dataset
    lines = []

    epoch_ratio = pruned.epochs / unpruned.epochs
    lines.append(verdict(f"{name}: epochs with pruning / without", epoch_ratio, MAX_EPOCH_RATIO,
                         higher_is_better=False))
    if epoch_ratio > MAX_EPOCH_RATIO:
        lines.append("  " + explain_epochs_missed(comparison))

    gap = best_gap_points(comparison)
    if gap is None:
        lines.append(f"- {name}: best dev accuracy within {MAX_BEST_GAP_POINTS:g} point of the unpruned study: "
                     "**MISSED**, because one of the studies completed no trial.")
    else:
        lines.append(verdict(f"{name}: points of best dev accuracy below the unpruned study", gap,
                             MAX_BEST_GAP_POINTS, higher_is_better=False, unit=""))
        if gap > MAX_BEST_GAP_POINTS:
            lines.append("  " + explain_best_missed(comparison))

    reached = [best_trial(run) for run in (unpruned, pruned)]
    lowest_best = min(trial.value if trial is not None else 0.0 for trial in reached)
    lines.append(verdict(f"{name}: best dev accuracy of the weaker study", lowest_best, setup.target, unit=""))
    if lowest_best < setup.target:
        missing = [study for study, trial in zip(("the study without pruning", "the study with pruning"), reached)
                   if trial is None or trial.value < setup.target]
        studies_without = "either study" if len(missing) == 2 else missing[0]
        lines.append(f"  MISSED because no trial of {studies_without} reached {setup.target:g} dev accuracy in "
                     f"{plural(setup.epochs, 'epoch')}, so its time to target is missing.")
    return lines


def explain_epochs_missed(comparison: Comparison) -> str:
    setup, unpruned, pruned = comparison.setup, comparison.unpruned, comparison.pruned
    complete = pruned.in_state(COMPLETE)
    complete_share = sum(len(trial.intermediate_values) for trial in complete) / unpruned.epochs
    startup = min(setup.startup_trials, len(complete))
    text = (f"MISSED because {len(complete)} of {len(pruned.trials)} trials ran all "
            f"{plural(setup.epochs, 'epoch')}: the "
            f"{plural(startup, 'startup trial')}, which the pruner never stops, and "
            f"{plural(len(complete) - startup, 'trial')} that stayed at or above the median. "
            f"Those alone spent {complete_share:.0%} of the unpruned study's epochs.")
    stopped_after = median_or_none([len(trial.intermediate_values) for trial in pruned.in_state(PRUNED)])
    if stopped_after is not None:
        text += f" The pruned trials stopped after a median of {stopped_after:g} epoch(s)."
    earliest = setup.warmup_epochs + 1
    text += (f" The pruner can stop a trial after its epoch {earliest} at the earliest, so it saves at most "
             f"{1 - earliest / setup.epochs:.0%} of a pruned trial's epochs.")
    trials = len(unpruned.trials)
    floor = (startup * setup.epochs + (trials - startup) * earliest) / (trials * setup.epochs)
    if floor > MAX_EPOCH_RATIO:
        text += (f" Even with every trial after the startup trials stopped that early, the ratio would be "
                 f"{floor:.2f}, so with these trials, epochs and pruner settings the target is out of reach.")
    return text


def explain_best_missed(comparison: Comparison) -> str:
    unpruned_best = best_trial(comparison.unpruned)
    twin = next((trial for trial in comparison.pruned.trials if trial.number == unpruned_best.number), None)
    if twin is None:
        return (f"MISSED because trial {unpruned_best.number}, the best without pruning at "
                f"{unpruned_best.value:.4f}, did not run in the study with pruning.")
    if twin.state == PRUNED:
        stopped = len(twin.intermediate_values)
        best_so_far = max(twin.intermediate_values.values())
        return (f"MISSED because trial {unpruned_best.number}, the best without pruning at "
                f"{unpruned_best.value:.4f}, was pruned after {stopped} epoch(s) at {best_so_far:.4f}. It was "
                "below the median of the complete trials then, but it finished above all of them.")
    return (f"MISSED although trial {unpruned_best.number}, the best without pruning, also completed with "
            f"pruning, at {twin.value:.4f} against {unpruned_best.value:.4f}. So its training differed between "
            "the two runs.")


def check_lines(comparison: Comparison) -> list[str]:
    """Report the fairness checks and which pruned trials would have reached the target."""
    setup, unpruned, pruned = comparison.setup, comparison.unpruned, comparison.pruned
    common = min(len(unpruned.trials), len(pruned.trials))
    unpruned_values = {trial.number: trial.value for trial in unpruned.in_state(COMPLETE)}
    lost = [trial.number for trial in pruned.in_state(PRUNED)
            if unpruned_values.get(trial.number) is not None and unpruned_values[trial.number] >= setup.target]
    lines = [
        f"- Same hyperparameters for trial n in both studies: {comparison.same_params} of {common} trials"
        + ("." if comparison.same_params == common else "; **the comparison is not paired**."),
        f"- Same per-epoch dev accuracy up to where the pruned study stopped: {comparison.same_curves} of "
        f"{common} trials.",
        f"- Pruned trials that finished at ≥ {setup.target:g} without pruning: "
        + (", ".join(f"#{number}" for number in lost) if lost else "none") + ".",
    ]
    firsts = [first_at_target(run, setup.target) for run in (unpruned, pruned)]
    if None not in firsts and firsts[0].number == firsts[1].number:
        first = firsts[0].number
        if not any(trial.number < first for trial in pruned.in_state(PRUNED)):
            lines.append(f"- Trial #{first} reached {setup.target:g} first in both studies, and the pruner stopped "
                         "no trial before it. So the time to target is the same work in both, and its ratio shows "
                         "only timing noise.")
    return lines


def section(comparison: Comparison) -> str:
    setup = comparison.setup
    settings = (f"{setup.trials} trials of {setup.description}. Objective: dev accuracy, no constraints. "
                f"Random sampler with seed 0. The median pruner waits for "
                f"{plural(setup.startup_trials, 'complete trial')} and can stop a trial after its epoch "
                f"{setup.warmup_epochs + 1} at the earliest (`pruner_startup_trials: {setup.startup_trials}`, "
                f"`pruner_warmup_epochs: {setup.warmup_epochs}`). Loading and splitting the data, timed twice outside "
                f"the studies: {comparison.data_load_s[0]:.2f} s, then {comparison.data_load_s[1]:.2f} s.")
    if setup.raw_spec["data"]["source"] == "imagefolder":
        settings += (" The first load decodes the JPEGs into an empty image cache, and the second load and both "
                     "studies read that cache.")
    rows = figure_rows(comparison)
    return "\n".join([
        f"### {setup.dataset}", "", settings, "",
        table(["figure", "random", "random + median pruner", "pruned / random"], rows), "",
        *check_lines(comparison), "",
        *verdict_lines(comparison),
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run tiny studies as a smoke test and print the table without writing the docs")
    parser.add_argument("--dataset", choices=("all", "digits", "cifar10"), default="all",
                        help="datasets to run; the docs are written only for a full run of all of them")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cpu_start = cpu_times()
    started = time.perf_counter()
    # An empty image cache makes the first timed load a cold decode. The studies run as child
    # processes, so they inherit the variable and read the cache that this load wrote.
    with tempfile.TemporaryDirectory(prefix="playbook-bench-cache-") as cache:
        os.environ[ENV_CACHE_DIR] = cache
        sections = run_datasets(args.dataset, args.quick)
    note = load_note(other_cpu_share(cpu_start), time.perf_counter() - started)

    body = "\n\n".join([
        "Each figure comes from one study per variant: repeating whole studies to take medians costs too much. "
        "Medians are over the trials of one study. Each study runs as its own `playbook run` command in a fresh "
        "temporary folder, so both variants start cold. Times come from Optuna's trial start and end stamps. "
        "The time to target counts from the first trial's start, so the setup before it has a row of its own. "
        "A trial's time outside its epochs is spent on the final evaluation, latency, error analysis and "
        "MLflow logging, which a pruned trial skips.",
        *sections,
        note,
    ])
    publish("time_to_target", "Time to target: random search with and without median pruning", body,
            write=not args.quick and args.dataset == "all", reason="only a full run of all datasets writes it")


def run_datasets(dataset: str, quick: bool) -> list[str]:
    """Compare both variants on the requested datasets and return one doc section each."""
    sections = []
    if dataset in ("all", "digits"):
        sections.append(section(compare(digits_setup(quick))))
    if dataset in ("all", "cifar10"):
        if (CIFAR_SUBSET / "train").is_dir():
            sections.append(section(compare(cifar_setup(quick))))
        else:
            reason = f"skipped CIFAR-10: the subset's train folder {CIFAR_SUBSET / 'train'} was not found"
            print(reason)
            sections.append(f"### cifar10\n\nNot measured: {reason}.")
    return sections


if __name__ == "__main__":
    main()
