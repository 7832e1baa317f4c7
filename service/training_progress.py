"""The progress line of a training job in ``pytc run``: iteration, loss, learning rate, it/s, ETA.

Redrawn in place on a terminal; in a log or a pipe a new line every ``interval_s`` seconds and for
every change of state (validating, saving, finished), so CI logs stay short but show the run move.
"""

from __future__ import annotations

from service.progress import StatusLine, format_duration
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


class TrainingProgressLine(StatusLine):
    """Callable as ``on_progress``; call :meth:`close` at the end to finish the line."""

    tty_interval_s = 0.2
    _last_state = ""  # a change of state is drawn at once

    def __call__(self, report: TrainingProgress) -> None:
        if self._due(force=report.state != self._last_state):
            self._last_state = report.state
            self._draw(format_training_progress(report))
