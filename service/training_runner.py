"""Drives one training job over Dask: one task on one worker, progress polled from the checkpoint
folder, cancel through a flag file, the final checkpoint registered when the job asks.

The task resumes from its own newest checkpoint, so a worker lost mid-training costs only the
iterations since that checkpoint: Dask runs the task again elsewhere (a lost worker does not count
against ``retries``, which is for exceptions) and it continues. Mirrors
:func:`service.runner.run_inference`; imports no torch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from distributed import Client, Future, wait

from service.errors import JobCancelledError, JobFailedError
from workers.errors import SpecError
from workers.training.checkpoint_dir import TrainingDir
from workers.training.job import TrainingJob, TrainingOutcome
from workers.training.tasks import run_training_task

log = logging.getLogger(__name__)

GPU = {"GPU": 1}
CANCEL_WAIT_S = 120.0  # how long a cancel waits for the task to save its checkpoint


class Register(Protocol):
    """Records a trained model under ``name`` (the service's registry, or ``pytc run``'s file)."""

    def __call__(
        self, name: str, checkpoint_path: str, architecture: str, config: dict[str, Any], sha256: str
    ) -> None: ...


@dataclass
class TrainingProgress:
    """One look at a running training job; ``to_json`` gives the contract's progress object."""

    done: int
    total: int
    unit: str = "iterations"
    state: str = "starting"
    loss: float | None = None
    lr: float | None = None
    iterations_per_second: float = 0.0
    elapsed_s: float = 0.0
    attempt: int = 1
    validation: list[dict[str, Any]] = field(default_factory=list)

    @property
    def eta_seconds(self) -> float | None:
        if self.iterations_per_second <= 0:
            return None
        return max(0, self.total - self.done) / self.iterations_per_second

    def to_json(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "total": self.total,
            "unit": self.unit,
            "fraction": self.done / self.total if self.total else 0.0,
            "rate": self.iterations_per_second,
            "eta_seconds": self.eta_seconds,
            "elapsed_seconds": self.elapsed_s,
            "state": self.state,
            "loss": self.loss,
            "lr": self.lr,
            "iterations_per_second": self.iterations_per_second,
            "attempt": self.attempt,
            "validation": self.validation,
        }


@dataclass
class TrainingResult:
    checkpoint: str  # the final checkpoint
    checkpoint_dir: str
    iteration: int
    sha256: str
    start_iteration: int  # where the last attempt began (> 0 after a resume)
    resumed_from: str | None
    attempts: int
    loss: float | None
    iterations_per_second: float
    loader_wait_fraction: float
    seconds: float
    validation: list[dict[str, Any]] = field(default_factory=list)
    registered_as: str | None = None


def progress_from_record(record: dict[str, Any]) -> TrainingProgress:
    return TrainingProgress(
        done=int(record.get("iteration", 0)),
        total=int(record.get("total", 0)),
        state=str(record.get("state", "training")),
        loss=record.get("loss"),
        lr=record.get("lr"),
        iterations_per_second=float(record.get("iterations_per_second") or 0.0),
        elapsed_s=float(record.get("elapsed_s") or 0.0),
        attempt=len(record.get("attempts", [])) or 1,
        validation=list(record.get("validation", [])),
    )


def run_training(
    job: TrainingJob,
    client: Client,
    *,
    on_progress: Callable[[TrainingProgress], None] | None = None,
    cancel: threading.Event | None = None,
    register: Register | None = None,
    retries: int = 2,
    poll_s: float = 0.5,
    priority: int = 0,
) -> TrainingResult:
    """Run the job to its last iteration on ``client``'s cluster, from its newest checkpoint if any.

    Raises :class:`JobCancelledError` after a cancel (the task saved a checkpoint; running the job
    again continues from it), :class:`SpecError` for a problem with what the job names that only the
    worker could see, :class:`JobFailedError` otherwise.
    """
    started = time.perf_counter()
    tdir = TrainingDir(Path(job.checkpoint.dir), job.job_key())
    tdir.clear_cancel()  # running the job again after a cancel continues it
    future = client.submit(
        run_training_task,
        job,
        key=f"pytc-train-{tdir.job_key}-{uuid.uuid4().hex[:8]}",
        retries=retries,
        pure=False,
        priority=priority,
        resources=GPU,
    )
    try:
        _follow(future, tdir, on_progress, cancel, poll_s)
    except KeyboardInterrupt:
        _stop(client, future, tdir)
        raise
    if cancel is not None and cancel.is_set() and not future.done():
        _stop(client, future, tdir)
    outcome = _outcome(future, retries)
    _report(tdir, on_progress)
    return _finish(job, tdir, outcome, register, time.perf_counter() - started)


def _follow(
    future: Future,
    tdir: TrainingDir,
    on_progress: Callable[[TrainingProgress], None] | None,
    cancel: threading.Event | None,
    poll_s: float,
) -> None:
    while not future.done():
        with contextlib.suppress(TimeoutError):
            wait(future, timeout=poll_s)
        _report(tdir, on_progress)
        if cancel is not None and cancel.is_set():
            return


def _report(tdir: TrainingDir, on_progress: Callable[[TrainingProgress], None] | None) -> None:
    record = tdir.read_progress()
    if on_progress is not None and record is not None:
        on_progress(progress_from_record(record))


def _stop(client: Client, future: Future, tdir: TrainingDir) -> None:
    """Ask the task to save and stop; wait for it, dropping it if it never started."""
    tdir.request_cancel()
    try:
        wait(future, timeout=CANCEL_WAIT_S)
    except TimeoutError:
        log.warning("the training task did not stop within %.0f s of the cancel", CANCEL_WAIT_S)
    if not future.done():
        client.cancel(future)


def _outcome(future: Future, retries: int) -> TrainingOutcome:
    if future.status == "finished":
        outcome: TrainingOutcome = future.result()
        return outcome
    if future.status == "cancelled":
        raise JobCancelledError("the training job was cancelled before it started")
    error = future.exception()
    raise JobFailedError(f"the training task failed (after up to {retries} retries): {error!r}")


def _finish(
    job: TrainingJob, tdir: TrainingDir, outcome: TrainingOutcome, register: Register | None, seconds: float
) -> TrainingResult:
    if outcome.status == "cancelled":
        raise JobCancelledError(
            f"cancelled at iteration {outcome.iteration}/{outcome.iterations}; saved {outcome.checkpoint}; "
            "run the same job again to continue from it"
        )
    if outcome.status == "failed" or outcome.checkpoint is None or outcome.sha256 is None:
        if outcome.error_field:
            reason = (outcome.error or "").removeprefix(f"{outcome.error_field}: ")
            raise SpecError(outcome.error_field, reason)
        raise JobFailedError(f"training failed: {outcome.error}")
    record = tdir.read_progress() or {}
    result = TrainingResult(
        checkpoint=outcome.checkpoint,
        checkpoint_dir=job.checkpoint.dir,
        iteration=outcome.iteration,
        sha256=outcome.sha256,
        start_iteration=outcome.start_iteration,
        resumed_from=outcome.resumed_from,
        attempts=len(record.get("attempts", [])) or 1,
        loss=outcome.loss,
        iterations_per_second=outcome.iterations_per_second,
        loader_wait_fraction=outcome.loader_wait_fraction,
        seconds=seconds,
        validation=[asdict(s) for s in outcome.validation],
    )
    if job.register_as is not None and register is not None:
        register(
            job.register_as,
            outcome.checkpoint,
            job.model.architecture,
            job.model.config_dict(),
            outcome.sha256,
        )
        result.registered_as = job.register_as
    return result
