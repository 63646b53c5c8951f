"""Compare the training throughput of the pipeline's train stage with simpler loops.

Every loop trains the pipeline's 6-layer plain CNN (small_cnn, depth 3, width 32) with
Adam at batch size 64 on the same images, with the same number of torch threads:

- the pipeline's train stage, ``pipeline.train.train_model``, as a trial calls it;
- a minimal hand-written loop over the same pre-loaded normalized tensors;
- the usual torchvision loop: a Dataset with per-image transforms.v2 in a DataLoader,
  with 0 and with 2 worker processes;
- on CIFAR-10 only, the same DataLoader loop with every image resized to 224 px.

    python benchmarks/throughput.py            # full run, writes its section of docs/BENCHMARKS.md
    python benchmarks/throughput.py --quick    # smoke test: less work, prints only
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch

from common import CIFAR_SUBSET, cpu_times, load_note, median, other_cpu_share, plural, publish, table, verdict
from workloads import (BATCH_SIZE, Workload, cifar_workload, digits_workload, run_pipeline, time_dataloader_loop,
                       time_minimal_loop, time_resized_batches)

# Reference figures for a quiet 2-core machine of the kind these benchmarks were written
# for (torch 2.14.1, float32, the same model), given with the targets. This script does not
# measure them.
REFERENCE_MINIMAL_DIGITS = 6500.0  # images/s
REFERENCE_MINIMAL_CIFAR = 480.0  # images/s at 32 px
REFERENCE_DATALOADER_DIGITS = "1.2–1.8×"  # minimal loop ÷ DataLoader loop
REFERENCE_DATALOADER_CIFAR = "≈ 1×"
REFERENCE_RESIZE_SLOWDOWN = "≈ 90×"  # 224-px epoch ÷ 32-px epoch

TARGET_VS_MINIMAL = 0.9
TARGET_VS_DATALOADER_DIGITS = 1.2
TARGET_VS_DATALOADER_CIFAR = 1.0
NATIVE_SIZE = 32
RESIZED_SIZE = 224

PIPELINE = "pipeline train stage"
MINIMAL = "minimal loop"
DATALOADER = "DataLoader, {} workers"


@dataclass(frozen=True)
class Settings:
    """How much work one run does."""

    digits_epochs: int
    cifar_per_class: int  # images taken from each class folder; 70 % of them train
    cifar_epochs: int
    digits_repeats: int
    cifar_repeats: int
    resized_batches: int  # timed batches per size in the 224-px comparison
    resized_warmup: int  # untimed batches per size before them


FULL = Settings(digits_epochs=3, cifar_per_class=286, cifar_epochs=1, digits_repeats=5, cifar_repeats=3,
                resized_batches=4, resized_warmup=1)
QUICK = Settings(digits_epochs=1, cifar_per_class=43, cifar_epochs=1, digits_repeats=1, cifar_repeats=1,
                 resized_batches=1, resized_warmup=0)


@dataclass
class Measured:
    """Seconds of every round of one loop on one workload."""

    workload: Workload
    variant: str
    epochs: int
    seconds: list[float]
    dev_seconds: list[float]  # of ``seconds``, the time spent scoring dev; zeros for loops that do not

    @property
    def images(self) -> int:
        return self.workload.train_count * self.epochs

    @property
    def images_per_second(self) -> float:
        return median([self.images / seconds for seconds in self.seconds])

    @property
    def seconds_per_epoch(self) -> float:
        return median(self.seconds) / self.epochs

    @property
    def rates(self) -> list[float]:
        """Images/s of every round, in round order."""
        return [self.images / seconds for seconds in self.seconds]

    def spread(self) -> str:
        return f"{min(self.rates):,.0f}–{max(self.rates):,.0f}"


def time_pipeline_and_dev(workload: Workload, epochs: int) -> tuple[float, float]:
    seconds, result = run_pipeline(workload, epochs)
    return seconds, result.dev_seconds


def variants() -> dict[str, Callable[[Workload, int], tuple[float, float]]]:
    """Return the loops to compare, each called with a workload and a number of epochs.

    Each loop returns its seconds and, of those, the seconds spent scoring dev.
    """
    return {
        PIPELINE: time_pipeline_and_dev,
        MINIMAL: lambda data, count: (time_minimal_loop(data, count), 0.0),
        DATALOADER.format(0): lambda data, count: (time_dataloader_loop(data, count, workers=0), 0.0),
        DATALOADER.format(2): lambda data, count: (time_dataloader_loop(data, count, workers=2), 0.0),
    }


def measure_workload(workload: Workload, epochs: int, repeats: int) -> WorkloadResults:
    """Warm every loop up on 4 batches, then time the loops in turn for ``repeats`` rounds.

    Running the loops in turn within each round, rather than one loop's repeats in a
    row, spreads a slow spell of a shared CPU over all of them. Each round starts one
    loop later than the round before, so no loop always runs right after the
    DataLoader loop's worker processes exit.
    """
    loops = variants()
    warmup = workload.truncated(4 * BATCH_SIZE)
    for name, loop in loops.items():
        print(f"  warming up: {name}", flush=True)
        loop(warmup, 1)
    loop_results = {name: Measured(workload, name, epochs, [], []) for name in loops}
    names = list(loops)
    for round_number in range(repeats):
        shift = round_number % len(names)
        for name in names[shift:] + names[:shift]:
            seconds, dev_seconds = loops[name](workload, epochs)
            loop_results[name].seconds.append(seconds)
            loop_results[name].dev_seconds.append(dev_seconds)
            print(f"  round {round_number + 1}/{repeats}: {name}: {seconds:.2f} s, "
                  f"{workload.train_count * epochs / seconds:,.0f} images/s", flush=True)
    return WorkloadResults(workload, loop_results)


@dataclass(frozen=True)
class WorkloadResults:
    """Every loop's measurements on one workload."""

    workload: Workload
    loops: dict[str, Measured]

    @property
    def pipeline(self) -> Measured:
        return self.loops[PIPELINE]

    @property
    def minimal(self) -> Measured:
        return self.loops[MINIMAL]

    @property
    def faster_dataloader(self) -> Measured:
        candidates = [self.loops[DATALOADER.format(workers)] for workers in (0, 2)]
        return max(candidates, key=lambda measured: measured.images_per_second)

    def ratio(self, numerator: Measured, denominator: Measured) -> float:
        """Return the median over rounds of the two loops' images/s ratio.

        Each round runs the loops back to back, so a per-round ratio compares them
        under the same load, which a ratio of medians over all rounds would not.
        """
        return median([top / bottom for top, bottom in zip(numerator.rates, denominator.rates)])

    def slower_rounds(self, measured: Measured, other: Measured) -> int:
        """Return in how many rounds ``measured`` trained fewer images/s than ``other``."""
        return sum(mine < theirs for mine, theirs in zip(measured.rates, other.rates))

    def rows(self) -> list[list[object]]:
        rows = []
        for measured in self.loops.values():
            rows.append([self.workload.name, measured.variant, self.workload.train_count, measured.epochs,
                         len(measured.seconds), f"{measured.images_per_second:,.0f}", measured.spread(),
                         f"{measured.seconds_per_epoch:.2f}", f"{self.ratio(self.pipeline, measured):.2f}"])
        return rows

    def describe(self) -> str:
        """Explain the figures in a few sentences, with the share of dev scoring."""
        pipeline, minimal = self.pipeline, self.minimal
        dev_share = median([dev / total for dev, total in zip(pipeline.dev_seconds, pipeline.seconds)])
        # Per round: the minimal loop's seconds over the train stage's seconds less its dev scoring.
        without_dev = median([minimal_seconds / (seconds - dev) for minimal_seconds, seconds, dev
                              in zip(minimal.seconds, pipeline.seconds, pipeline.dev_seconds)])
        dev_per_epoch = median(pipeline.dev_seconds) / pipeline.epochs
        return (f"On {self.workload.name}, the train stage reached {self.ratio(pipeline, minimal):.2f}× "
                f"the minimal loop and {self.ratio(pipeline, self.faster_dataloader):.2f}× the faster "
                f"DataLoader loop ({self.faster_dataloader.variant}). Scoring the {self.workload.dev_count} dev "
                f"images after each epoch took {dev_per_epoch:.3f} s, {dev_share:.0%} of the train stage's "
                f"time (the stage's own `dev_seconds`). Without it, the train stage ran at "
                f"{without_dev:.2f}× the minimal loop. The train stage was slower than the minimal loop in "
                f"{self.slower_rounds(self.pipeline, self.minimal)} of {len(self.pipeline.rates)} rounds, and "
                f"slower than the faster DataLoader loop in "
                f"{self.slower_rounds(self.pipeline, self.faster_dataloader)}.")


@dataclass(frozen=True)
class ResizeResult:
    """Single batches of the DataLoader loop at 32 and at 224 px, timed in turn, against the timed 32-px epochs."""

    native: Measured  # full 32-px epochs of the DataLoader loop with 0 workers
    batch_seconds: dict[int, list[float]]  # image size -> seconds per batch

    def epoch_seconds(self, size: int) -> float:
        """Return the median batch at ``size`` pixels scaled to one epoch: an estimate."""
        return median(self.batch_seconds[size]) / BATCH_SIZE * self.native.workload.train_count

    @property
    def slowdown(self) -> float:
        return self.epoch_seconds(RESIZED_SIZE) / self.epoch_seconds(NATIVE_SIZE)

    def table(self) -> str:
        train_count = self.native.workload.train_count
        native_epoch = self.epoch_seconds(NATIVE_SIZE)
        rows = [[f"32 px (native), {plural(len(self.native.seconds), 'full epoch')} timed",
                 f"{self.native.seconds_per_epoch:.1f}", f"{self.native.seconds_per_epoch / native_epoch:.2f}"]]
        for size in (NATIVE_SIZE, RESIZED_SIZE):
            batches = plural(len(self.batch_seconds[size]), "batch", "batches")
            label = "32 px (native)" if size == NATIVE_SIZE else f"resized to {size} px"
            rows.append([f"{label}, estimated: median of {batches} × {train_count} / {BATCH_SIZE}",
                         f"{self.epoch_seconds(size):.1f}", f"{self.epoch_seconds(size) / native_epoch:.2f}"])
        return table(["DataLoader loop, 0 workers", "s per epoch", "÷ 32-px estimate"], rows)


def measure_resize(workload: Workload, native: Measured, settings: Settings) -> ResizeResult:
    """Time 32-px and 224-px batches of the DataLoader loop in turn, to scale each median batch to an epoch."""
    print(f"  {NATIVE_SIZE} and {RESIZED_SIZE} px in turn: {settings.resized_warmup} untimed and "
          f"{settings.resized_batches} timed batches of {BATCH_SIZE} each", flush=True)
    seconds = time_resized_batches(workload, (NATIVE_SIZE, RESIZED_SIZE), settings.resized_batches,
                                   settings.resized_warmup)
    return ResizeResult(native, seconds)


@dataclass(frozen=True)
class Run:
    """Everything one run measured, and the CPU time that other processes took during it."""

    settings: Settings
    threads: int
    digits: WorkloadResults
    cifar: WorkloadResults | None  # None when the CIFAR-10 folder is missing
    resize: ResizeResult | None
    cifar_skip_reason: str
    other_cpu_share: float | None  # share of all cores' time that other processes took during the run
    seconds: float


def measure(settings: Settings, threads: int) -> Run:
    start_times = cpu_times()
    started = time.perf_counter()
    print(f"digits: {plural(settings.digits_epochs, 'epoch')}, {plural(settings.digits_repeats, 'round')}, "
          f"{threads} torch threads", flush=True)
    digits = measure_workload(digits_workload(), settings.digits_epochs, settings.digits_repeats)

    cifar_folder = CIFAR_SUBSET / "train"
    cifar, resize, skip_reason = None, None, ""
    if cifar_folder.is_dir():
        print(f"CIFAR-10: {settings.cifar_per_class} images per class from {cifar_folder}", flush=True)
        workload = cifar_workload(cifar_folder, settings.cifar_per_class)
        cifar = measure_workload(workload, settings.cifar_epochs, settings.cifar_repeats)
        resize = measure_resize(workload, cifar.loops[DATALOADER.format(0)], settings)
    else:
        skip_reason = f"CIFAR-10 rows skipped: the folder {cifar_folder} does not exist."
        print(skip_reason)
    return Run(settings, threads, digits, cifar, resize, skip_reason, other_cpu_share(start_times),
               time.perf_counter() - started)


def render(run: Run) -> str:
    """Write the run up as the markdown body of the throughput section."""
    settings, digits, cifar = run.settings, run.digits, run.cifar
    parts = [
        "Training throughput of the pipeline's train stage against a minimal hand-written loop and "
        "the usual torchvision DataLoader loop. Every loop trains the 6-layer plain CNN "
        f"(`small_cnn`, depth 3, width 32, float32) with Adam at lr 1e-3 and batch size {BATCH_SIZE}, "
        f"from the same seeded weights, with {run.threads} torch threads. Each loop is warmed up on 4 "
        "batches. Then the loops run in turn, round after round, each round starting one loop later "
        "than the one before. The table gives the median images/s "
        "over the rounds, and each ratio is the median of the per-round ratios, which compare loops "
        "that ran back to back under the same load.",
        "- **pipeline train stage**: `pipeline.train.train_model` as a trial calls it, with a trial's "
        "default cosine schedule and Adam's fused kernel (`fused=True`). It scores the dev part after every epoch, because pruning needs that "
        "score, and that time counts. Images/s counts training images only.\n"
        "- **minimal loop**: `randperm`, slice a batch of the same normalized tensors, forward, loss, "
        "backward, Adam step with torch's default settings. This is the practical limit of a plain loop.\n"
        "- **DataLoader, N workers**: a Dataset that applies `transforms.v2` ToImage, ToDtype and "
        "Normalize to one raw image at a time (uint8 tensors for digits, PIL images decoded once into "
        "memory for CIFAR-10), in `DataLoader(shuffle=True)`. Worker processes start anew each epoch, "
        "as by default. The targets compare with the faster of the two worker counts.",
        f"Digits: scikit-learn's 8×8 digits, split as a study splits them, {digits.workload.train_count} "
        f"train and {digits.workload.dev_count} dev images, {plural(settings.digits_epochs, 'epoch')} per run, "
        f"{plural(settings.digits_repeats, 'round')}.",
    ]
    if cifar is None:
        parts.append(run.cifar_skip_reason)
    else:
        parts.append(f"CIFAR-10: the first {settings.cifar_per_class} images of each class in "
                     f"`{CIFAR_SUBSET.name}/train`, split the same way: {cifar.workload.train_count} train and "
                     f"{cifar.workload.dev_count} dev images at 32 px, {plural(settings.cifar_epochs, 'epoch')} "
                     f"per run, {plural(settings.cifar_repeats, 'round')}.")
    rows = digits.rows() + (cifar.rows() if cifar is not None else [])
    parts.append(table(["data", "loop", "train images", "epochs", "repeats", "images/s (median)",
                        "images/s range", "s per epoch", "train stage ÷ this"], rows))
    parts += ["Targets:", "\n".join(verdicts(run)), " ".join(result.describe() for result in (digits, cifar)
                                                           if result is not None)]
    if run.resize is not None:
        parts += [
            f"Resizing CIFAR-10 images from 32 to {RESIZED_SIZE} px, as tutorials for ImageNet models do, "
            f"in the DataLoader loop with 0 workers and the same model built for {RESIZED_SIZE}-px input. "
            f"A full {RESIZED_SIZE}-px epoch would take too long, so the run times "
            f"{plural(settings.resized_batches, 'batch', 'batches')} after "
            f"{plural(settings.resized_warmup, 'untimed batch', 'untimed batches')}, taking turns with as "
            "many 32-px batches, and scales each median batch to the epoch. The ratio compares the two "
            "estimates, because they were measured at the same time. The full 32-px epochs timed above "
            "are shown for comparison:",
            run.resize.table(),
            f"The convolutions see {(RESIZED_SIZE / 32) ** 2:.0f}× as many pixels at {RESIZED_SIZE} px, "
            f"and the epoch took {run.resize.slowdown:.0f}× as long, without any new detail in the images.",
        ]
    parts += [
        "This run next to reference figures for a quiet 2-core machine of this kind (torch 2.14.1, "
        "float32, same model). The reference figures were not measured by this run:",
        table(["figure", "this run", "reference"], reference_rows(run)),
        load_note(run.other_cpu_share, run.seconds)
        + " The ranges show how much the rounds differed.",
    ]
    return "\n\n".join(parts)


def verdicts(run: Run) -> list[str]:
    """Return one verdict line per target, leaving out the CIFAR-10 ones when it was skipped."""
    lines = []
    targets = (("digits", run.digits, TARGET_VS_DATALOADER_DIGITS),
               ("CIFAR-10 32 px", run.cifar, TARGET_VS_DATALOADER_CIFAR))
    for label, results, dataloader_target in targets:
        if results is None:
            continue
        lines.append(verdict(f"Train stage ÷ minimal loop, {label}",
                             results.ratio(results.pipeline, results.minimal), TARGET_VS_MINIMAL))
        lines.append(verdict(f"Train stage ÷ faster DataLoader loop, {label}",
                             results.ratio(results.pipeline, results.faster_dataloader), dataloader_target))
    return lines


def reference_rows(run: Run) -> list[list[str]]:
    digits, cifar = run.digits, run.cifar
    rows = [
        ["minimal loop, digits, images/s", f"{digits.minimal.images_per_second:,.0f}",
         f"≈ {REFERENCE_MINIMAL_DIGITS:,.0f}"],
        ["minimal loop ÷ faster DataLoader loop, digits",
         f"{digits.ratio(digits.minimal, digits.faster_dataloader):.2f}×", REFERENCE_DATALOADER_DIGITS],
    ]
    if cifar is not None:
        rows += [
            ["minimal loop, CIFAR-10 32 px, images/s", f"{cifar.minimal.images_per_second:,.0f}",
             f"≈ {REFERENCE_MINIMAL_CIFAR:,.0f}"],
            ["minimal loop ÷ faster DataLoader loop, CIFAR-10 32 px",
             f"{cifar.ratio(cifar.minimal, cifar.faster_dataloader):.2f}×", REFERENCE_DATALOADER_CIFAR],
        ]
    if run.resize is not None:
        rows.append([f"{RESIZED_SIZE}-px epoch ÷ 32-px epoch, DataLoader loop", f"{run.resize.slowdown:.1f}×",
                     REFERENCE_RESIZE_SLOWDOWN])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run a smoke test with fewer images, epochs and repeats, and print the section "
                             "without writing it")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for every loop (default: torch's default, %(default)s here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    body = render(measure(QUICK if args.quick else FULL, args.threads))
    publish("throughput", "Training throughput", body, write=not args.quick)


if __name__ == "__main__":
    main()
