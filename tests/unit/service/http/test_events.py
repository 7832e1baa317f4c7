"""A run's ``report`` in the service: what it stores, and its line in the log at least every 30 s
while the job runs, even when its kind has gone quiet."""

from __future__ import annotations

import logging

import pytest

from service.http.events import ChangeFeed, ProgressWriter
from service.http.metrics import ServiceMetrics
from service.progress import Progress
from service.store.jobs import NewJob
from service.store.memory import MemoryJobStore


def test_a_running_job_logs_its_progress_at_least_every_30_s_and_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, now = MemoryJobStore(), [0.0]
    store.create_job(NewJob("j1", "inference", {}))
    writer = ProgressWriter(
        "j1", store, ChangeFeed(), ServiceMetrics(), 0.5, log_every_s=30.0, clock=lambda: now[0]
    )
    caplog.set_level(logging.INFO, logger="service.http.events")
    logged: list[float] = []
    for second in range(121):
        now[0] = float(second)
        before = len(caplog.records)
        if second <= 40:  # the kind reports every second for 40 s, then goes quiet (a long batch)
            writer(
                Progress(second, 200, "steps", float(second), details={"parts": {"windows": [second, 180]}})
            )
        writer.tick()  # the job manager's thread, every second
        if len(caplog.records) > before:
            logged.append(now[0])
    assert logged == [0.0, 30.0, 60.0, 90.0, 120.0]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("job j1: steps 0/200 (0.0%)")
    assert "steps 30/200" in messages[1] and "windows 30/180" in messages[1]
    assert "steps 40/200" in messages[-1]  # the last report, with the time gone on since
    assert "ETA" in messages[-1]
    stored = store.get_job("j1").progress
    assert stored["done"] == 40 and stored["parts"] == {"windows": [40, 180]}
    for second in (125, 126):  # the job ends: its last figures are logged at once, and once
        now[0] = float(second)
        writer(Progress(200, 200, "steps", float(second)))
    assert len(caplog.records) == len(messages) + 1
    assert caplog.records[-1].getMessage().startswith("job j1: steps 200/200 (100.0%)")
    assert store.get_job("j1").progress["done"] == 200
