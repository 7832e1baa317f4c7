"""A small progress display for ``pytc run``: blocks done, throughput, time left.

On a terminal the line is redrawn in place (``\\r``) at most a few times a second; in a log file or
a pipe a new line is written every ``interval_s`` seconds, and always for the first and last
report, so CI logs stay short but show that the job moves.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO


@dataclass
class Progress:
    """An inference job's progress: from :func:`service.runner.run_inference`, or read back from the
    service's progress object by ``pytc wait``."""

    done: int
    total: int
    unit: str
    voxels_done: int
    voxels_total: int
    elapsed_s: float


class ProgressReport(Protocol):
    """What is read of a :class:`Progress` (typed structurally: any object with these will do)."""

    @property
    def done(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def unit(self) -> str: ...
    @property
    def voxels_done(self) -> int: ...
    @property
    def voxels_total(self) -> int: ...
    @property
    def elapsed_s(self) -> float: ...


class StatusLine:
    """One status line, redrawn in place on a terminal or appended to a log, at most every ``interval_s``.

    Subclasses are callable as ``on_progress``: when :meth:`_due` says so, they format the report
    and :meth:`_draw` it. Call :meth:`close` when the job ends to finish the line.
    """

    tty_interval_s = 0.1  # how often a terminal line is redrawn at most

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 5.0,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.interval_s = self.tty_interval_s if self.tty else interval_s
        self.clock = clock
        self._last_draw: float | None = None
        self._last_text = ""
        self._open_line = False

    def _due(self, *, force: bool = False) -> bool:
        """Whether to draw now (``interval_s`` has passed, or ``force``); if so, counts as drawn."""
        now = self.clock()
        due = self._last_draw is None or now - self._last_draw >= self.interval_s
        if not (due or force):
            return False
        self._last_draw = now
        return True

    def close(self) -> None:
        """End the redrawn line so that later output starts on a fresh one."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def _draw(self, text: str) -> None:
        if text == self._last_text:
            return
        if self.tty:
            pad = " " * max(0, len(self._last_text) - len(text))
            self.stream.write(f"\r{text}{pad}")
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self._last_text = text
        self.stream.flush()


class ProgressBar(StatusLine):
    """The inference job's line: callable as ``on_progress``; call :meth:`close` when the job ends."""

    _baseline: tuple[float, int] | None = None  # (elapsed_s, voxels_done) at the first report

    def __call__(self, report: ProgressReport) -> None:
        if self._baseline is None:
            # Rates count this run only: blocks done by an earlier run (resume) are not throughput.
            self._baseline = (report.elapsed_s, report.voxels_done)
        if self._due(force=report.done >= report.total):
            self._draw(format_progress(report, self._baseline))


def format_progress(report: ProgressReport, baseline: tuple[float, int] = (0.0, 0)) -> str:
    """``blocks 12/48 (25.0%)  3.20 Mvox/s  ETA 1m05s``; rate and ETA from work done since ``baseline``."""
    total = max(report.total, 1)
    percent = 100.0 * report.done / total
    text = f"{report.unit} {report.done}/{report.total} ({percent:.1f}%)"
    seconds = report.elapsed_s - baseline[0]
    voxels = report.voxels_done - baseline[1]
    if seconds > 0 and voxels > 0:
        rate = voxels / seconds
        left = max(0, report.voxels_total - report.voxels_done) / rate
        text += f"  {_si(rate)}vox/s  ETA {format_duration(left)}"
    else:
        text += f"  elapsed {format_duration(report.elapsed_s)}"
    return text


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _si(value: float) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.0f} "
