"""Training jobs in the REST service: admission and the run, dispatched to from :mod:`service.jobs`.

Admission makes the checks ``pytc run`` makes, before anything is written: the data
(:func:`service.training_validation.validate_training_against_data`), then a pre-flight on a Dask
worker (:func:`workers.training.tasks.inspect_training`: the model builds, fits the image and the
targets, and its starting weights load; the service itself never imports torch). Each failure is a
:class:`SpecError` naming the field (422).

Two active jobs never train into one ``checkpoint.dir``: its key in the store's output check is
:func:`training_output_key` (409 while another queued or running job holds it). Checkpoints of
other jobs already in the folder are no conflict, as with ``pytc run``: a run resumes only from
checkpoints carrying its own job key and prunes only its own.

The run is :func:`service.training_runner.run_training`. It starts from the newest checkpoint this
same job left in its folder, so a job picked up again after a crash or a restart of the service
continues from there, not from zero. Progress goes to the store as the contract's object (unit
``iterations``, plus ``loss`` and ``lr``); ``register_as`` lands in the service's registry.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distributed import Client

from models.ref import ModelRef
from service.errors import SchedulerUnavailableError
from service.events import ChangeFeed
from service.spec import _frozen_config
from service.store import JobStore
from service.training_runner import Register, TrainingProgress, run_training
from workers.errors import SpecError
from workers.training.checks import validate_training_against_data, validate_training_against_model
from workers.training.job import TrainingJob, TrainingModelInfo
from workers.training.tasks import inspect_training

log = logging.getLogger(__name__)

# The pre-flight jumps the queue of tasks on the workers, as the inference model check does.
PREFLIGHT_PRIORITY = 1000


def training_output_key(job: TrainingJob) -> str:
    """What a training job writes, for the store's check that no two active jobs write one thing."""
    return f"{job.checkpoint.dir}::checkpoints"


def admit_training(job: TrainingJob, client: Callable[[], Client], timeout_s: float) -> TrainingJob:
    """The checks of ``pytc run``: the data here, the model on a worker. Raises SpecError (422) or
    SchedulerUnavailableError (503)."""
    validate_training_against_data(job)
    validate_training_against_model(job, _preflight(job, client(), timeout_s))
    return job


def _preflight(job: TrainingJob, client: Client, timeout_s: float) -> TrainingModelInfo:
    # No resource request: the check runs on CPU, so it is not kept waiting behind a training task
    # that holds the worker's GPU slot for hours (that task secedes from the worker's thread pool).
    future = client.submit(inspect_training, job, pure=False, priority=PREFLIGHT_PRIORITY)
    try:
        info: TrainingModelInfo = future.result(timeout=timeout_s)
    except TimeoutError:
        future.cancel()
        raise SchedulerUnavailableError(
            f"no Dask worker checked the training job's model within {timeout_s:.0f} s; "
            "are workers connected?"
        ) from None
    except SpecError as err:
        raise SpecError(err.field, err.reason) from err
    return info


def service_registry(store: JobStore) -> Register:
    """The ``register`` hook of :func:`run_training`: the final checkpoint becomes a model that
    ``GET /v1/models`` lists and inference jobs name (``model: {name: ...}``)."""

    def register(
        name: str, checkpoint_path: str, architecture: str, config: dict[str, Any], sha256: str
    ) -> None:
        ref = ModelRef(
            "architecture",
            architecture=architecture,
            config=_frozen_config(config),
            checkpoint=str(Path(checkpoint_path).resolve()),
        )
        store.register_model(name, ref, sha256)
        log.info("registered model %r: %s", name, checkpoint_path)

    return register


class TrainingProgressWriter:
    """``on_progress`` of a training run: the contract's progress object to the store, at most every
    ``interval_s`` and on every change of the run's state (training, saving, finished, ...)."""

    def __init__(self, job_id: str, store: JobStore, feed: ChangeFeed, interval_s: float) -> None:
        self.job_id, self.store, self.feed = job_id, store, feed
        self.interval_s = interval_s
        self._written_at = -float("inf")
        self._state = ""

    def __call__(self, report: TrainingProgress) -> None:
        now = time.monotonic()
        if report.state == self._state and now - self._written_at < self.interval_s:
            return
        self._written_at, self._state = now, report.state
        self.write(report.to_json())

    def write(self, progress: dict[str, Any]) -> None:
        self.store.update_progress(self.job_id, progress)
        self.feed.bump(self.job_id)


def run_training_job(
    job_id: str,
    job: TrainingJob,
    client: Client,
    store: JobStore,
    feed: ChangeFeed,
    cancel: threading.Event,
    progress_interval_s: float,
) -> dict[str, Any]:
    """Train to the job's last iteration and return the job's ``result``: the final checkpoint, its
    iteration and sha256, where this attempt began, and the validation scores, if any.

    Raises what :func:`run_training` raises: JobCancelledError (after the task saved a
    checkpoint), SpecError, JobFailedError.
    """
    writer = TrainingProgressWriter(job_id, store, feed, progress_interval_s)
    if store.get_job(job_id).progress is None:  # until the task's first report
        writer(TrainingProgress(done=0, total=job.solver.iterations))
    result = run_training(job, client, on_progress=writer, cancel=cancel, register=service_registry(store))
    return dataclasses.asdict(result)
