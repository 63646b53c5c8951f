"""Shared helpers for the benchmark scripts: machine facts, medians, tables and docs/BENCHMARKS.md.

Each script measures every variant it compares in the same run and process
tree, then replaces its own section of docs/BENCHMARKS.md, so the scripts can be
rerun one at a time and the page keeps the others' last results.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import resource
import shlex
import statistics
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "BENCHMARKS.md"
CIFAR_SUBSET = ROOT.parent / "shared" / "data" / "cifar10-subset"
PACKAGES = ("torch", "torchvision", "optuna", "mlflow", "numpy", "scikit-learn")

HEADER = """# Benchmarks

Speed and efficiency figures of the pipeline, each measured against simpler ways to
do the same work in one run on one machine. Every section names the machine, the
library versions and the command that reproduces it; `python benchmarks/run_all.py`
reruns them all. Ratios are the figures to compare across machines: absolute
throughputs depend on the CPU.
"""


def cpu_name() -> str:
    """Return the CPU model from /proc/cpuinfo, or the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float | None:
    """Return the total memory in GiB from /proc/meminfo, or None where it is not readable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


OTHER_CPU_LIMIT = 0.10  # share of all cores' time that other work may take during a run before it counts as noisy


@dataclass(frozen=True)
class CpuTimes:
    """Busy and total CPU seconds of the whole machine, and this process's own, at one moment."""

    machine_busy: float  # user, nice, system, irq, softirq and steal time over all cores
    machine_total: float  # the same plus idle and iowait
    own: float  # user and system time of this process and its reaped child processes


def cpu_times() -> CpuTimes | None:
    """Read the machine's CPU times from /proc/stat, or return None where it is not readable."""
    try:
        # The first line sums all cores: user nice system idle iowait irq softirq steal, in clock ticks.
        # The guest fields after them are already counted in user and nice.
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        ticks_per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    idle = fields[3] + fields[4]
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return CpuTimes((sum(fields) - idle) / ticks_per_second, sum(fields) / ticks_per_second, own)


def other_cpu_share(start: CpuTimes | None) -> float | None:
    """Return the share of all cores' time since ``start`` that went to other work than this process tree.

    Child processes count as this process's only once they have exited, as DataLoader
    workers do at the end of each epoch.
    """
    end = cpu_times()
    if start is None or end is None or end.machine_total <= start.machine_total:
        return None
    other = (end.machine_busy - start.machine_busy) - (end.own - start.own)
    return max(other, 0.0) / (end.machine_total - start.machine_total)


def load_note(other_share: float | None, seconds: float) -> str:
    """Describe how much CPU other work took during a run, and warn when that makes the figures noisy."""
    shown = "an unknown share" if other_share is None else f"{other_share:.0%}"
    text = f"Other processes took {shown} of the CPU time during the run, which took {seconds:.0f} s."
    if other_share is not None and other_share >= OTHER_CPU_LIMIT:
        text += (" That competition makes these figures noisy and likely too low. Rerun on a quiet machine "
                 "before comparing them.")
    return text


def machine_line() -> str:
    """Describe the machine, the device and the library versions in one markdown paragraph."""
    import torch

    memory = memory_gib()
    parts = [f"{cpu_name()}, {os.cpu_count()} logical cores"]
    if memory is not None:
        parts.append(f"{memory:.0f} GiB memory")
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    else:
        parts.append("no GPU")
    versions = ", ".join(f"{name} {_version(name)}" for name in PACKAGES)
    return f"Machine: {'; '.join(parts)}. Python {platform.python_version()}, {versions}."


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def median(values: list[float]) -> float:
    """Return the median of a non-empty list."""
    return statistics.median(values)


def plural(count: int, noun: str, plural_noun: str | None = None) -> str:
    """Return ``count`` with ``noun``, or with ``plural_noun`` (default: noun + "s") unless the count is 1."""
    return f"{count} {noun}" if count == 1 else f"{count} {plural_noun or noun + 's'}"


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Format rows as a markdown table; floats keep the precision the caller rounded them to."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(name: str, measured: float, target: float, higher_is_better: bool = True, unit: str = "×") -> str:
    """Return one line stating whether ``measured`` meets ``target``, saying MISSED plainly when not."""
    met = measured >= target if higher_is_better else measured <= target
    relation = "≥" if higher_is_better else "≤"
    status = "met" if met else "MISSED"
    return f"- {name}: {measured:.2f}{unit} (target {relation} {target:g}{unit}): **{status}**"


def command_line() -> str:
    """Return the command that reproduces this run, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def write_section(key: str, title: str, body: str, doc: Path = DOC) -> None:
    """Replace the section ``key`` of the benchmarks page with ``body``, adding it when new.

    The section is headed by ``title`` and followed by the date, the machine and the
    command, so each section names where its own figures come from.
    """
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    section = (f"{start}\n## {title}\n\n{machine_line()}\n\nRun on {stamp} with `{command_line()}`.\n\n"
               f"{body.strip()}\n{end}")
    text = doc.read_text() if doc.exists() else HEADER
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text)
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text)
    print(f"wrote section '{title}' to {doc}")


def publish(key: str, title: str, body: str, write: bool, reason: str = "--quick runs only print") -> None:
    """Print ``body``, then write it as section ``key`` of the benchmarks page when ``write`` is true."""
    print()
    print(body)
    if write:
        write_section(key, title, body)
    else:
        print(f"\nnot writing {DOC.parent.name}/{DOC.name}: {reason}")
