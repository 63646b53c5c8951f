"""Run every benchmark in turn, each in its own process, and rewrite docs/BENCHMARKS.md.

Run it on an otherwise idle machine: the figures are ratios measured within each
script, but other work on the cores still skews them.

    python benchmarks/run_all.py
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = ("throughput.py", "trial_overhead.py", "time_to_target.py", "workers.py", "efficiency.py")


def main() -> int:
    folder = Path(__file__).resolve().parent
    failed = []
    for script in SCRIPTS:
        started = time.perf_counter()
        print(f"== {script}", flush=True)
        code = subprocess.call([sys.executable, str(folder / script), *sys.argv[1:]], cwd=folder.parent)
        print(f"== {script} exited {code} after {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(script)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
