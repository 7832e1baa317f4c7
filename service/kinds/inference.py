"""``kind: inference``: a model over a volume, written as a (c, z, y, x) array.

The engine owns the run (:class:`workers.inference.run.InferenceRun`: output creation, the order of
the two passes, lost partial sums, the final check and the completion mark). This kind only checks
the job, and pumps the run's tasks through Dask: a few in flight per worker, pass 2 ahead of pass 1,
each task reported back to the run when it ends. Tasks travel in batches (issue 17): once half the
in-flight window has ended, the results of those that ended are fetched in one call and the free
room is filled with one graph a pass, so that a tiny task does not pay a submit and a fetch of its
own through the scheduler.

Progress is counted in steps as they happen (:mod:`workers.inference.steps`: a window computed, a
pass-2 chunk finished). Running block tasks send their counts as Dask worker events on the job's
topic (:func:`workers.inference.tasks.progress_topic`); the driver folds them into the run, which
counts each (block, pass) once however often Dask runs it, and reports at most every
:data:`REPORT_MIN_S`, at once when a task ends, and every :data:`HEARTBEAT_S` even when nothing
moved, so that a log shows the job alive.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future

from models.errors import ModelError
from models.ref import ModelInfo, ModelRef
from models.torch_files import torch_file_problem
from service.documents.inference import InferenceDocument, parse_inference
from service.errors import JobCancelledError, JobFailedError, SpecError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target, WorkerCall
from service.kinds.stages import drive_pyramid
from service.kinds.waiting import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S, wait_for_tasks, wait_some
from service.progress import Progress, format_duration
from volumes.blocks import Index
from volumes.lru import LRU
from volumes.volume import Volume
from workers.errors import BlockCancelledError, IncompleteRunError, Refusal
from workers.inference.checks import (
    OutputState,
    check_input,
    check_model,
    check_precision,
    check_task,
    model_field,
    open_input,
    output_state,
    roi_shape,
)
from workers.inference.job import InferenceJob
from workers.inference.readahead import task_key, task_prefix
from workers.inference.run import InferenceRun
from workers.inference.rundir import RunDir, drop_dataset_scratch
from workers.inference.tasks import BlockTask, TaskRef, inspect_model, job_of, progress_topic, run_task
from workers.resources import ONE_ACCELERATOR

log = logging.getLogger(__name__)

PASS2_PRIORITY = 10  # pass-2 tasks run before queued pass-1 tasks: they free scratch
BATCH_LOW = 8  # tasks in flight below which the driver collects and submits (see _Driver)
ENDED = ("finished", "error", "cancelled")  # a future's states with nothing more to come
REPORT_MIN_S = 0.2  # progress that moved is reported at most this often (a task's end at once)


@dataclass(frozen=True)
class Checked:
    """What admission learnt, for a run that starts right after it in the same process."""

    info: ModelInfo
    output: OutputState
    source: Volume


class InferenceKind:
    name = "inference"
    document = InferenceDocument

    def __init__(self) -> None:
        # Model checks by (reference, patch size, device, the files' size and mtime): submitting
        # many jobs with one model asks a worker once.
        self._models: LRU[ModelInfo] = LRU(256)

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> InferenceJob:
        return parse_inference(doc, env.roots, resolve_model=env.resolve_model, limits=env.limits)

    def target(self, job: InferenceJob) -> Target:
        return Target(job.output.path, job.output.dataset)

    def admit(self, job: InferenceJob, env: AdmitEnv) -> Checked:
        """The input holds the ROI and its claimed shape is within bounds, the model loads on a
        worker and fits the input and the heads, a block task with the model's channels fits a
        worker's memory, and the output is absent or this job's own (else OutputExistsError, unless
        overwrite). The bounds are arithmetic on sizes: nothing lists the job's windows or blocks."""
        source = open_input(job)
        check_input(job, source, env.limits)
        info = self.model_info(job, env.on_worker)
        check_model(job, info, source)
        check_task(job, info, roi_shape(job, source), env.limits)
        check_precision(job, info)
        return Checked(info, output_state(job, info.sha256, roi_shape(job, source)), source)

    def model_info(self, job: InferenceJob, on_worker: WorkerCall) -> ModelInfo:
        """The model as it loads where the job will run, and what the job's device there runs
        natively. The files are looked at here first (they exist, and may be files torch wrote);
        what the worker finds wrong comes back as a :class:`Refusal` (so no log holds a traceback
        for it) and is raised here."""
        ref, patch, device = job.model, job.window.patch_size, job.compute.device
        for path in (ref.path, ref.checkpoint):
            if path is not None and not os.path.isfile(path):
                raise SpecError(model_field(ref), f"{path} does not exist or is not a file")
            if path is not None and (problem := torch_file_problem(path)) is not None:
                raise SpecError(model_field(ref), f"{path} {problem}")  # no worker needed to see it
        key = (ref, patch, device, _files_signature(ref))
        info = self._models.get(key)
        if info is None:
            try:
                answer = on_worker(inspect_model, ref, patch, device)
            except ModelError as err:  # a worker of an older version raises it instead
                raise SpecError(model_field(ref, err), str(err)) from err
            # An OSError here is the connection's (no worker answered: SchedulerUnavailableError,
            # a 503), never the model's: the worker returns those as a Refusal.
            if isinstance(answer, Refusal):
                raise answer.error()
            info = answer
            self._models.put(key, info)
        return info

    def run(self, job: InferenceJob, env: RunEnv, checked: Checked | None = None) -> dict[str, Any]:
        if checked is None:
            info = self.model_info(job, lambda fn, *args: _on_a_worker(env.client, env.cancel, fn, *args))
            run = InferenceRun.start(job, info, limits=env.limits)
        else:
            run = InferenceRun.start(job, checked.info, source=checked.source, checked=checked.output)
        if run.summary.resumed:
            env.notice(f"resuming the existing output {job.output.path} ({job.output.dataset})")
        try:
            _Driver(run, env).drive()
        finally:
            run.close()  # what it recorded is synced, whatever ended the drive
        try:
            drive_pyramid(run.pyramid_stage(), env, lambda: env.report(run_progress(run)))
            return run.complete().to_json()
        except IncompleteRunError as err:
            raise JobFailedError(str(err)) from err

    def discard(self, job: InferenceJob, env: RunEnv | None) -> None:
        """The job failed for good: drop its partial sums (compressed float32, up to the size of the
        output). Its done markers stay, so a rerun recomputes only the pass 1 whose sums it needs.
        Blocks of the failed run still on a worker (Dask does not stop a running task, even a
        cancelled one) are made to stop at their next batch and waited for first, so that none
        writes sums after the drop; the next run clears the flag. ``env`` None: no Dask to ask."""
        folders = [
            f for f in RunDir.all_for_dataset(job.output.path, job.output.dataset).glob("*") if f.is_dir()
        ]
        for folder in folders:
            RunDir(folder).request_cancel()
        if env is not None:
            wait_for_tasks(env.client, tuple(f"pytc-{folder.name}-" for folder in folders), CANCEL_WAIT_S)
        drop_dataset_scratch(job.output.path, job.output.dataset)

    def summary(self, result: Mapping[str, Any]) -> Summary:
        levels = int(result.get("levels") or 1)
        level0 = result.get("level0") or result.get("dataset")
        line = (
            f"succeeded: {result.get('output_path')} (image {result.get('dataset')!r}, "
            f"{levels} level{'s' if levels > 1 else ''}, full resolution at {level0!r}), "
            f"{result.get('blocks_total')} blocks ({result.get('blocks_skipped')} already done) "
            f"in {format_duration(float(result.get('seconds') or 0.0))}"
        )
        output = result.get("output_path")
        return Summary((line,), str(output) if output is not None else None)


INFERENCE = InferenceKind()


class _Driver:
    """Keeps a few of the run's tasks in flight on Dask until none is left, and reports progress."""

    def __init__(self, run: InferenceRun, env: RunEnv, clock: Callable[[], float] = time.monotonic) -> None:
        self.run, self.env = run, env
        self.client: Client = env.client
        workers = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        # Tasks go to Dask in batches (issue 17: per task, a graph submitted and a result fetched
        # were each a round trip through the scheduler): once no more than `low` run, the ended
        # ones are collected together and the free room is filled in one graph. `low` leaves every
        # worker a task queued behind its running one, as the limit of 2 a worker + 2 did.
        self.low = max(BATCH_LOW, 2 * workers + 2)
        self.limit = 2 * self.low
        self.in_flight: dict[Future, BlockTask] = {}
        self.key_prefix = task_prefix(run.layout_key, run.attempt)
        self.topic = progress_topic(run.layout_key, run.attempt)
        self.inbox = StepInbox()
        self.pace = ReportPace(clock)
        # The job travels once to each worker, as the result of a task every block task depends on
        # (workers.inference.tasks.TaskRef); a block task itself is a hundred bytes.
        self.job_ref: Future | None = None

    def drive(self) -> None:
        self.client.subscribe_topic(self.topic, self.inbox)
        self.report()
        try:
            ended: set[Future] = set()  # ended, not yet collected
            while True:
                ended = {f for f in ended if f.status in ENDED}  # a result lost with its worker reruns
                running = len(self.in_flight) - len(ended)
                failed = any(f.status != "finished" for f in ended)
                collected = bool(ended) and (running <= self.low or failed)
                if collected:
                    self.collect(ended)
                    ended = set()
                if running <= self.low:
                    self.fill()
                if not self.in_flight:
                    return
                done = wait_some([f for f in self.in_flight if f not in ended], WAKE_S)
                if self.env.cancel.is_set():
                    try:  # what finished before the cancel is recorded: a rerun skips it
                        self.record([f for f in ended | done if f.status == "finished"])
                    finally:
                        self.stop()
                    raise JobCancelledError(
                        f"job cancelled with {self.run.blocks_done}/{self.run.plan.n_blocks} blocks done"
                    )
                ended |= done
                moved = self.inbox.fold_into(self.run)
                if self.pace.due(moved=moved, ended=collected):
                    self.report()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            self.inbox.close()
            if self.client.status not in ("closing", "closed"):  # a closed one has no subscription left
                self.client.unsubscribe_topic(self.topic)
            if self.in_flight:
                self.client.cancel(list(self.in_flight))
            if self.job_ref is not None:
                self.job_ref.release()

    def fill(self) -> None:
        """Tasks up to the in-flight limit, handed to Dask in one graph a pass (issue 17: one
        ``update-graph`` message through the scheduler for all the tasks that start together,
        where a ``submit`` each cost one a task)."""
        room = self.limit - len(self.in_flight)
        tasks: list[BlockTask] = []
        while len(tasks) < room and (task := self.run.next_task()) is not None:
            tasks.append(task)
        if not tasks:
            return
        if self.job_ref is None:
            first = tasks[0]
            self.job_ref = self.client.submit(
                job_of, first.job, key=f"pytc-job-{first.layout_key}-{first.attempt}", pure=False
            )
        for phase in (2, 1):  # one graph a pass: a graph has one priority
            batch = [t for t in tasks if t.phase == phase]
            if batch:
                self.in_flight.update(zip(self.submit(batch), batch, strict=True))

    def submit(self, tasks: list[BlockTask]) -> list[Future]:
        """``tasks`` (all of one pass) as one Dask graph, one future each, in their order."""
        phase = tasks[0].phase
        return self.client.map(
            run_task,
            [TaskRef.of(t) for t in tasks],
            [self.job_ref] * len(tasks),
            # workers.inference.readahead reads it; the attempt keeps it apart from earlier runs
            key=[task_key(t.layout_key, t.phase, t.block, t.attempt) for t in tasks],
            retries=self.env.retries,
            pure=False,
            priority=self.env.priority + (PASS2_PRIORITY if phase == 2 else 0),
            resources=ONE_ACCELERATOR,
        )

    def collect(self, done: set[Future]) -> None:
        """Record the tasks that ended: those that succeeded first (:meth:`record`), then the first
        that failed or was cancelled raises."""
        self.record([f for f in done if f.status == "finished"])
        for future in done:
            if future in self.in_flight:
                task = self.in_flight.pop(future)
                try:
                    self.failed(future, task)
                finally:
                    future.release()

    def record(self, finished: list[Future]) -> None:
        """The results of tasks that succeeded, fetched in one round trip through the scheduler
        (issue 17: a ``result()`` each was one a task), handed to the run, and the futures released
        (the scheduler forgets them, whoever still holds the objects)."""
        if not finished:
            return
        tasks = [self.in_flight.pop(f) for f in finished]
        try:
            results = self.client.gather(finished)
            for task, result in zip(tasks, results, strict=True):
                self.run.finished(task, result)
        finally:
            for future in finished:
                future.release()

    def failed(self, future: Future, task: BlockTask) -> None:
        """Raise what ended ``task`` without a result."""
        if future.status == "cancelled":  # not by this job (its cancel is seen before)
            raise JobFailedError(f"block {task.block} (pass {task.phase}): Dask cancelled its task")
        error = future.exception()
        if isinstance(error, BlockCancelledError):
            raise JobCancelledError(f"job cancelled while block {task.block} ran")
        raise JobFailedError(
            f"block {task.block} (pass {task.phase}) failed after {self.env.retries} retries: {error!r}"
        )

    def report(self) -> None:
        self.env.report(run_progress(self.run))

    def stop(self) -> None:
        """Drop queued blocks, make running ones stop at their next batch, wait until none runs."""
        self.run.request_cancel()
        self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        # The workers are asked, not the scheduler: it forgets a cancelled task while its thread
        # still runs, and the job would be recorded cancelled before its last chunk was written.
        wait_for_tasks(self.client, (self.key_prefix,), CANCEL_WAIT_S)


def run_progress(run: InferenceRun) -> Progress:
    """The run's figures as the one progress value: steps, with windows, chunks, blocks and voxels."""
    counts = run.counts()
    parts = {
        "windows": [counts.windows_done, counts.windows_total],
        "chunks": [counts.chunks_done, counts.chunks_total],
        "blocks": [counts.blocks_done, counts.blocks_total],
    }
    if counts.pyramid_total:
        parts["pyramid"] = [counts.pyramid_done, counts.pyramid_total]
    flat = {f"{name}_done": done for name, (done, _) in parts.items()}
    flat |= {f"{name}_total": total for name, (_, total) in parts.items()}
    details = {**flat, "voxels_done": counts.voxels_done, "voxels_total": counts.voxels_total, "parts": parts}
    return Progress(counts.done, counts.total, "steps", time.perf_counter() - run.started, details=details)


class StepInbox:
    """The job's progress events as they arrive (on the Dask client's event loop), until the driver
    folds them into the run (on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[int, Index, int]] = []
        self._open = True

    def __call__(self, event: tuple[float, Any]) -> None:
        """A Dask event ``(time, {"block": [...], "phase": 1 | 2, "done": n})``."""
        try:
            msg = event[1]
            step = (int(msg["phase"]), tuple(int(i) for i in msg["block"]), int(msg["done"]))
        except (IndexError, KeyError, TypeError, ValueError):
            log.debug("a progress event of another shape: %r", event)
            return
        with self._lock:
            if self._open:
                self._events.append(step)

    def fold_into(self, run: InferenceRun) -> bool:
        """Hand what arrived to the run; True when its count moved."""
        with self._lock:
            events, self._events = self._events, []
        moved = False
        for phase, block, done in events:
            moved = run.steps_reported(phase, block, done) or moved
        return moved

    def close(self) -> None:
        """Events still arriving after the run are dropped."""
        with self._lock:
            self._open = False
            self._events.clear()


class ReportPace:
    """When the driver reports: at once when a task ended; when the count moved, at most every
    :data:`REPORT_MIN_S`; and every :data:`HEARTBEAT_S` anyway."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._last = clock()
        self._pending = False  # moved since the last report

    def due(self, *, moved: bool = False, ended: bool = False) -> bool:
        self._pending = self._pending or moved
        now = self.clock()
        since = now - self._last
        if ended or (self._pending and since >= REPORT_MIN_S) or since >= HEARTBEAT_S:
            self._last, self._pending = now, False
            return True
        return False


def _on_a_worker(client: Client, cancel: threading.Event, fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on a worker; a cancel while it waits for one (none free, none connected) is seen."""
    future = client.submit(fn, *args, pure=False, resources=ONE_ACCELERATOR)
    try:
        while True:
            try:
                return future.result(timeout=WAKE_S)
            except TimeoutError:
                if cancel.is_set():
                    raise JobCancelledError(
                        "job cancelled while it waited for a worker to check its model"
                    ) from None
    finally:
        future.release()


def _files_signature(ref: ModelRef) -> tuple[tuple[int, int] | None, ...]:
    def stat(path: str | None) -> tuple[int, int] | None:
        try:
            info = os.stat(path) if path else None
        except OSError:
            return None
        return None if info is None else (info.st_size, info.st_mtime_ns)

    return (stat(ref.path), stat(ref.checkpoint))
