"""Dask task entry points. Small specs in, small results out; no array or model crosses the scheduler.

This module imports no torch at import time, so the control plane (``service``) can name these
functions in ``client.submit`` without pulling torch into its own process.

Progress leaves a running block task as Dask worker events: on the topic
:func:`progress_topic` of the job's layout, ``{"block": [z, y, x], "phase": 1 | 2, "done": n}``
(``n`` the steps this pass has finished, :mod:`workers.inference.steps`), at most every
:data:`EVENT_INTERVAL_S` and the first one that long after the task started, so that a task shorter
than that sends none (each event is a message through the scheduler to the driver; its end counts
it in full anyway); the driver subscribes to the topic. The counts only grow, so an event
dropped by the throttle or arriving late loses nothing that the task's end does not set right.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.errors import ModelError
from models.ref import ModelInfo, ModelRef
from volumes.blocks import Index
from volumes.open import open_volume
from volumes.volume import Volume
from workers.confine import ChunkFiles, confined
from workers.errors import Refusal, SpecError
from workers.inference.checks import model_field
from workers.inference.engine import BlockContext, BlockResult, run_pass2
from workers.inference.geometry import job_geometry
from workers.inference.job import InferenceJob
from workers.inference.pipeline import run_pass1
from workers.inference.rundir import RunDir
from workers.inference.steps import StepHook
from workers.runtime.state import worker_state

log = logging.getLogger(__name__)

EVENT_INTERVAL_S = 0.1  # a block task's progress events, at most this often


@dataclass(frozen=True)
class BlockTask:
    """One pass of one block of a job, as :class:`workers.inference.run.InferenceRun` hands it out."""

    job: InferenceJob
    layout_key: str
    block: Index
    phase: Literal[1, 2]
    out_channels: int
    attempt: str = ""  # the run's token: what this run's keys, topic and worker caches are named by


@dataclass(frozen=True)
class TaskRef:
    """A block task as it travels to a worker: everything but the job, which goes by reference (the
    Dask key of a task returning it, :func:`job_of`: shipped once to each worker that runs a block
    of it, and computed again by Dask should that worker be lost). Ten thousand tasks in flight
    cost the scheduler a hundred bytes each, whatever the size of the job's document."""

    layout_key: str
    block: Index
    phase: Literal[1, 2]
    out_channels: int
    attempt: str = ""

    @classmethod
    def of(cls, task: BlockTask) -> TaskRef:
        return cls(task.layout_key, task.block, task.phase, task.out_channels, task.attempt)

    def with_job(self, job: InferenceJob) -> BlockTask:
        return BlockTask(job, self.layout_key, self.block, self.phase, self.out_channels, self.attempt)


def job_of(job: InferenceJob) -> InferenceJob:
    """The task whose result is the job, on the worker that needs it (see :class:`TaskRef`)."""
    return job


def run_task(ref: TaskRef, job: InferenceJob) -> BlockResult:
    """:func:`run_block` of a task sent by reference, Dask handing over the job it refers to."""
    return run_block(ref.with_job(job))


def inspect_model(
    ref: ModelRef, patch_size: tuple[int, int, int], device: str = "auto"
) -> ModelInfo | Refusal:
    """Load the model where it will run and report its channels and identity, and which precisions
    the device a job asking for ``device`` would use here does not run natively.

    A model that cannot be loaded comes back as a :class:`~workers.errors.Refusal` naming the
    field, not raised: Dask would log a raised error with its traceback (see ``Refusal``)."""
    from workers.inference.model_cache import cached_model
    from workers.runtime.precision import unsupported_precisions

    try:
        loaded = cached_model(ref, patch_size)
    except (ModelError, OSError) as err:  # a model file that cannot be read or used
        log.debug("model check of %s failed", ref, exc_info=True)
        return Refusal.of(SpecError(model_field(ref, err), str(err)))
    where, unsupported = unsupported_precisions(device)
    return ModelInfo(
        loaded.in_channels, loaded.out_channels, loaded.sha256, loaded.description, where, unsupported
    )


def _output_volume(job: InferenceJob, layout_key: str, attempt: str) -> tuple[Volume, ChunkFiles | None]:
    """The output, and where its chunks' files are, opened once per worker and run: a run after a
    failure (the output repaired, replaced, overwritten) opens it afresh."""
    outputs = worker_state().outputs
    key = (job.output.path, job.output.dataset, layout_key, attempt)
    opened: tuple[Volume, ChunkFiles | None] | None = outputs.get(key)
    if opened is None:
        volume = open_volume(job.output.path, job.output.dataset, mode="r+")
        opened = (volume, ChunkFiles.of(volume) if job.data_roots else None)
        outputs.put(key, opened)
    return opened


def progress_topic(layout_key: str, attempt: str = "") -> str:
    """The Dask event topic a run's block tasks report their steps on (late events of an earlier
    run of the job never reach the next one)."""
    return f"pytc-progress-{layout_key}-{attempt}" if attempt else f"pytc-progress-{layout_key}"


def worker_events(task: BlockTask, interval_s: float = EVENT_INTERVAL_S) -> StepHook | None:
    """A hook sending ``task``'s steps as events of the Dask worker running it; None outside one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except ValueError:  # not inside a Dask worker
        return None
    topic, block, phase = progress_topic(task.layout_key, task.attempt), list(task.block), task.phase
    # The first event once the task has run for interval_s: a tiny block sends none (issue 17: a
    # message through the scheduler a task, the driver's event loop woken for it), a long one keeps
    # the pace.
    last_sent = time.monotonic()

    def send(done: int) -> None:
        nonlocal last_sent
        now = time.monotonic()
        if now - last_sent < interval_s:
            return
        last_sent = now
        try:
            worker.log_event(topic, {"block": block, "phase": phase, "done": int(done)})
        except Exception as err:  # progress is news, never a reason for a block to fail
            log.debug("block %s: progress event not sent: %r", task.block, err)

    return send


def run_block(
    task: BlockTask,
    *,
    predict: Callable[[np.ndarray], np.ndarray] | None = None,
    progress: StepHook | None = None,
) -> BlockResult:
    """One pass of one block. Safe to run twice: it writes only its own chunks and scratch files.

    ``predict`` replaces the job's model (tests, :func:`workers.inference.run.run_serially`);
    ``progress`` hears the pass's steps as they finish (default: Dask worker events on a worker,
    nobody elsewhere)."""
    job = task.job
    run_dir = RunDir.for_output(job.output.path, job.output.dataset, task.layout_key)
    job.output_node()  # the output and the run folder still inside the data roots (workers.confine)
    confined(run_dir.root, job.data_roots)
    output, chunk_files = _output_volume(job, task.layout_key, task.attempt)
    ctx = BlockContext(
        job=job,
        geometry=job_geometry(job, task.layout_key, task.attempt),
        run_dir=run_dir,
        output=output,
        out_channels=task.out_channels,
        attempt=task.attempt,
    )
    ctx.chunk_files = chunk_files
    hook = progress if progress is not None else worker_events(task)
    if hook is not None:
        ctx.progress = hook
    if task.phase == 2:
        return run_pass2(ctx, task.block)
    if predict is None:
        from workers.inference.model_cache import cached_predictor  # torch, on the worker only

        predict = cached_predictor(job).predict
    return run_pass1(ctx, task.block, predict)
