"""The job manager: runs queued jobs on Dask from background threads, and records how they end.

``max_concurrent_jobs`` threads each take the oldest queued job from the store, find its kind
(:mod:`service.kinds`) and run it; progress goes to the store (throttled), to the metrics and to the
log (a line per running job at least every 30 s, :class:`~service.http.events.ProgressWriter`). A
cancel sets the job's event, which the kind's run sees between tasks. On start every job left queued
or running by an earlier process (a crash, ``kill -9``) is queued again; it resumes from what it
finished (an inference job from its done blocks, a training job from its newest checkpoint). On a
clean shutdown running jobs are stopped and queued again, not cancelled.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.errors import ModelError
from service.documents.sections import resolved_root
from service.errors import JobCancelledError, JobDatabaseError, JobFailedError, SchedulerUnavailableError
from service.http.events import ChangeFeed, ProgressWriter
from service.http.metrics import ServiceMetrics
from service.jobs.connection import DaskConnection
from service.kinds import job_kind
from service.kinds.base import ParseEnv, RunEnv, model_resolver
from service.progress import LOG_HEARTBEAT_S
from service.store.jobs import ErrorInfo, JobRecord, JobStore, refuse_active
from service.store.models import ModelRegistry
from workers.errors import SpecError, WorkerError
from workers.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)

TICK_S = 1.0  # running jobs' progress writers are ticked this often, for their log lines
DATABASE_RETRY_S = 5.0  # a manager thread whose job database failed tries again after this


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    data_roots: tuple[Path | str, ...]
    max_concurrent_jobs: int = 2
    progress_interval_s: float = 0.5
    limits: Limits = DEFAULT_LIMITS


class JobManager:
    """Background threads that run queued jobs; also the only writer of job ends."""

    def __init__(
        self,
        store: JobStore,
        models: ModelRegistry,
        connection: DaskConnection,
        config: ManagerConfig,
        feed: ChangeFeed,
        metrics: ServiceMetrics,
    ) -> None:
        self.store, self.models, self.connection, self.config = store, models, connection, config
        self.feed, self.metrics = feed, metrics
        self.parse_env = ParseEnv(
            tuple(resolved_root(r) for r in config.data_roots),
            model_resolver(models, config.data_roots),
            config.limits,
        )
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._writers: dict[str, ProgressWriter] = {}  # of the running jobs

    def start(self) -> None:
        requeued = self.store.recover()
        if requeued:
            log.info("picked up %d job(s) left queued or running: %s", len(requeued), ", ".join(requeued))
        for i in range(self.config.max_concurrent_jobs):
            thread = threading.Thread(target=self._loop, name=f"pytc-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._watch_block_durations, name="pytc-task-stream", daemon=True).start()
        threading.Thread(target=self._tick_writers, name="pytc-progress-log", daemon=True).start()

    def stop(self, timeout_s: float = 90.0) -> None:
        """Stop running jobs at their next task boundary and queue them again for the next start."""
        self._stopping.set()
        with self._lock:
            for event in self._cancels.values():
                event.set()
        self.wake()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def cancel(self, job_id: str) -> JobRecord:
        """Queued: cancelled at once. Running: the runner stops at its next task boundary."""
        record = self.store.request_cancel(job_id)
        if record.state == "running":
            self._cancel_event(job_id).set()
        self.feed.bump(job_id)
        if record.finished:
            self.metrics.job_finished(record.state)
        return record

    def delete(self, job_id: str) -> JobRecord:
        """Forget a finished job (409 while it is queued or running). What it wrote stays; what only a
        resume of it would have used (its kind's ``discard``: an inference job's scratch) is dropped
        when it failed or was cancelled, unless a newer job wrote the same target since."""
        record = self.store.get_job(job_id)
        refuse_active(record)
        if record.state in ("failed", "cancelled") and not self._newer_job_writes(record):
            self._discard_for(record)
        deleted = self.store.delete_job(job_id)
        self.feed.bump(job_id)
        log.info("job %s: deleted", job_id)
        return deleted

    def _newer_job_writes(self, record: JobRecord) -> bool:
        """Whether a job submitted after ``record`` writes its target (running, or ended with sums
        to resume from): what lies there is that job's now. Any active one is newer (one at a time)."""
        before = None
        while record.output_key is not None and (page := self.store.list_jobs(limit=500, before=before)):
            for job in page:
                if job.seq <= record.seq:
                    return False
                if job.output_key == record.output_key:
                    return True
            before = page[-1].seq
        return False

    def _discard_for(self, record: JobRecord) -> None:
        try:
            kind = job_kind(record.kind)
            job = kind.parse(record.spec, self.parse_env)
            if callable(discard := getattr(kind, "discard", None)):
                # A cancelled job's last block may still be writing on a worker: waited for.
                discard(job, RunEnv(self.connection.client()) if self.connection.ready else None)
        except (SpecError, ModelError, OSError) as err:  # a kind or model gone since: nothing to drop
            log.warning("job %s: could not drop what it left: %s", record.id, err)

    def _cancel_event(self, job_id: str) -> threading.Event:
        with self._lock:
            return self._cancels.setdefault(job_id, threading.Event())

    def _watch_block_durations(self, every_s: float = 2.0) -> None:
        """Block durations for the metrics, from the scheduler's task stream (the runner reports
        counts, not timings)."""
        since: float | None = None
        counted: set[str] = set()
        while not self._stopping.wait(every_s):
            if not self.connection.ready:
                continue
            try:
                records = self.connection.client().get_task_stream(start=since or time.time())
            except (OSError, SchedulerUnavailableError) as err:
                log.debug("task stream unavailable: %s", err)
                continue
            if since is not None and records:
                counted = {k for k in counted if k in {str(r["key"]) for r in records}}
            since = self.metrics.observe_task_stream(records, counted) or since or time.time()

    def _tick_writers(self) -> None:
        """Running jobs' progress reaches the log even while their kind reports nothing."""
        while not self._stopping.wait(TICK_S):
            with self._lock:
                writers = list(self._writers.values())
            for writer in writers:
                writer.tick()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._next()
            except JobDatabaseError as err:  # /readyz says so; the thread lives on for when it is mended
                log.error("job manager: %s; trying again in %.0f s", err, DATABASE_RETRY_S)
                self._stopping.wait(DATABASE_RETRY_S)

    def _next(self) -> None:
        if not self.connection.wait_ready(1.0):
            return
        record = self.store.claim_next()
        if record is None:
            with self._wake:
                self._wake.wait(0.5)
            return
        try:
            self._run(record)
        finally:
            with self._lock:
                self._cancels.pop(record.id, None)
                self._writers.pop(record.id, None)

    def _run(self, record: JobRecord) -> None:
        self.feed.bump(record.id)
        cancel = self._cancel_event(record.id)
        if record.cancel_requested or self._stopping.is_set():
            cancel.set()
        log.info("job %s: running %s (attempt %d)", record.id, record.kind, record.attempts)
        discard: Callable[[], None] | None = None
        try:
            kind = job_kind(record.kind)
            job = kind.parse(record.spec, self.parse_env)
            writer = ProgressWriter(
                record.id,
                self.store,
                self.feed,
                self.metrics,
                self.config.progress_interval_s,
                log_every_s=LOG_HEARTBEAT_S - TICK_S,  # ticked every TICK_S: a line every 30 s at most apart
            )
            with self._lock:
                self._writers[record.id] = writer
            env = RunEnv(
                self.connection.client(),
                report=writer,
                cancel=cancel,
                models=self.models,
                notice=lambda text: log.info("job %s: %s", record.id, text),
                limits=self.parse_env.limits,
            )
            if callable(getattr(kind, "discard", None)):
                discard = functools.partial(kind.discard, job, env)  # type: ignore[attr-defined]
            result = kind.run(job, env)
        except JobCancelledError as err:
            self._stopped(record.id, str(err))
        except (SpecError, ModelError) as err:  # refused as written (the output is another's...): keep all
            self._finish(record.id, "failed", {"title": "invalid job", "detail": str(err)})
        except (JobFailedError, WorkerError) as err:
            self._failed(record.id, {"title": "job failed", "detail": str(err)}, discard)
        except Exception as err:  # a job's failure must not end the manager thread
            self._crashed(record.id, err, discard)
        else:
            self._finish(record.id, "succeeded", result=result)

    def _stopped(self, job_id: str, detail: str) -> None:
        if self._stopping.is_set() and not self.store.get_job(job_id).cancel_requested:
            log.info("job %s: stopped by the shutdown; queued again", job_id)
            self.store.requeue_job(job_id)
            self.feed.bump(job_id)
            return
        self._finish(job_id, "cancelled", {"title": "cancelled", "detail": detail})

    def _crashed(self, job_id: str, err: Exception, discard: Callable[[], None] | None = None) -> None:
        if not self.connection.ready or self._stopping.is_set():
            log.warning("job %s: interrupted (%r) while Dask is unavailable; queued again", job_id, err)
            self.store.requeue_job(job_id)
            self.feed.bump(job_id)
            return
        log.error("job %s failed", job_id, exc_info=err)
        self._failed(job_id, {"title": "job failed", "detail": f"{type(err).__name__}: {err}"}, discard)

    def _failed(self, job_id: str, error: ErrorInfo, discard: Callable[[], None] | None) -> None:
        """The job failed for good (a rerun is a new submission): its kind drops what only a resume
        would use, while the job still holds its target, then the failure is recorded."""
        if discard is not None:
            try:
                discard()
            except Exception:  # whatever it was, the failure stands; what is left is the next run's to clean
                log.warning("job %s: could not drop what it left", job_id, exc_info=True)
        self._finish(job_id, "failed", error)

    def _finish(
        self, job_id: str, state: Any, error: ErrorInfo | None = None, result: dict[str, Any] | None = None
    ) -> None:
        self.store.finish_job(job_id, state, error, result)
        self.metrics.job_finished(state)
        self.feed.bump(job_id)
        log.info("job %s: %s%s", job_id, state, f" ({error['detail']})" if error else "")
