"""The job manager: admits jobs (every check before anything is written), runs them on Dask from
background threads, and records how they end.

``max_concurrent_jobs`` threads each take the oldest queued job from the store and drive it with
:func:`service.runner.run_inference`; progress goes to the store (throttled) and to the metrics. A
cancel sets the job's event, which the runner sees between tasks. On start every job left queued
or running by an earlier process (a crash, ``kill -9``) is queued again; the runner resumes it from
its done markers, so finished blocks are not computed again. On a clean shutdown running jobs are
stopped and put back in the queue, not cancelled.
"""

from __future__ import annotations

import contextlib
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

import httpx
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from models.errors import ModelError
from service.errors import (
    IdempotencyKeyReusedError,
    JobCancelledError,
    JobFailedError,
    SchedulerUnavailableError,
    SpecError,
)
from service.events import ChangeFeed, ProgressWriter
from service.metrics import ServiceMetrics
from service.runner import GPU, run_inference
from service.spec import ModelResolver, parse_job_document, resolve_path
from service.store import ErrorInfo, JobRecord, JobStore, NewJob
from service.validation import check_output, validate_against_data, validate_against_model
from workers.job import InferenceJob, ModelInfo, ModelRef
from workers.tasks import inspect_model

log = logging.getLogger(__name__)

# A model check jumps the queue of block tasks on the workers (Dask runs higher priorities first).
INSPECT_PRIORITY = 1000


def request_digest(doc: Mapping[str, Any]) -> str:
    """The identity of a request body for ``Idempotency-Key``: key order and spacing do not count."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class LowerPriority(WorkerPlugin):
    """Run an embedded worker at a lower CPU priority (``nice``) than the service beside it, so
    that the API answers promptly while blocks compute on the same cores. Every thread of the
    worker is reniced (Linux niceness is per thread; threads made later inherit it)."""

    name = "pytc-lower-priority"
    idempotent = True

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def setup(self, worker: Any) -> None:
        tasks = Path("/proc/self/task")
        for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            with contextlib.suppress(OSError):  # a thread that just ended, or no permission
                os.setpriority(os.PRIO_PROCESS, tid, self.niceness)


class DaskConnection:
    """The service's Dask client: an embedded local cluster when no scheduler is named, else a client
    of that scheduler. It connects in the background and keeps retrying, so the service answers
    probes (``/readyz`` says 503) while a scheduler is still starting; a client that lost its
    scheduler for good is replaced the same way."""

    def __init__(
        self,
        scheduler: str | None,
        *,
        local_workers: int = 1,
        threads_per_worker: int = 1,
        worker_niceness: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.local_workers, self.threads_per_worker = local_workers, threads_per_worker
        self.worker_niceness = worker_niceness
        self.retry_s = 2.0
        self.dashboard_link: str | None = None
        self.last_error = "not connected yet"
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._workers: tuple[float, int] = (0.0, 0)

    def start(self) -> None:
        threading.Thread(target=self._connect, name="pytc-dask-connect", daemon=True).start()

    def _connect(self) -> None:
        while not self._closing.is_set():
            try:
                client = self._open()
            except Exception as err:  # any failure to start or reach Dask is retried
                self.last_error = f"{type(err).__name__}: {err}"
                log.warning("Dask %s unavailable (%s); retrying", self.scheduler or "(embedded)", err)
                self._closing.wait(self.retry_s)
                continue
            self._client, self.dashboard_link = client, _dashboard_link(client)
            self._connected.set()
            log.info("Dask connected: %s (dashboard %s)", self.scheduler or "embedded", self.dashboard_link)
            if self._closing.is_set():
                self.close()
            return

    def _open(self) -> Client:
        if self.scheduler:
            return Client(self.scheduler, timeout="10s")
        logging.getLogger("distributed").setLevel(logging.WARNING)
        self._cluster = LocalCluster(
            n_workers=self.local_workers,
            threads_per_worker=self.threads_per_worker,
            processes=True,
            host="127.0.0.1",
            dashboard_address=":0",
            resources=GPU,  # what pytc-worker advertises, so block tasks run here too
            silence_logs=logging.WARNING,
        )
        client = Client(self._cluster)
        if self.worker_niceness:
            client.register_plugin(LowerPriority(self.worker_niceness))
        return client

    @property
    def ready(self) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        if client.status in ("closed", "closing") and not self._closing.is_set():
            self._reconnect()
            return False
        return client.status == "running"

    def _reconnect(self) -> None:
        with self._lock:
            if not self._connected.is_set():
                return
            self._connected.clear()
            self.last_error = "the Dask client lost its scheduler"
        log.warning("the Dask client closed; connecting again")
        self.start()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s) and self.ready

    def client(self) -> Client:
        if not self.ready or self._client is None:
            raise SchedulerUnavailableError(f"Dask is not available: {self.last_error}")
        return self._client

    def workers(self) -> int | None:
        """Workers connected to the scheduler (refreshed at most every 2 s); None while disconnected."""
        if not self.ready or self._client is None:
            return None
        checked_at, count = self._workers
        if time.monotonic() - checked_at > 2.0:
            try:
                count = len(self._client.scheduler_info(n_workers=-1).get("workers", {}))
            except (OSError, TimeoutError) as err:  # the scheduler went away since ``ready``
                self.last_error = f"{type(err).__name__}: {err}"
                return None
            self._workers = (time.monotonic(), count)
        return count

    def close(self) -> None:
        self._closing.set()
        if self._client is not None:
            self._client.close(timeout=10)
        if self._cluster is not None:
            self._cluster.close(timeout=20)


def _dashboard_link(client: Client) -> str | None:
    """The scheduler's dashboard page, if it serves one (``--no-dashboard`` keeps a bare HTTP
    server whose status page is a 404: no link then)."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return None
    link = str(client.dashboard_link)
    try:
        return link if httpx.get(link, timeout=5.0).status_code == 200 else None
    except httpx.HTTPError:
        return None


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
        future = client.submit(
            inspect_model, ref, patch_size, pure=False, resources=GPU, priority=INSPECT_PRIORITY
        )
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


def inference_job(job: object) -> InferenceJob:
    """The service runs inference jobs; a training job is refused (naming ``kind``) until it can."""
    if not isinstance(job, InferenceJob):
        raise SpecError("kind", "the service runs inference jobs; run training jobs with `pytc run`")
    return job


def admit_job(
    doc: Mapping[str, Any], roots: Sequence[Path], resolve_model: ModelResolver, inspector: ModelInspector
) -> InferenceJob:
    """Every check of a submission, in the order of their cost; nothing is written. Raises SpecError
    (422), OutputExistsError (409) or SchedulerUnavailableError (503)."""
    job = inference_job(parse_job_document(doc, roots, resolve_model=resolve_model))
    validate_against_data(job)
    info = inspector.inspect(job.model, job.window.patch_size)
    validate_against_model(job, info)
    check_output(job, info.sha256)
    return job


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
        writer = ProgressWriter(
            record.id, self.store, self.feed, self.metrics, self.config.progress_interval_s
        )
        log.info("job %s: running (attempt %d)", record.id, record.attempts)
        try:
            parsed = parse_job_document(record.spec, self.config.data_roots, resolve_model=self.resolve_model)
            job = inference_job(parsed)
            result = run_inference(job, self.connection.client(), on_progress=writer, cancel=cancel)
        except JobCancelledError as err:
            self._stopped(record.id, str(err))
        except (SpecError, ModelError) as err:
            self._finish(record.id, "failed", {"title": "invalid job", "detail": str(err)})
        except JobFailedError as err:
            self._finish(record.id, "failed", {"title": "job failed", "detail": str(err)})
        except Exception as err:  # a job's failure must not end the manager thread
            self._crashed(record.id, err)
        else:
            self._finish(record.id, "succeeded", result=dataclasses.asdict(result))

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
    admit: Callable[[Mapping[str, Any]], InferenceJob],
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
        output_key=f"{job.output.path}::{job.output.dataset}",
        idempotency_key=idempotency_key,
        request_sha256=digest,
    )
    return store.create_job(new)
