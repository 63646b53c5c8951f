"""Progress over trials and epochs: a live status line on a terminal, log lines elsewhere.

On a terminal, stderr shows one line that is redrawn after every epoch: trial,
epoch, the epoch's dev accuracy, the best value so far and the elapsed time. Log
records are printed above it. When stderr is a file or a pipe (CI, nohup),
every epoch and every trial is one plain log line instead.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("pipeline.progress")


class Progress:
    """The study's progress display; one per process."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self.started = time.monotonic()
        self.total_trials = 0
        self.done_trials = 0
        self.best: str = "-"
        self.status = ""
        self._lock = threading.Lock()

    def start(self, total_trials: int) -> None:
        self.started = time.monotonic()
        self.total_trials = total_trials
        self.done_trials = 0

    def epoch(self, trial: int, epoch: int, epochs: int, train_loss: float, train_accuracy: float,
              dev_accuracy: float, seconds: float) -> None:
        """Report one finished epoch of a trial."""
        if not self.live:
            log.info("trial %d epoch %d/%d: train_loss %.4f train_acc %.4f dev_acc %.4f (%.1fs)",
                     trial, epoch, epochs, train_loss, train_accuracy, dev_accuracy, seconds)
            return
        log.debug("trial %d epoch %d/%d: train_loss %.4f train_acc %.4f dev_acc %.4f (%.1fs)",
                  trial, epoch, epochs, train_loss, train_accuracy, dev_accuracy, seconds)
        self._draw(f"trial {trial} ({self.done_trials + 1}/{self.total_trials}) epoch {epoch}/{epochs} "
                   f"loss {train_loss:.4f} dev_acc {dev_accuracy:.4f} | best {self.best} | {self._elapsed()}")

    def trial_finished(self, best: str) -> None:
        """Count a finished trial and remember the best value so far for the status line."""
        self.done_trials += 1
        self.best = best
        if self.live:
            self._draw(f"{self.done_trials}/{self.total_trials} trials done | best {self.best} | {self._elapsed()}")

    def close(self) -> None:
        """Remove the status line so that what follows starts on a clean line."""
        if self.live and self.status:
            with self._lock:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self.status = ""

    def clear_for_log(self) -> None:
        """Erase the status line before a log record is written."""
        if self.live and self.status:
            self.stream.write("\r\033[K")

    def redraw_after_log(self) -> None:
        if self.live and self.status:
            self.stream.write(self.status)
            self.stream.flush()

    def _draw(self, status: str) -> None:
        with self._lock:
            self.status = status
            self.stream.write("\r\033[K" + status)
            self.stream.flush()

    def _elapsed(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressHandler(logging.StreamHandler):
    """Log handler that writes records above the live status line."""

    def __init__(self, progress: Progress) -> None:
        super().__init__(progress.stream)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        self.progress.clear_for_log()
        super().emit(record)
        self.progress.redraw_after_log()


_current = Progress(live=False)


def current() -> Progress:
    """Return this process's progress display."""
    return _current


def install(progress: Progress) -> Progress:
    """Make ``progress`` this process's display."""
    global _current
    _current = progress
    return progress
