"""A training job's loss curve, kept by the service while it runs the job (the web page draws it).

A kind reports its current ``loss`` in its progress details (the training kind does); the service's
progress writer passes every report through a :class:`LossCurve`, which adds ``loss_history``:
``[[done, loss], ...]``, at most :data:`MAX_POINTS` points over the whole run (when full, every other
point is dropped and points are then kept half as often), so a stored progress record stays small
whatever the number of iterations. The curve covers what this service process saw: a job picked up
after a restart starts a new one.
"""

from __future__ import annotations

import math
from dataclasses import replace

from service.progress import Progress

MAX_POINTS = 256
HISTORY_KEY = "loss_history"


class LossCurve:
    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max(2, max_points)
        self.points: list[list[float]] = []
        self.every = 1  # keep a point when ``done`` moved at least this far since the last kept one

    def __call__(self, report: Progress) -> Progress:
        loss = report.details.get("loss")
        if not isinstance(loss, int | float) or isinstance(loss, bool) or not math.isfinite(loss):
            return report if not self.points else self._with(report)
        if not self.points or report.done - self.points[-1][0] >= self.every:
            self.points.append([report.done, float(loss)])
            if len(self.points) > self.max_points:
                self.points = self.points[::2]
                self.every *= 2
        return self._with(report)

    def _with(self, report: Progress) -> Progress:
        return replace(report, details={**report.details, HISTORY_KEY: [list(p) for p in self.points]})
