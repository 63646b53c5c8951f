"""Trials per hour with 1 and 2 worker processes on the same digits study.

`run_study(..., workers=1)` trains in the calling process with torch's default
thread count. With `workers=K` it spawns K processes that split the trials and
set torch to cores / K threads each. The script runs the same fixed study both
ways, each time as its own `playbook run` command in a fresh temporary folder,
alternating 1 and 2 workers for several rounds. It compares completed trials
per hour of the trial phase: from the first trial's start to the last trial's end.

    python benchmarks/workers.py            # full run, writes its section of docs/BENCHMARKS.md
    python benchmarks/workers.py --quick    # smoke test with one short round; prints only
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

import optuna
import torch

from common import load_note, median, other_cpu_use, plural, table, verdict, write_section
from study_timing import COMPLETE, StudyRun, run_in_tempdir, trial_seconds

MIN_SPEEDUP = 1.6  # 2 workers must reach this multiple of 1 worker's trials per hour
WORKER_COUNTS = (1, 2)


@dataclass(frozen=True)
class Plan:
    """How much work one comparison does."""

    trials: int  # per study, split evenly between the workers
    epochs: int
    rounds: int  # each round runs every worker count once, in order


def fixed_spec(epochs: int) -> dict:
    """Return a digits study whose hyperparameters are all fixed.

    Each worker seeds its own random sampler, so a searched space would give 1 and
    2 workers different trials of different cost. With nothing searched, every
    trial trains the same model for the same epochs.
    """
    return {
        "name": "bench_workers_digits",
        "seed": 0,
        "data": {"source": "digits"},
        "model": {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": 32}},
        "train": {"optimizer": "adam", "lr": 3.0e-3, "batch_size": 64, "dropout": 0.1, "epochs": epochs},
        "objective": {"metric": "accuracy", "constraints": []},
    }


def trials_per_hour(run: StudyRun, seconds: float) -> float:
    return 3600.0 * len(run.in_state(COMPLETE)) / seconds


def measure(plan: Plan) -> dict[int, list[StudyRun]]:
    """Run the study ``plan.rounds`` times with each worker count, alternating the counts."""
    runs: dict[int, list[StudyRun]] = {count: [] for count in WORKER_COUNTS}
    for round_index in range(plan.rounds):
        for count in WORKER_COUNTS:
            run = run_in_tempdir(fixed_spec(plan.epochs), plan.trials, workers=count)
            runs[count].append(run)
            print(f"round {round_index + 1}/{plan.rounds}, {count} worker(s): "
                  f"{len(run.in_state(COMPLETE))} complete trials, trial phase {run.trial_phase_s:.1f} s, "
                  f"{trials_per_hour(run, run.trial_phase_s):.0f} trials/h")
    return runs


def figure_rows(runs: dict[int, list[StudyRun]]) -> list[list[object]]:
    """Tabulate the medians over rounds per worker count, with 2 workers / 1 worker in the last column."""
    # Each `playbook run` starts with this process's default; two workers split the cores evenly.
    threads_one_worker = torch.get_num_threads()
    threads_two_workers = max(1, (os.cpu_count() or 1) // 2)
    figures = {
        "complete trials per study": lambda run: len(run.in_state(COMPLETE)),
        "trial phase s": lambda run: run.trial_phase_s,
        "trials per hour, trial phase": lambda run: trials_per_hour(run, run.trial_phase_s),
        "`playbook run` wall s (process and worker start, data, baseline)": lambda run: run.wall_s,
        "trials per hour, `playbook run` wall": lambda run: trials_per_hour(run, run.wall_s),
        "setup s before the first trial": lambda run: run.setup_s,
        "median s per trial": lambda run: median([trial_seconds(t) for t in run.in_state(COMPLETE)]),
        "median s per trial in training epochs (MLflow epoch_seconds)": lambda run: median(
            list(run.epoch_seconds.values())),
    }
    rows: list[list[object]] = [["torch threads per process", threads_one_worker, threads_two_workers, ""]]
    for name, figure in figures.items():
        one_worker = median([figure(run) for run in runs[1]])
        two_workers = median([figure(run) for run in runs[2]])
        digits = 0 if "per hour" in name or "complete" in name else 1
        ratio = f"{two_workers / one_worker:.2f}" if one_worker else "-"
        rows.append([name, f"{one_worker:.{digits}f}", f"{two_workers:.{digits}f}", ratio])
    return rows


def speedup(runs: dict[int, list[StudyRun]]) -> float:
    """Return the median over rounds of 2 workers' trials per hour divided by the median of 1 worker's."""
    one_worker = median([trials_per_hour(run, run.trial_phase_s) for run in runs[1]])
    two_workers = median([trials_per_hour(run, run.trial_phase_s) for run in runs[2]])
    return two_workers / one_worker


def count_check_line(runs: dict[int, list[StudyRun]], trials: int) -> str:
    pairs = [(len(one_worker.in_state(COMPLETE)), len(two_workers.in_state(COMPLETE)))
             for one_worker, two_workers in zip(runs[1], runs[2])]
    listed = ", ".join(f"{one_worker} and {two_workers}" for one_worker, two_workers in pairs)
    if all(one_worker == two_workers == trials for one_worker, two_workers in pairs):
        return f"- Both worker counts completed all {trials} trials in every round ({listed})."
    return (f"- **The runs did not complete the same trials** (1 worker and 2 workers per round: {listed}; "
            f"{trials} requested), so their rates are not comparable.")


def section(runs: dict[int, list[StudyRun]], plan: Plan) -> str:
    round_ratios = [trials_per_hour(two_workers, two_workers.trial_phase_s)
                    / trials_per_hour(one_worker, one_worker.trial_phase_s)
                    for one_worker, two_workers in zip(runs[1], runs[2])]
    ratio = speedup(runs)
    settings = (
        f"{plan.trials} trials of a digits study whose hyperparameters are all fixed (small_cnn of depth 2 and "
        f"width 32, Adam at 3e-3, batch 64, {plan.epochs} epochs), so every trial does the same work. Each "
        "worker seeds its own sampler, so a searched space would give the two runs different trials. "
        f"{plural(plan.rounds, 'round')}, each running `playbook run --workers 1`, then `--workers 2`, in a "
        "fresh temporary folder each. The table gives the medians over rounds. The trial phase runs from the "
        "first trial's start to the last trial's end. So it leaves out process start, data load and baseline, "
        "but it includes the gap between the two workers' first trials.")
    lines = [
        settings, "",
        table(["figure", "1 worker", "2 workers", "2 / 1"], figure_rows(runs)), "",
        count_check_line(runs, plan.trials),
        "- Trials per hour, 2 workers / 1 worker, per round: " + ", ".join(f"{r:.2f}" for r in round_ratios) + ".",
        verdict("trials per hour of the trial phase, 2 workers / 1 worker", ratio, MIN_SPEEDUP),
    ]
    if ratio < MIN_SPEEDUP:
        lines.append("  " + explain_missed(runs, ratio))
    if max(round_ratios) > 1.5 * min(round_ratios):
        lines.append(f"- The per-round ratios range from {min(round_ratios):.2f} to {max(round_ratios):.2f}, so "
                     "other work on the CPU during some runs moved these figures. Rerun on a quiet machine.")
    return "\n".join(lines)


def explain_missed(runs: dict[int, list[StudyRun]], ratio: float) -> str:
    """Split the shortfall into slower trials and the time the two workers did not overlap."""
    one_worker = median([median([trial_seconds(t) for t in run.in_state(COMPLETE)]) for run in runs[1]])
    two_workers = median([median([trial_seconds(t) for t in run.in_state(COMPLETE)]) for run in runs[2]])
    slowdown = two_workers / one_worker
    text = (f"MISSED: a trial took {slowdown:.2f}× as long in a one-thread worker as in the two-thread "
            f"process, so two workers running side by side all the time would give about {2 / slowdown:.2f}×.")
    if ratio < 0.95 * 2 / slowdown:
        text += (" The rest was lost while only one worker ran trials: before the second worker's first "
                 "trial started, and after the first worker's last trial ended.")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run one short round as a smoke test and print the table without writing the docs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    plan = Plan(trials=2, epochs=2, rounds=1) if args.quick else Plan(trials=16, epochs=15, rounds=3)
    busy_before = other_cpu_use()
    started = time.perf_counter()
    runs = measure(plan)
    seconds = time.perf_counter() - started
    body = section(runs, plan) + "\n\n" + load_note(busy_before, other_cpu_use(), seconds)
    print()
    print(body)
    if args.quick:
        print("\nnot writing docs/BENCHMARKS.md: --quick runs only print")
        return
    write_section("workers", "Trials per hour with 1 and 2 worker processes", body)


if __name__ == "__main__":
    main()
