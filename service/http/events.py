"""A job's progress, from the runner to the store and out as server-sent events.

:class:`ProgressWriter` is a run's ``report``: it writes the contract's progress object to the
store (throttled) and feeds the metrics. Every write the service makes to a job bumps that
job's number in a :class:`ChangeFeed` (memory only), so an event stream (:func:`job_events`) reads
the store only when something changed, and every few seconds anyway, which covers writes made by
another process sharing the database. Store reads run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi.sse import ServerSentEvent

from service.http.metrics import ServiceMetrics
from service.progress import Progress, Throughput
from service.store.jobs import JobRecord, JobStore

POLL_S = 0.2
REFRESH_S = 2.0
RETRY_MS = 2000


class ChangeFeed:
    """A change counter per job; cheap to read from the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}

    def bump(self, job_id: str) -> None:
        with self._lock:
            self._versions[job_id] = self._versions.get(job_id, 0) + 1

    def version(self, job_id: str) -> int:
        return self._versions.get(job_id, 0)


async def job_events(
    job_id: str,
    load: Callable[[str], JobRecord],
    render: Callable[[JobRecord], dict[str, Any]],
    feed: ChangeFeed,
    *,
    poll_s: float = POLL_S,
    refresh_s: float = REFRESH_S,
) -> AsyncIterator[ServerSentEvent]:
    """``state`` events (the whole job) when the state changes, ``progress`` events in between; the
    first event is always the job as it is, the last one its final state."""
    seen_version, seen_state, seen_progress = -1, "", None
    number, fetched_at = 0, 0.0
    while True:
        version = feed.version(job_id)
        if version == seen_version and time.monotonic() - fetched_at < refresh_s:
            await anyio.sleep(poll_s)
            continue
        seen_version, fetched_at = version, time.monotonic()
        record = await anyio.to_thread.run_sync(load, job_id)
        if record.state != seen_state:
            number += 1
            yield ServerSentEvent(event="state", id=str(number), data=render(record), retry=RETRY_MS)
        elif record.progress != seen_progress:
            number += 1
            body = {"id": record.id, "state": record.state, "progress": render(record)["progress"]}
            yield ServerSentEvent(event="progress", id=str(number), data=body)
        seen_state, seen_progress = record.state, record.progress
        if record.finished:
            return


class ProgressWriter:
    """``report`` of one run: every report feeds the metrics; the store is written at most every
    ``interval_s``, and always for the last report and a change of phase; readers of the feed are
    told. Rates count this run only (:class:`~service.progress.Throughput`)."""

    def __init__(
        self, job_id: str, store: JobStore, feed: ChangeFeed, metrics: ServiceMetrics, interval_s: float
    ) -> None:
        self.job_id, self.store, self.feed, self.metrics = job_id, store, feed, metrics
        self.interval_s = interval_s
        self.throughput = Throughput()
        self._last: Progress | None = None
        self._written_at = -float("inf")

    def __call__(self, report: Progress) -> None:
        report = self.throughput(report)
        previous, self._last = self._last, report
        if previous is not None:  # work done by an earlier run is neither throughput nor metrics
            self.metrics.add_progress(previous, report)
        now = time.monotonic()
        due = now - self._written_at >= self.interval_s
        if due or report.done >= report.total or (previous is not None and previous.phase != report.phase):
            self._written_at = now
            self.store.update_progress(self.job_id, report.to_json())
            self.feed.bump(self.job_id)
