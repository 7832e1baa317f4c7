"""A job's progress, from the runner to the store and out as server-sent events.

:class:`ProgressWriter` is a run's ``report``: it writes the contract's progress object to the
store (throttled), feeds the metrics, and logs the progress line of a running job at least every
:data:`~service.progress.LOG_HEARTBEAT_S` (the job manager's ticks cover a kind that goes quiet).
Every write the service makes to a job bumps that job's number in a :class:`ChangeFeed` (memory
only), so an event stream (:func:`job_events`) reads the store only when something changed, and
every few seconds anyway, which covers writes made by another process sharing the database.
Store reads run in a worker thread, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import anyio
from fastapi.sse import ServerSentEvent

from service.http.loss_curve import LossCurve
from service.http.metrics import ServiceMetrics
from service.progress import LOG_HEARTBEAT_S, Progress, Throughput, format_progress
from service.store.jobs import JobRecord, JobStore

POLL_S = 0.2
REFRESH_S = 2.0
RETRY_MS = 2000

log = logging.getLogger(__name__)


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
    told. Rates count this run only (:class:`~service.progress.Throughput`).

    The log gets ``job <id>: <progress line>`` for the first report, the first complete one, and in
    between at most, and (with :meth:`tick` called every second or so) at least, every
    ``log_every_s``; a tick after the kind went quiet logs its last report with the time gone on
    since."""

    def __init__(
        self,
        job_id: str,
        store: JobStore,
        feed: ChangeFeed,
        metrics: ServiceMetrics,
        interval_s: float,
        *,
        log_every_s: float = LOG_HEARTBEAT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id, self.store, self.feed, self.metrics = job_id, store, feed, metrics
        self.interval_s, self.log_every_s, self.clock = interval_s, log_every_s, clock
        self.throughput = Throughput()
        self.curve = LossCurve()  # a kind that reports a loss gets its curve (the web page draws it)
        self._lock = threading.Lock()  # reports come from the job's thread, ticks from the manager's
        self._last: Progress | None = None
        self._last_at = 0.0
        self._written_at = -float("inf")
        self._logged_at = -float("inf")

    def __call__(self, report: Progress) -> None:
        report = self.curve(self.throughput(report))
        now = self.clock()
        with self._lock:
            previous, self._last, self._last_at = self._last, report, now
            finished = report.done >= report.total and (previous is None or previous.done < previous.total)
            self._log_if_due(report, now, force=finished)
        if previous is not None:  # work done by an earlier run is neither throughput nor metrics
            self.metrics.add_progress(previous, report)
        due = now - self._written_at >= self.interval_s
        if due or report.done >= report.total or (previous is not None and previous.phase != report.phase):
            self._written_at = now
            self.store.update_progress(self.job_id, report.to_json())
            self.feed.bump(self.job_id)

    def tick(self) -> None:
        """Log the last report again if the log has not heard of the job for ``log_every_s``."""
        now = self.clock()
        with self._lock:
            if self._last is not None:
                gone = now - self._last_at
                self._log_if_due(replace(self._last, elapsed_s=self._last.elapsed_s + gone), now)

    def _log_if_due(self, report: Progress, now: float, *, force: bool = False) -> None:
        if force or now - self._logged_at >= self.log_every_s:
            self._logged_at = now
            log.info("job %s: %s", self.job_id, format_progress(report))
