"""The progress line of a training job in ``pytc run``: iteration, loss, learning rate, it/s, ETA.

Redrawn in place on a terminal; in a log or a pipe a new line every ``interval_s`` seconds and for
every change of state (validating, saving, finished), so CI logs stay short but show the run move.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from service.progress import format_duration
from service.training_runner import TrainingProgress


def format_training_progress(report: TrainingProgress) -> str:
    """``iteration 120/400 (30.0%)  loss 0.3121  lr 1.00e-03  5.20 it/s  ETA 54s``."""
    percent = 100.0 * report.done / report.total if report.total else 0.0
    text = f"iteration {report.done}/{report.total} ({percent:.1f}%)"
    if report.loss is not None:
        text += f"  loss {report.loss:.4f}"
    if report.lr is not None:
        text += f"  lr {report.lr:.2e}"
    if report.iterations_per_second > 0:
        text += f"  {report.iterations_per_second:.2f} it/s"
        eta = report.eta_seconds
        if eta is not None and report.done < report.total:
            text += f"  ETA {format_duration(eta)}"
    if report.validation:
        last = report.validation[-1]
        text += f"  val dice {last['dice']:.3f} @{last['iteration']}"
    if report.attempt > 1:
        text += f"  (attempt {report.attempt})"
    if report.state not in ("training", "finished"):
        text += f"  [{report.state}]"
    return text


class TrainingProgressLine:
    """Callable as ``on_progress``; call :meth:`close` at the end to finish the line."""

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
        self.interval_s = 0.2 if self.tty else interval_s
        self.clock = clock
        self._last_draw: float | None = None
        self._last_text = ""
        self._last_state = ""
        self._open_line = False

    def __call__(self, report: TrainingProgress) -> None:
        now = self.clock()
        changed = report.state != self._last_state
        due = self._last_draw is None or now - self._last_draw >= self.interval_s
        if not (due or changed):
            return
        self._last_draw, self._last_state = now, report.state
        self._draw(format_training_progress(report))

    def close(self) -> None:
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
