"""Trials per hour with 1 and 2 worker processes on the same digits study.

`run_study(..., workers=1)` trains in the calling process with torch's default
thread count. With `workers=K` it spawns K processes that split the trials and
set torch to cores / K threads each. The script runs the same fixed study both
ways, each time as its own `playbook run` command in a fresh temporary folder,
alternating 1 and 2 workers for several rounds. It compares completed trials
per hour of the trial phase, from the first trial's start to the last trial's end,
in each configuration's fastest round.
A third run per round, 1 worker on 1 thread, shows where a shortfall comes from.

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

from common import cpu_times, load_note, median, other_cpu_share, plural, publish, table, verdict
from study_timing import COMPLETE, StudyRun, run_in_tempdir, trial_seconds

MIN_SPEEDUP = 1.6  # 2 workers must reach this multiple of 1 worker's trials per hour


@dataclass(frozen=True)
class Config:
    """One way to run the study: worker processes and torch threads per process."""

    label: str
    workers: int
    threads: int | None  # the spec's compute.threads, or None for the pipeline's default


ONE_WORKER = Config("1 worker", 1, None)
TWO_WORKERS = Config("2 workers", 2, None)
# Not part of the target: it splits the 2 workers' slowdown into fewer threads and the two
# processes competing for the CPU.
ONE_THREAD = Config("1 worker, 1 thread", 1, 1)
CONFIGS = (ONE_WORKER, TWO_WORKERS, ONE_THREAD)


@dataclass(frozen=True)
class Plan:
    """How much work one comparison does."""

    trials: int  # per study, split evenly between the workers
    epochs: int
    rounds: int  # each round runs every configuration once, in order


def fixed_spec(epochs: int, threads: int | None) -> dict:
    """Return a digits study whose hyperparameters are all fixed.

    Each worker seeds its own random sampler, so a searched space would give 1 and
    2 workers different trials of different cost. With nothing searched, every
    trial trains the same model for the same epochs.
    """
    spec = {
        "name": "bench_workers_digits",
        "seed": 0,
        "data": {"source": "digits"},
        "model": {"arch": "small_cnn", "small_cnn": {"depth": 2, "width": 32}},
        "train": {"optimizer": "adam", "lr": 3.0e-3, "batch_size": 64, "dropout": 0.1, "epochs": epochs},
        "objective": {"metric": "accuracy", "constraints": []},
    }
    if threads is not None:
        spec["compute"] = {"threads": threads}
    return spec


def trials_per_hour(run: StudyRun, seconds: float) -> float:
    return 3600.0 * len(run.in_state(COMPLETE)) / seconds


def median_trial_seconds(run: StudyRun) -> float:
    return median([trial_seconds(trial) for trial in run.in_state(COMPLETE)])


def median_epoch_seconds(run: StudyRun) -> float:
    """Return the median over trials of the seconds each trial spent in its training epochs."""
    return median(list(run.epoch_seconds.values()))


def measure(plan: Plan) -> dict[Config, list[StudyRun]]:
    """Run the study ``plan.rounds`` times in each configuration, taking the configurations in turn."""
    runs: dict[Config, list[StudyRun]] = {config: [] for config in CONFIGS}
    for round_index in range(plan.rounds):
        for config in CONFIGS:
            run = run_in_tempdir(fixed_spec(plan.epochs, config.threads), plan.trials, workers=config.workers)
            runs[config].append(run)
            print(f"round {round_index + 1}/{plan.rounds}, {config.label}: "
                  f"{len(run.in_state(COMPLETE))} complete trials, trial phase {run.trial_phase_s:.1f} s, "
                  f"{trials_per_hour(run, run.trial_phase_s):.0f} trials/h")
    return runs


def median_over_rounds(runs: dict[Config, list[StudyRun]], config: Config, figure) -> float:
    return median([figure(run) for run in runs[config]])


def figure_rows(runs: dict[Config, list[StudyRun]]) -> list[list[object]]:
    """Tabulate the fastest round's trials per hour and the medians over rounds of the other figures.

    The fourth column is 2 workers / 1 worker.
    """
    # Each `playbook run` starts with this process's default; two workers split the cores evenly.
    threads = {ONE_WORKER: torch.get_num_threads(), TWO_WORKERS: max(1, (os.cpu_count() or 1) // 2), ONE_THREAD: 1}
    figures = {
        "complete trials per study": lambda run: len(run.in_state(COMPLETE)),
        "trial phase s": lambda run: run.trial_phase_s,
        "trials per hour, trial phase": lambda run: trials_per_hour(run, run.trial_phase_s),
        "`playbook run` wall s (process and worker start, data, baseline)": lambda run: run.wall_s,
        "trials per hour, `playbook run` wall": lambda run: trials_per_hour(run, run.wall_s),
        "setup s before the first trial": lambda run: run.setup_s,
        "median s per trial": median_trial_seconds,
        "median s per trial in training epochs (MLflow epoch_seconds)": median_epoch_seconds,
    }
    rows: list[list[object]] = [["torch threads per process", threads[ONE_WORKER], threads[TWO_WORKERS], "",
                                 threads[ONE_THREAD]]]
    fastest = {config: fastest_rate(runs, config) for config in CONFIGS}
    rows.append(["trials per hour, trial phase, fastest round", f"{fastest[ONE_WORKER]:.0f}",
                 f"{fastest[TWO_WORKERS]:.0f}", f"{fastest[TWO_WORKERS] / fastest[ONE_WORKER]:.2f}",
                 f"{fastest[ONE_THREAD]:.0f}"])
    for name, figure in figures.items():
        values = {config: median_over_rounds(runs, config, figure) for config in CONFIGS}
        digits = 0 if "per hour" in name or "complete" in name else 1
        ratio = f"{values[TWO_WORKERS] / values[ONE_WORKER]:.2f}" if values[ONE_WORKER] else "-"
        rows.append([name, f"{values[ONE_WORKER]:.{digits}f}", f"{values[TWO_WORKERS]:.{digits}f}", ratio,
                     f"{values[ONE_THREAD]:.{digits}f}"])
    return rows


def fastest_rate(runs: dict[Config, list[StudyRun]], config: Config) -> float:
    """Return the trials per hour of the trial phase in the configuration's fastest round.

    Other work on the CPU only ever slows a run down, and it slows a two-thread
    process far more than one-thread workers, so the fastest round is the figure
    least skewed by it.
    """
    return max(trials_per_hour(run, run.trial_phase_s) for run in runs[config])


def speedup(runs: dict[Config, list[StudyRun]]) -> float:
    """Return 2 workers' trials per hour divided by 1 worker's, each in its fastest round."""
    return fastest_rate(runs, TWO_WORKERS) / fastest_rate(runs, ONE_WORKER)


def count_check_line(runs: dict[Config, list[StudyRun]], trials: int) -> str:
    pairs = [(len(one_worker.in_state(COMPLETE)), len(two_workers.in_state(COMPLETE)))
             for one_worker, two_workers in zip(runs[ONE_WORKER], runs[TWO_WORKERS])]
    listed = ", ".join(f"{one_worker} and {two_workers}" for one_worker, two_workers in pairs)
    if all(one_worker == two_workers == trials for one_worker, two_workers in pairs):
        return f"- 1 and 2 workers completed all {trials} trials in every round ({listed})."
    return (f"- **The runs did not complete the same trials** (1 worker and 2 workers per round: {listed}; "
            f"{trials} requested), so their rates are not comparable.")


def section(runs: dict[Config, list[StudyRun]], plan: Plan) -> str:
    round_ratios = [trials_per_hour(two_workers, two_workers.trial_phase_s)
                    / trials_per_hour(one_worker, one_worker.trial_phase_s)
                    for one_worker, two_workers in zip(runs[ONE_WORKER], runs[TWO_WORKERS])]
    ratio = speedup(runs)
    settings = (
        f"{plan.trials} trials of a digits study whose hyperparameters are all fixed (small_cnn of depth 2 and "
        f"width 32, Adam at 3e-3, batch 64, {plan.epochs} epochs), so every trial does the same work. Each "
        "worker seeds its own sampler, so a searched space would give the two runs different trials. "
        f"{plural(plan.rounds, 'round')}, each running `playbook run --workers 1`, then `--workers 2`, then "
        "`--workers 1` with `compute.threads: 1`, in a fresh temporary folder each. The last column is not part "
        "of the target: it shows one trial at a time on one thread, with no other worker beside it. The "
        "fastest-round row gives each configuration's fastest round, which the target compares. Other work on "
        "the CPU only adds time, and a two-thread process loses far more to it than one-thread workers do. The "
        "other rows give the medians over rounds. The trial phase runs from the first trial's start to the "
        "last trial's end. So it leaves out process start, data load and baseline, but it includes the gap "
        "between the two workers' first trials.")
    headers = ["figure", ONE_WORKER.label, TWO_WORKERS.label, "2 workers / 1 worker", ONE_THREAD.label]
    lines = [
        settings, "",
        table(headers, figure_rows(runs)), "",
        count_check_line(runs, plan.trials),
        "- Trial phase s per round: " + "; ".join(
            f"{config.label} " + ", ".join(f"{run.trial_phase_s:.1f}" for run in runs[config]) for config in CONFIGS)
        + ".",
        "- Trials per hour, 2 workers / 1 worker, per round: " + ", ".join(f"{r:.2f}" for r in round_ratios) + ".",
        verdict("trials per hour of the trial phase in the fastest round, 2 workers / 1 worker", ratio,
                MIN_SPEEDUP),
    ]
    if ratio < MIN_SPEEDUP:
        lines.append("  " + explain_missed(runs, ratio))
    if max(round_ratios) > 1.5 * min(round_ratios):
        lines.append(f"- The per-round ratios range from {min(round_ratios):.2f} to {max(round_ratios):.2f}, so "
                     "other work on the CPU during some runs moved these figures. Rerun on a quiet machine.")
    return "\n".join(lines)


def explain_missed(runs: dict[Config, list[StudyRun]], ratio: float) -> str:
    """Split the shortfall into fewer threads per trial, workers competing, and time the workers did not overlap."""
    # The fastest round of each configuration, as in the verdict.
    two_threads = min(median_epoch_seconds(run) for run in runs[ONE_WORKER])
    one_thread_alone = min(median_epoch_seconds(run) for run in runs[ONE_THREAD])
    one_thread_paired = min(median_epoch_seconds(run) for run in runs[TWO_WORKERS])
    slowdown = one_thread_paired / two_threads
    interference = one_thread_paired / one_thread_alone
    competing = (f"the two workers slow each other down {interference:.2f}×" if interference >= 1.05
                 else f"the two workers hardly slow each other down ({interference:.2f}×)")
    text = (f"MISSED: a trial's training epochs took {two_threads:.2f} s on two threads, {one_thread_alone:.2f} s "
            f"on one thread alone and {one_thread_paired:.2f} s in each of two one-thread workers side by side. "
            f"So the second thread speeds one trial up {one_thread_alone / two_threads:.2f}×, and {competing}. "
            f"Together they cap 2 workers near {2 / slowdown:.2f}× in training time.")
    if ratio < 0.95 * 2 / slowdown:
        text += (" The rest was lost outside training and while only one worker ran trials: before the second "
                 "worker's first trial started, and after the first worker's last trial ended.")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run one short round as a smoke test and print the table without writing the docs")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    plan = Plan(trials=2, epochs=2, rounds=1) if args.quick else Plan(trials=16, epochs=15, rounds=3)
    cpu_start = cpu_times()
    started = time.perf_counter()
    runs = measure(plan)
    seconds = time.perf_counter() - started
    body = section(runs, plan) + "\n\n" + load_note(other_cpu_share(cpu_start), seconds)
    publish("workers", "Trials per hour with 1 and 2 worker processes", body, write=not args.quick)


if __name__ == "__main__":
    main()
