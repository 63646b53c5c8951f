"""Compare the FLOP/s that training achieves with this machine's float32 matrix-multiply FLOP/s.

In one run and with one torch thread count, the script measures the FLOP/s of
``torch.mm`` on 2048×2048 float32 matrices, and of the same product done as a 1×1
convolution, which torch hands to oneDNN like the model's convolutions. It counts the
training FLOPs per image of the 6-layer plain CNN (small_cnn, depth 3, width 32) on
32-px CIFAR-10 images with FlopCounterMode, and times the pipeline's train stage and a
minimal loop on the same images. A profile of a few minimal-loop steps shows where the
time goes.

    python benchmarks/efficiency.py            # full run, writes its section of docs/BENCHMARKS.md
    python benchmarks/efficiency.py --quick    # smoke test: less work, prints only
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from common import CIFAR_SUBSET, cpu_times, load_note, median, other_cpu_share, plural, publish, table, verdict
from pipeline.models import flops_per_image
from workloads import (BATCH_SIZE, LEARNING_RATE, Workload, cifar_workload, new_model,
                       random_workload, time_minimal_loop, time_pipeline)

# Reference figures for a quiet 2-core machine of the kind these benchmarks were written
# for (torch 2.14.1, float32), given with the target. This script does not measure them.
REFERENCE_TRAINING_MFLOP = 173.0  # per training image
REFERENCE_MATMUL_GFLOPS = 150.0

TARGET_FRACTION = 0.5  # of the matmul FLOP/s
MATMUL_SIZE = 2048
PROFILED_STEPS = 5
PIPELINE = "pipeline train stage"
MINIMAL = "minimal loop"


@dataclass(frozen=True)
class Settings:
    """How much work one run does."""

    cifar_per_class: int  # images taken from each class folder; 70 % of them train
    epochs: int
    repeats: int
    matmul_repeats: int  # per round


FULL = Settings(cifar_per_class=286, epochs=1, repeats=5, matmul_repeats=5)
QUICK = Settings(cifar_per_class=43, epochs=1, repeats=1, matmul_repeats=3)

# Profiler operator names grouped into the parts of a training step. An operator joins the
# first group with a matching name part, and the rest count as "everything else".
OPERATOR_GROUPS = (
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("convolution",)),
    ("batch norm, forward and backward", ("batch_norm",)),
    ("max pooling, forward and backward", ("max_pool",)),
    ("ReLU, forward and backward", ("relu", "threshold", "clamp_min")),
)


def time_matmuls(size: int, repeats: int) -> list[float]:
    """Return the FLOP/s of each of ``repeats`` float32 ``size``×``size`` products, after one untimed product."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator)
    b = torch.randn(size, size, generator=generator)
    out = torch.empty(size, size)
    return time_products(lambda: torch.mm(a, b, out=out), 2 * size**3, repeats)


def time_convolution_products(size: int, repeats: int) -> list[float]:
    """Return the FLOP/s of the same ``size``×``size`` products done as 1×1 convolutions, which torch runs in oneDNN.

    The weight is a ``size``×``size`` matrix and the input has ``size`` channels of
    32 × ``size``/32 pixels, so each convolution multiplies two ``size``×``size`` matrices.
    """
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(size, size, 1, 1, generator=generator)
    inputs = torch.randn(1, size, 32, size // 32, generator=generator)
    return time_products(lambda: nn.functional.conv2d(inputs, weight), 2 * size**3, repeats)


def time_products(product: Callable[[], object], flops: int, repeats: int) -> list[float]:
    product()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        rates.append(flops / (time.perf_counter() - start))
    return rates


def training_flops_per_image(workload: Workload) -> tuple[float, dict[str, float]]:
    """Count the FLOPs of one training batch (forward, loss, backward) per image, in total and per operator."""
    model = new_model(workload)
    model.train()
    inputs = workload.prepared.x["train"][:BATCH_SIZE]
    targets = workload.prepared.y["train"][:BATCH_SIZE]
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(inputs), targets).backward()
    per_operator = {str(name): count / len(inputs) for name, count in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops() / len(inputs), per_operator


@dataclass(frozen=True)
class StepProfile:
    """The CPU time of a few profiled training steps, split by operator group."""

    seconds: dict[str, float]  # self CPU seconds per group of OPERATOR_GROUPS or "everything else"
    wall: float  # seconds of the steps, profiler on
    convolution_operators: list[str]  # profiled operator names that contain "convolution"


def profile_steps(workload: Workload, steps: int) -> StepProfile:
    """Profile ``steps`` minimal-loop steps after one untimed step."""
    model = new_model(workload)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    inputs = workload.prepared.x["train"][:BATCH_SIZE]
    targets = workload.prepared.y["train"][:BATCH_SIZE]
    model.train()

    def step() -> None:
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - start
    seconds: dict[str, float] = defaultdict(float)
    convolution_operators = []
    # Self times exclude the children of each record, so their sum is the profiled CPU time.
    for event in profiler.key_averages():
        group = next((label for label, names in OPERATOR_GROUPS if any(name in event.key for name in names)),
                     "everything else")
        seconds[group] += event.self_cpu_time_total / 1e6
        if "convolution" in event.key:
            convolution_operators.append(event.key)
    return StepProfile(dict(seconds), wall, sorted(convolution_operators))


def load_workload(settings: Settings) -> Workload:
    """Load the CIFAR-10 subset, or random tensors of the same shape when its folder is missing."""
    cifar_folder = CIFAR_SUBSET / "train"
    if cifar_folder.is_dir():
        return cifar_workload(cifar_folder, settings.cifar_per_class)
    train_count = round(settings.cifar_per_class * 10 * 0.7)
    workload = random_workload(train_count, round(train_count / 7))
    print(f"{cifar_folder} does not exist, so the run trains on {workload.note}")
    return workload


@dataclass(frozen=True)
class Run:
    """Everything one run measured, and the CPU time that other processes took during it."""

    settings: Settings
    threads: int
    workload: Workload
    flops: float  # counted training FLOPs per image
    per_operator: dict[str, float]  # the same, per aten operator
    forward_flops: float  # counted forward FLOPs per image, in eval mode
    matmul_rates: list[float]  # FLOP/s of each torch.mm product
    convolution_product_rates: list[float]  # FLOP/s of each product done as a 1×1 convolution
    images_per_second: dict[str, list[float]]  # per loop, one entry per round
    profile: StepProfile
    other_cpu_share: float | None  # share of all cores' time that other processes took during the run
    seconds: float

    @property
    def matmul(self) -> float:
        return median(self.matmul_rates)

    def fraction(self, loop: str) -> float:
        """Return the loop's median training FLOP/s as a fraction of the median matmul FLOP/s."""
        return self.flops * median(self.images_per_second[loop]) / self.matmul


def measure(settings: Settings, threads: int) -> Run:
    start_times = cpu_times()
    started = time.perf_counter()
    workload = load_workload(settings)
    print(f"{workload.name}: {workload.train_count} train images, {plural(settings.repeats, 'round')}, "
          f"{threads} torch threads", flush=True)
    flops, per_operator = training_flops_per_image(workload)
    forward_flops = flops_per_image(new_model(workload), workload.channels, workload.image_size)

    loops = {PIPELINE: time_pipeline, MINIMAL: time_minimal_loop}
    warmup = workload.truncated(4 * BATCH_SIZE)
    for loop in loops.values():
        loop(warmup, 1)
    matmul_rates: list[float] = []
    convolution_product_rates: list[float] = []
    images_per_second: dict[str, list[float]] = {name: [] for name in loops}
    images = workload.train_count * settings.epochs
    # Each round measures the products and both loops, so a slow spell of a shared CPU hits all of them.
    for round_number in range(settings.repeats):
        matmul_rates += time_matmuls(MATMUL_SIZE, settings.matmul_repeats)
        convolution_product_rates += time_convolution_products(MATMUL_SIZE, settings.matmul_repeats)
        for name, loop in loops.items():
            images_per_second[name].append(images / loop(workload, settings.epochs))
        rates = ", ".join(f"{name} {rates[-1]:,.0f} images/s" for name, rates in images_per_second.items())
        print(f"  round {round_number + 1}/{settings.repeats}: matmul {median(matmul_rates) / 1e9:.1f} GFLOP/s, "
              f"{rates}", flush=True)

    step_profile = profile_steps(workload, PROFILED_STEPS)
    return Run(settings, threads, workload, flops, per_operator, forward_flops, matmul_rates,
               convolution_product_rates, images_per_second,
               step_profile, other_cpu_share(start_times), time.perf_counter() - started)


def rate_rows(run: Run) -> list[list[str]]:
    convolution_product = median(run.convolution_product_rates)
    rows = []
    for label, rates in ((f"float32 `torch.mm`, {MATMUL_SIZE}×{MATMUL_SIZE}", run.matmul_rates),
                         ("the same product as a 1×1 convolution (oneDNN)", run.convolution_product_rates)):
        rows.append([label, "", f"{median(rates) / 1e9:.1f}", f"{min(rates) / 1e9:.1f}–{max(rates) / 1e9:.1f}",
                     f"{median(rates) / run.matmul:.0%}", f"{median(rates) / convolution_product:.0%}"])
    for name, rates in run.images_per_second.items():
        achieved = [run.flops * rate for rate in rates]
        rows.append([f"training, {name}", f"{median(rates):,.0f}", f"{median(achieved) / 1e9:.1f}",
                     f"{min(achieved) / 1e9:.1f}–{max(achieved) / 1e9:.1f}", f"{run.fraction(name):.0%}",
                     f"{median(achieved) / convolution_product:.0%}"])
    return rows


def describe_fractions(run: Run) -> str:
    """Explain in one or two sentences whether a shortfall is the pipeline's or PyTorch's."""
    pipeline, minimal = run.fraction(PIPELINE), run.fraction(MINIMAL)
    text = f"The train stage reached {pipeline:.0%} of the matmul FLOP/s and the minimal loop {minimal:.0%}"
    pipeline_rates, minimal_rates = run.images_per_second[PIPELINE], run.images_per_second[MINIMAL]
    slower = sum(mine < theirs for mine, theirs in zip(pipeline_rates, minimal_rates))
    text += f", and the train stage was the slower of the two in {slower} of {len(pipeline_rates)} rounds"
    if pipeline >= TARGET_FRACTION:
        return text + "."
    if minimal < TARGET_FRACTION:
        return (text + ". The minimal loop falls short of the target too, so the shortfall is mainly in "
                "PyTorch's CPU kernels for this model, not in the pipeline.")
    return text + ". The minimal loop meets the target, so the shortfall comes from the pipeline's own work."


def kernel_libraries(run: Run) -> str:
    """Name the libraries behind ``torch.mm`` and the convolutions, from torch's build and the profile."""
    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"MKL-DNN (v[\d.]+)", config)
    operators = ", ".join(f"`{name}`" for name in run.profile.convolution_operators)
    speedup = median(run.convolution_product_rates) / run.matmul
    return (f"This torch build uses the {blas.group(1) if blas else 'unknown'} BLAS for `torch.mm` and has "
            f"oneDNN {onednn.group(1) if onednn else '(version unknown)'} for convolutions. In the profile "
            f"below, the convolutions ran as {operators}. Each library picks its own kernels. The same "
            f"{MATMUL_SIZE}×{MATMUL_SIZE} product ran {speedup:.2f}× as fast as a 1×1 convolution as through "
            "`torch.mm`, so the `torch.mm` rate belongs to the BLAS on this CPU and need not be the CPU's peak.")


def describe_profile(run: Run) -> list[str]:
    """Return the profile of the minimal loop's steps as a sentence and a table."""
    convolution_flops = sum(count for name, count in run.per_operator.items() if "convolution" in name)
    convolution_seconds = sum(run.profile.seconds.get(group, 0.0)
                              for group in ("convolution forward", "convolution backward"))
    convolution_rate = convolution_flops * BATCH_SIZE * PROFILED_STEPS / convolution_seconds
    profiled_total = sum(run.profile.seconds.values())
    rows = [[group, f"{seconds / PROFILED_STEPS * 1e3:.1f}", f"{seconds / profiled_total:.0%}"]
            for group, seconds in sorted(run.profile.seconds.items(), key=lambda item: -item[1])]
    text = (f"A profile of {PROFILED_STEPS} minimal-loop steps ({run.profile.wall / PROFILED_STEPS * 1e3:.0f} ms "
            "per step with the profiler on) splits the self CPU time as below. The convolutions alone ran at "
            f"{convolution_rate / 1e9:.0f} GFLOP/s ({convolution_rate / run.matmul:.0%} of matmul), while batch "
            "norm, pooling and ReLU take time without adding counted FLOPs.")
    return [text, table(["part of a training step", "ms per step", "share"], rows)]


def render(run: Run) -> str:
    """Write the run up as the markdown body of the efficiency section."""
    settings, workload = run.settings, run.workload
    epochs = plural(settings.epochs, "epoch")
    if workload.note:
        source = f"It trains on {workload.train_count} {workload.note}, {epochs} per run."
    else:
        source = (f"It trains on {workload.train_count} CIFAR-10 images at 32 px, {epochs} per run. They are the "
                  f"train part of the first {settings.cifar_per_class} images of each class in "
                  f"`{CIFAR_SUBSET.name}/train`, split as a study splits them, with {workload.dev_count} dev images.")
    operators = ", ".join(f"`{name}` {count / 1e6:.3g} M" for name, count in run.per_operator.items())
    parts = [
        "Achieved training FLOP/s against the float32 matrix-multiply FLOP/s of the same machine, "
        f"both with {run.threads} torch threads. Training FLOP/s = training FLOPs per image × images/s. "
        "The FLOPs per image are counted by `torch.utils.flop_counter.FlopCounterMode` over the forward "
        f"pass, loss and backward pass of one batch of {BATCH_SIZE}, divided by {BATCH_SIZE}. It counts "
        "convolutions and matrix products only, at 2 FLOPs per multiply-add. The model is the 6-layer "
        f"plain CNN (`small_cnn`, depth 3, width 32, float32), trained with Adam at batch size {BATCH_SIZE}. "
        f"{source} The products and both loops run in turn, "
        f"{plural(settings.repeats, 'round')} with {settings.matmul_repeats} products per round, after a "
        "warm-up, and the table gives medians.",
        "The train stage's time includes scoring the dev part after every epoch, as in a trial, but its "
        "FLOPs count training images only.",
        table(["measurement", "images/s", "GFLOP/s (median)", "GFLOP/s range", "÷ torch.mm",
               "÷ 1×1 convolution"], rate_rows(run)),
        table(["figure", "this run", "reference"], [
            ["training FLOPs per image, FlopCounterMode", f"{run.flops / 1e6:.1f} M",
             f"≈ {REFERENCE_TRAINING_MFLOP:.0f} M"],
            ["training FLOPs per image, 3 × forward (rule of thumb)", f"{3 * run.forward_flops / 1e6:.1f} M", ""],
            ["matmul GFLOP/s", f"{run.matmul / 1e9:.1f}", f"≈ {REFERENCE_MATMUL_GFLOPS:.0f}"],
        ]),
        "The reference figures are expected on a quiet 2-core machine of this kind (torch 2.14.1, "
        f"float32), and this run did not measure them. Per training image, FlopCounterMode counted {operators}. "
        + kernel_libraries(run),
        "Target:",
        verdict("Train stage FLOP/s ÷ matmul FLOP/s", 100 * run.fraction(PIPELINE), 100 * TARGET_FRACTION,
                unit="%")
        + f"\n- For comparison, minimal loop FLOP/s ÷ matmul FLOP/s: {run.fraction(MINIMAL):.0%}.",
        describe_fractions(run),
        *describe_profile(run),
        load_note(run.other_cpu_share, run.seconds)
        + " The ranges show how much the rounds differed.",
    ]
    return "\n\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="run a smoke test with fewer images and repeats, and print the section without "
                             "writing it")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for the products and the training (default: torch's default, "
                             "%(default)s here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    body = render(measure(QUICK if args.quick else FULL, args.threads))
    publish("efficiency", "Training FLOP/s against matmul FLOP/s", body, write=not args.quick)


if __name__ == "__main__":
    main()
