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
import shlex
import statistics
import sys
import time
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


BUSY_SHARE_LIMIT = 0.25  # share of all cores' time that other processes may use before a run counts as noisy


def other_cpu_use(seconds: float = 1.0) -> float | None:
    """Sleep ``seconds`` and return the share of all cores' time that was busy meanwhile.

    This process is asleep during the sample, so the busy time is other processes'.
    Reads /proc/stat and returns None where it is not readable.
    """
    def busy_and_total() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle and iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy_before, total_before = busy_and_total()
        time.sleep(seconds)
        busy_after, total_after = busy_and_total()
    except (OSError, ValueError, IndexError):
        return None
    elapsed = total_after - total_before
    return (busy_after - busy_before) / elapsed if elapsed > 0 else None


def load_note(before: float | None, after: float | None, seconds: float) -> str:
    """Describe the CPU use of other processes around a run, and warn when it makes the figures noisy."""
    def shown(share: float | None) -> str:
        return "unknown" if share is None else f"{share:.0%}"

    text = (f"Other processes kept {shown(before)} of the CPU time busy in a 1-s sample before the run and "
            f"{shown(after)} in one after it, and the run took {seconds:.0f} s.")
    if max((share for share in (before, after) if share is not None), default=0.0) >= BUSY_SHARE_LIMIT:
        text += (" Other work competed for the CPU, so these figures are noisy and likely too low. Rerun "
                 "on a quiet machine before comparing them.")
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
    command, so each section says where its own figures come from.
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
