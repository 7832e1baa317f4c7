"""The loss curve the service keeps for the page: bounded, spread over the whole run."""

from __future__ import annotations

import itertools
import math

from service.http.loss_curve import HISTORY_KEY, LossCurve
from service.progress import Progress


def report(done: int, loss: float | None) -> Progress:
    details = {} if loss is None else {"loss": loss, "lr": 0.1}
    return Progress(done, 10_000, "iterations", details=details)


def test_it_keeps_every_loss_until_full_then_thins_evenly() -> None:
    curve = LossCurve(max_points=8)
    out = curve(report(1, 0.9))
    assert out.details[HISTORY_KEY] == [[1, 0.9]] and out.details["lr"] == 0.1
    for done in range(2, 10_001):
        out = curve(report(done, 1.0 / done))
    points = out.details[HISTORY_KEY]
    assert 4 <= len(points) <= 8
    assert points[0] == [1, 0.9] and points[-1][0] > 8_000  # the whole run, not its start only
    steps = [b[0] - a[0] for a, b in itertools.pairwise(points)]
    assert max(steps) <= 2 * min(steps)


def test_reports_without_a_finite_loss_are_passed_through() -> None:
    curve = LossCurve()
    assert HISTORY_KEY not in curve(report(0, None)).details
    assert HISTORY_KEY not in curve(report(1, math.nan)).details
    curve(report(2, 0.5))
    assert curve(report(3, None)).details[HISTORY_KEY] == [[2, 0.5]]
    assert curve(report(3, 0.4)).to_json()[HISTORY_KEY] == [[2, 0.5], [3, 0.4]]
