"""The sweep's progress line on stderr: done / running / diverged / failed / left and an ETA."""

from __future__ import annotations

import statistics
import sys
import time
from typing import TextIO

from proxstudy.study.records import STATUS_COMPLETED, STATUS_DIVERGED

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """One line on stderr: done / running / diverged / failed / left and an ETA.

    The ETA is (trials left) x (mean trial time) / (trials running at once). On a terminal the
    line is rewritten in place; otherwise a line is written at most every 30 s and at the end.
    """

    def __init__(self, study_name: str, total: int, completed: int, diverged: int, failed: int,
                 enabled: bool, stream: TextIO | None = None) -> None:
        self.study_name = study_name
        self.total = total
        self.completed, self.diverged, self.failed = completed, diverged, failed
        self.running = 0
        self.max_running = 0
        self.durations: list[float] = []
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = 0.0
        self._width = 0
        self._closing = False

    @property
    def left(self) -> int:
        return max(0, self.total - self.completed - self.diverged - self.failed - self.running)

    def trial_started(self) -> None:
        self.running += 1
        self.max_running = max(self.max_running, self.running)

    def trial_finished(self, status: str, seconds: float) -> None:
        """Count a finished trial (``seconds``: from its start on the driver to its end)."""
        self.durations.append(seconds)
        self.running = max(0, self.running - 1)
        if status == STATUS_COMPLETED:
            self.completed += 1
        elif status == STATUS_DIVERGED:
            self.diverged += 1
        else:
            self.failed += 1

    def line(self) -> str:
        done = self.completed + self.diverged + self.failed
        text = (f"[{self.study_name}] {done}/{self.total} done ({self.completed} completed, "
                f"{self.diverged} diverged, {self.failed} failed), {self.running} running, "
                f"{self.left} left")
        if self.durations and self.running and not self._closing:
            parallel = max(1, self.max_running)
            remaining = (self.left + self.running / 2) * statistics.fmean(self.durations) / parallel
            text += f", ETA {format_duration(remaining)}"
        return text

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.5 if self._tty else 30.0
        if now - self._last < interval and not (force and self._tty):
            return
        self._last = now
        text = self.line()
        if self._tty:
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        """A message of its own (a retried or crashed trial); the progress line follows it."""
        if not self.enabled:
            return
        if self._tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last = 0.0
        if self._tty:
            self.show(force=True)

    def close(self) -> None:
        """The last line (no ETA); nothing is running any more."""
        self.running = 0
        if not self.enabled:
            return
        self._last = 0.0
        self._closing = True
        self.show(force=True)
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
