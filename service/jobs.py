"""The job manager: admits jobs (every check before anything is written), runs them on Dask from
background threads, and records how they end.

``max_concurrent_jobs`` threads each take the oldest queued job from the store and drive it with
:func:`service.runner.run_inference` (training: :mod:`service.training_jobs`); progress goes to the
store (throttled) and to the metrics. A cancel sets the job's event, which the runner sees between
tasks. On start every job left queued or running by an earlier process (a crash, ``kill -9``) is
queued again; it resumes from its done markers (training: its newest checkpoint), so finished work
is not done again. On a clean shutdown running jobs are stopped and queued again, not cancelled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.errors import ModelError
from models.ref import ModelInfo, ModelRef
from service.dask_connection import DaskConnection
from service.errors import (
    IdempotencyKeyReusedError,
    JobCancelledError,
    JobFailedError,
    SchedulerUnavailableError,
)
from service.events import ChangeFeed, ProgressWriter
from service.metrics import ServiceMetrics
from service.runner import run_inference
from service.spec import ModelResolver, parse_job_document, resolve_path
from service.store import ErrorInfo, JobRecord, JobStore, NewJob
from service.training_jobs import admit_training, run_training_job, training_output_key
from workers.errors import SpecError
from workers.inference.checks import check_output, validate_against_data, validate_against_model
from workers.inference.job import InferenceJob
from workers.inference.tasks import inspect_model
from workers.training.job import TrainingJob

log = logging.getLogger(__name__)

# A model check jumps the queue of block tasks on the workers (Dask runs higher priorities first).
INSPECT_PRIORITY = 1000


def request_digest(doc: Mapping[str, Any]) -> str:
    """The identity of a request body for ``Idempotency-Key``: key order and spacing do not count."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def registry_resolver(store: JobStore, roots: Sequence[Path]) -> ModelResolver:
    """``model.name`` -> the registered reference, whose files must lie inside the data roots too."""
    resolved_roots = [Path(root).resolve() for root in roots]

    def resolve(name: str) -> ModelRef:
        ref = store.get_model(name).ref  # ModelNotRegisteredError is a LookupError: parse names the field
        for path in (ref.path, ref.checkpoint):
            if path is not None:
                resolve_path(path, resolved_roots, "model.name")
        return ref

    return resolve


class ModelInspector:
    """Loads a model on a worker (the service never imports torch) to learn its channels and hash.

    Answers are cached by the reference, the patch size and the model files' size and mtime, so
    submitting many jobs with one model asks the cluster once.
    """

    def __init__(self, connection: DaskConnection, timeout_s: float, capacity: int = 256) -> None:
        self.connection = connection
        self.timeout_s = timeout_s
        self._cache: OrderedDict[tuple[Any, ...], ModelInfo] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity

    def inspect(self, ref: ModelRef, patch_size: tuple[int, int, int]) -> ModelInfo:
        key = (ref, patch_size, _files_signature(ref))
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        info = self._ask_a_worker(ref, patch_size)
        with self._lock:
            self._cache[key] = info
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return info

    def _ask_a_worker(self, ref: ModelRef, patch_size: tuple[int, int, int]) -> ModelInfo:
        for path in (ref.path, ref.checkpoint):
            if path is not None and not os.path.isfile(path):
                raise SpecError(_model_field(ref), f"{path} does not exist or is not a file")
        client = self.connection.client()
        # No GPU resource: the model is loaded on the worker's CPU, and a worker whose GPU a
        # training task holds (seceded from the thread pool) still answers at once.
        future = client.submit(inspect_model, ref, patch_size, pure=False, priority=INSPECT_PRIORITY)
        try:
            info: ModelInfo = future.result(timeout=self.timeout_s)
        except TimeoutError:
            future.cancel()
            raise SchedulerUnavailableError(
                f"no Dask worker loaded the model within {self.timeout_s:.0f} s; are workers connected?"
            ) from None
        except (ModelError, OSError) as err:  # a model file the worker cannot load or read
            raise SpecError(_model_field(ref), str(err)) from err
        return info


def _model_field(ref: ModelRef) -> str:
    if ref.name is not None:
        return "model.name"
    return {"torchscript": "model.torchscript", "exported": "model.exported"}.get(ref.kind, "model")


def _files_signature(ref: ModelRef) -> tuple[tuple[int, int] | None, ...]:
    def stat(path: str | None) -> tuple[int, int] | None:
        try:
            info = os.stat(path) if path else None
        except OSError:
            return None
        return None if info is None else (info.st_size, info.st_mtime_ns)

    return (stat(ref.path), stat(ref.checkpoint))


def admit_job(
    doc: Mapping[str, Any], roots: Sequence[Path], resolve_model: ModelResolver, inspector: ModelInspector
) -> InferenceJob | TrainingJob:
    """Every check of a submission, in the order of their cost; nothing is written. Raises SpecError
    (422), OutputExistsError (409) or SchedulerUnavailableError (503)."""
    job = parse_job_document(doc, roots, resolve_model=resolve_model)
    if isinstance(job, TrainingJob):
        return admit_training(job, inspector.connection.client, inspector.timeout_s)
    validate_against_data(job)
    info = inspector.inspect(job.model, job.window.patch_size)
    validate_against_model(job, info)
    check_output(job, info.sha256)
    return job


def output_key(job: InferenceJob | TrainingJob) -> str:
    """What the job writes: no two queued or running jobs share it (409)."""
    if isinstance(job, TrainingJob):
        return training_output_key(job)
    return f"{job.output.path}::{job.output.dataset}"


@dataclasses.dataclass(frozen=True)
class ManagerConfig:
    data_roots: tuple[Path, ...]
    max_concurrent_jobs: int = 2
    progress_interval_s: float = 0.5


class JobManager:
    """Background threads that run queued jobs; also the only writer of job ends."""

    def __init__(
        self,
        store: JobStore,
        connection: DaskConnection,
        config: ManagerConfig,
        feed: ChangeFeed,
        metrics: ServiceMetrics,
    ) -> None:
        self.store, self.connection, self.config = store, connection, config
        self.feed, self.metrics = feed, metrics
        self.resolve_model = registry_resolver(store, config.data_roots)
        self._wake = threading.Condition()
        self._stopping = threading.Event()
        self._cancels: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        requeued = self.store.recover()
        if requeued:
            log.info("picked up %d job(s) left queued or running: %s", len(requeued), ", ".join(requeued))
        for i in range(self.config.max_concurrent_jobs):
            thread = threading.Thread(target=self._loop, name=f"pytc-job-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        threading.Thread(target=self._watch_block_durations, name="pytc-task-stream", daemon=True).start()

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

    def _loop(self) -> None:
        while not self._stopping.is_set():
            if not self.connection.wait_ready(1.0):
                continue
            record = self.store.claim_next()
            if record is None:
                with self._wake:
                    self._wake.wait(0.5)
                continue
            try:
                self._run(record)
            finally:
                with self._lock:
                    self._cancels.pop(record.id, None)

    def _run(self, record: JobRecord) -> None:
        self.feed.bump(record.id)
        cancel = self._cancel_event(record.id)
        if record.cancel_requested or self._stopping.is_set():
            cancel.set()
        log.info("job %s: running (attempt %d)", record.id, record.attempts)
        try:
            job = parse_job_document(record.spec, self.config.data_roots, resolve_model=self.resolve_model)
            result = self._dispatch(record.id, job, cancel)
        except JobCancelledError as err:
            self._stopped(record.id, str(err))
        except (SpecError, ModelError) as err:
            self._finish(record.id, "failed", {"title": "invalid job", "detail": str(err)})
        except JobFailedError as err:
            self._finish(record.id, "failed", {"title": "job failed", "detail": str(err)})
        except Exception as err:  # a job's failure must not end the manager thread
            self._crashed(record.id, err)
        else:
            self._finish(record.id, "succeeded", result=result)

    def _dispatch(
        self, job_id: str, job: InferenceJob | TrainingJob, cancel: threading.Event
    ) -> dict[str, Any]:
        """Run the job to its end; its ``result``."""
        client, interval_s = self.connection.client(), self.config.progress_interval_s
        if isinstance(job, TrainingJob):
            return run_training_job(job_id, job, client, self.store, self.feed, cancel, interval_s)
        writer = ProgressWriter(job_id, self.store, self.feed, self.metrics, interval_s)
        return dataclasses.asdict(run_inference(job, client, on_progress=writer, cancel=cancel))

    def _stopped(self, job_id: str, detail: str) -> None:
        if self._stopping.is_set() and not self.store.get_job(job_id).cancel_requested:
            log.info("job %s: stopped by the shutdown; queued again", job_id)
            self.store.requeue_job(job_id)
            self.feed.bump(job_id)
            return
        self._finish(job_id, "cancelled", {"title": "cancelled", "detail": detail})

    def _crashed(self, job_id: str, err: Exception) -> None:
        if not self.connection.ready or self._stopping.is_set():
            log.warning("job %s: interrupted (%r) while Dask is unavailable; queued again", job_id, err)
            self.store.requeue_job(job_id)
            self.feed.bump(job_id)
            return
        log.error("job %s failed", job_id, exc_info=err)
        self._finish(job_id, "failed", {"title": "job failed", "detail": f"{type(err).__name__}: {err}"})

    def _finish(
        self, job_id: str, state: Any, error: ErrorInfo | None = None, result: dict[str, Any] | None = None
    ) -> None:
        self.store.finish_job(job_id, state, error, result)
        self.metrics.job_finished(state)
        self.feed.bump(job_id)
        log.info("job %s: %s%s", job_id, state, f" ({error['detail']})" if error else "")


def new_job_id() -> str:
    return uuid.uuid4().hex


def check_replay(store: JobStore, key: str | None, digest: str) -> JobRecord | None:
    """The job an earlier request with this ``Idempotency-Key`` made, if the body is the same."""
    if key is None or (existing := store.find_by_idempotency_key(key)) is None:
        return None
    if existing.request_sha256 != digest:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {key!r} was used for job {existing.id} with another body"
        )
    return existing


def submit_job(
    doc: Mapping[str, Any],
    idempotency_key: str | None,
    *,
    store: JobStore,
    admit: Callable[[Mapping[str, Any]], InferenceJob | TrainingJob],
) -> tuple[JobRecord, bool]:
    """Validate and record a job; ``created`` is False for an idempotent replay."""
    digest = request_digest(doc)
    if (replay := check_replay(store, idempotency_key, digest)) is not None:
        return replay, False
    job = admit(doc)
    new = NewJob(
        new_job_id(),
        str(doc.get("kind", "inference")),
        dict(doc),
        output_key=output_key(job),
        idempotency_key=idempotency_key,
        request_sha256=digest,
    )
    return store.create_job(new)
