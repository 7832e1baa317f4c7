"""The block-duration histogram reads block tasks from the names their runs give them."""

from __future__ import annotations

from service.http.metrics import ServiceMetrics
from workers.inference.readahead import task_key


def record(key: str, seconds: float, stop: float = 100.0) -> dict[str, object]:
    return {"key": key, "startstops": [{"action": "compute", "start": stop - seconds, "stop": stop}]}


def test_block_tasks_of_every_run_are_timed_by_their_pass_and_other_tasks_are_not() -> None:
    metrics = ServiceMetrics()
    records = [
        record(task_key("0123abcd", 1, (0, 1, 2), "9f8e7d6c"), 2.0),
        record(task_key("0123abcd", 2, (0, 1, 2), "5a4b3c2d"), 3.0),
        record(task_key("0123abcd", 1, (3, 0, 0)), 4.0),  # a key without an attempt (older versions)
        record("inspect_model-8c1d", 5.0),
    ]
    seen: set[str] = set()
    assert metrics.observe_task_stream(records, seen) == 100.0
    assert {phase: hist.count for phase, hist in metrics.block_seconds.items()} == {"1": 2, "2": 1}
    assert metrics.block_seconds["1"].total == 6.0 and len(seen) == 3
