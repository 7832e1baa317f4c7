"""A job's progress: one value, from the job's run to the store, the event stream, the metrics, the
``pytc`` status line and the client.

Every job kind reports :class:`Progress`: how much of its work is done, in its own unit (steps,
iterations, ...), plus figures of its own in ``details`` (voxels, loss, learning rate, the phase
it is in). A kind whose work has parts counts them in ``details["parts"]``, ``{name: [done,
total]}`` (an inference job: windows, chunks, blocks); the line shows each one.
:meth:`Progress.to_json` is the contract's progress object (``done``, ``total``, ``unit``,
``fraction``, ``rate``, ``eta_seconds``, ``elapsed_seconds`` and the details);
:meth:`Progress.from_json` reads it back (the client, ``pytc wait``).

A rate counts this run only: work an earlier run finished (a resume) is not throughput.
:class:`Throughput` fills the rate in for kinds that do not measure their own. :class:`ProgressLine`
shows the value as one line: redrawn in place on a terminal, or appended to a log at most every
``interval_s`` seconds (and for the first and last report, and whenever the phase changes), so
logs stay short but show the job move; a kind reports at least every few seconds while it runs,
moved or not, so a log hears from a running job well within :data:`LOG_HEARTBEAT_S`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

_CORE_KEYS = frozenset({"done", "total", "unit", "fraction", "rate", "eta_seconds", "elapsed_seconds"})
LOG_HEARTBEAT_S = 30.0  # a running job's progress reaches a log at least this often


@dataclass(frozen=True)
class Progress:
    """How far one job is: ``done`` of ``total`` units of work."""

    done: int
    total: int
    unit: str
    elapsed_s: float = 0.0  # since this run started
    rate: float | None = None  # units per second in this run; None until it can be told
    details: Mapping[str, Any] = field(default_factory=dict)  # the kind's own figures, JSON values

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if not self.rate or self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    @property
    def phase(self) -> str | None:
        """What the job is doing, when its kind says (``training``, ``saving``, ...)."""
        phase = self.details.get("phase")
        return str(phase) if phase is not None else None

    def to_json(self) -> dict[str, Any]:
        core = {
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "fraction": self.fraction,
            "rate": self.rate,
            "eta_seconds": self.eta_seconds,
            "elapsed_seconds": self.elapsed_s,
        }
        return {**{k: v for k, v in self.details.items() if k not in _CORE_KEYS}, **core}

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> Progress:
        rate = record.get("rate")
        return cls(
            done=int(record.get("done") or 0),
            total=int(record.get("total") or 0),
            unit=str(record.get("unit") or "units"),
            elapsed_s=float(record.get("elapsed_seconds") or 0.0),
            rate=float(rate) if rate is not None else None,
            details={k: v for k, v in record.items() if k not in _CORE_KEYS},
        )


class Throughput:
    """Fills in the rate of reports that have none, from the first report this run made."""

    def __init__(self) -> None:
        self._first: Progress | None = None

    def __call__(self, report: Progress) -> Progress:
        if self._first is None:
            self._first = report
        if report.rate is not None:
            return report
        seconds = report.elapsed_s - self._first.elapsed_s
        done = report.done - self._first.done
        return replace(report, rate=done / seconds if seconds > 0 and done > 0 else None)


def format_progress(report: Progress) -> str:
    """``steps 120/430 (27.9%)  3.10 steps/s  ETA 1m43s``, then the kind's parts and figures, e.g.
    ``... windows 120/400  chunks 0/30  blocks 0/8`` or
    ``iterations 120/400 (30.0%)  2.10 iterations/s  ETA 2m13s  loss 0.3121  lr 1.00e-03``."""
    text = f"{report.unit} {report.done}/{report.total} ({100.0 * report.fraction:.1f}%)"
    eta = report.eta_seconds
    if report.rate:
        text += f"  {_number(report.rate)} {report.unit}/s"
    if eta is not None and report.done < report.total:
        text += f"  ETA {format_duration(eta)}"
    elif not report.rate:
        text += f"  elapsed {format_duration(report.elapsed_s)}"
    details = report.details
    text += _parts(details.get("parts"))
    if isinstance(details.get("loss"), int | float):
        text += f"  loss {details['loss']:.4f}"
    if isinstance(details.get("lr"), int | float):
        text += f"  lr {details['lr']:.2e}"
    validation = details.get("validation")
    if isinstance(validation, list) and validation and isinstance(validation[-1], Mapping):
        last = validation[-1]
        text += f"  val dice {float(last.get('dice', 0.0)):.3f} @{last.get('iteration')}"
    if isinstance(details.get("attempt"), int) and details["attempt"] > 1:
        text += f"  (attempt {details['attempt']})"
    if report.phase is not None and report.phase not in ("running", "training", "finished"):
        text += f"  [{report.phase}]"
    return text


def _parts(parts: Any) -> str:
    """``  windows 120/400  chunks 0/30`` from ``{"windows": [120, 400], "chunks": [0, 30]}``;
    whatever is not a pair of counts is left out."""
    if not isinstance(parts, Mapping):
        return ""
    text = ""
    for name, counts in parts.items():
        if isinstance(counts, list | tuple) and len(counts) == 2 and all(isinstance(n, int) for n in counts):
            text += f"  {name} {counts[0]}/{counts[1]}"
    return text


def format_duration(seconds: float) -> str:
    """``42s``, ``3m07s``, ``2h05m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _number(value: float) -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= factor:
            return f"{value / factor:.2f} {prefix}"
    return f"{value:.2f}"


class ProgressLine:
    """One status line, callable with each :class:`Progress`; call :meth:`close` when the job ends.

    On a terminal the line is redrawn in place at most every ``tty_interval_s`` (and only when it
    changed); in a log or a pipe a new line is written at most every ``interval_s``, and always for
    the first report, the first that shows work done in this run (with its rate and time left),
    the last (``done == total``) and a change of phase. A line the same as the
    last one is written again in a log too, but only after ``heartbeat_s``: a job that stands still
    still shows it is there.
    """

    tty_interval_s = 0.1
    log_interval_s = 5.0

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float | None = None,  # in a log; default: log_interval_s
        heartbeat_s: float = LOG_HEARTBEAT_S,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        log_interval_s = self.log_interval_s if interval_s is None else interval_s
        self.interval_s = self.tty_interval_s if self.tty else log_interval_s
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.throughput = Throughput()
        self._last_draw: float | None = None
        self._last_text = ""
        self._phase: str | None = None
        self._start_done: int | None = None  # done at the first report of this run
        self._moved = False  # a report has shown work done in this run
        self._open_line = False

    def __call__(self, report: Progress) -> None:
        report = self.throughput(report)
        first_move = self._start_done is not None and not self._moved and report.done > self._start_done
        force = report.done >= report.total or report.phase != self._phase or first_move
        self._phase = report.phase
        self._moved = self._moved or first_move
        if self._start_done is None:
            self._start_done = report.done
        now = self.clock()
        if not force and self._last_draw is not None and now - self._last_draw < self.interval_s:
            return
        text = format_progress(report)
        if text == self._last_text and (
            self.tty or (self._last_draw is not None and now - self._last_draw < self.heartbeat_s)
        ):
            return
        self._last_draw = now
        self._draw(text)

    def close(self) -> None:
        """End a redrawn line so that later output starts on a fresh one."""
        if self._open_line:
            self.stream.write("\n")
            self.stream.flush()
            self._open_line = False

    def _draw(self, text: str) -> None:
        if self.tty:
            pad = " " * max(0, len(self._last_text) - len(text))
            self.stream.write(f"\r{text}{pad}")
            self._open_line = True
        else:
            self.stream.write(text + "\n")
        self._last_text = text
        self.stream.flush()
