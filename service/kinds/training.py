"""``kind: training``: one Dask task trains the whole job, followed through its checkpoint folder.

Admission checks the data here and the model on a worker (:func:`workers.training.tasks.inspect_training`:
it builds, fits the image and the targets, and its starting weights load), so the control plane
never imports torch. Two active jobs never train into one ``checkpoint.dir`` (its target).

The task resumes from its own newest checkpoint, so a worker lost mid-training costs only the
iterations since that checkpoint: Dask runs the task again elsewhere (a lost worker does not count
against ``retries``, which are for exceptions) and it continues; so does a job picked up again
after a restart of the service. Futures cannot stream progress and die with their client, so the
task writes its progress to the checkpoint folder and this driver polls it; a cancel is a flag
file there, checked by the task every iteration (it then saves a checkpoint and stops).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, Future, wait

from models.ref import ModelRef
from service.documents.sections import frozen_config
from service.documents.training import TrainingDocument, parse_training
from service.errors import JobCancelledError, JobFailedError, SpecError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target
from service.progress import Progress, format_duration
from workers.errors import Refusal
from workers.limits import check_training_memory
from workers.resources import ONE_ACCELERATOR
from workers.training.checkpoint_dir import TrainingDir
from workers.training.checks import validate_training_against_data, validate_training_against_model
from workers.training.job import TrainingJob, TrainingModelInfo, TrainingOutcome
from workers.training.tasks import inspect_training, run_training_task

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 120.0  # how long a cancel waits for the task to save its checkpoint
POLL_S = 0.5


@dataclass
class TrainingResult:
    """The job's ``result``."""

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


class TrainingKind:
    name = "training"
    document = TrainingDocument

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> TrainingJob:
        return parse_training(doc, env.roots, limits=env.limits)

    def target(self, job: TrainingJob) -> Target:
        return Target(job.checkpoint.dir, "checkpoints")

    def admit(self, job: TrainingJob, env: AdmitEnv) -> TrainingModelInfo:
        """The data here; the precision, the model, its targets and starting weights on a worker
        (which returns what it refuses rather than raising it: :class:`Refusal`)."""
        validate_training_against_data(job, env.limits)
        answer: TrainingModelInfo | Refusal = env.on_worker(inspect_training, job)
        if isinstance(answer, Refusal):
            raise answer.error()
        validate_training_against_model(job, answer)
        s = job.sampling
        check_training_memory(
            s.patch_size, job.solver.batch_size, answer.in_channels, answer.out_channels, env.limits
        )
        return answer

    def run(self, job: TrainingJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        """Train to the job's last iteration, from its newest checkpoint if any."""
        started = time.perf_counter()
        tdir = TrainingDir(Path(job.checkpoint.dir), job.job_key())
        tdir.clear_cancel()  # running the job again after a cancel continues it
        env.report(Progress(0, job.solver.iterations, "iterations", details={"phase": "starting"}))
        future = env.client.submit(
            run_training_task,
            job,
            key=f"pytc-train-{tdir.job_key}-{uuid.uuid4().hex[:8]}",
            retries=env.retries,
            pure=False,
            priority=env.priority,
            resources=ONE_ACCELERATOR,
        )
        try:
            _follow(future, tdir, env)
        except KeyboardInterrupt:
            _stop(env.client, future, tdir)
            raise
        if env.cancel.is_set() and not future.done():
            _stop(env.client, future, tdir)
        outcome = _outcome(future, env.retries)
        _report(tdir, env)
        result = _finish(job, tdir, outcome, time.perf_counter() - started)
        if job.register_as is not None and env.models is not None:
            ref = ModelRef(
                "architecture",
                architecture=job.model.architecture,
                config=frozen_config(job.model.config_dict()),
                checkpoint=str(Path(result.checkpoint).resolve()),
            )
            env.models.register(job.register_as, ref, result.sha256)
            result.registered_as = job.register_as
            env.notice(f"registered model {job.register_as!r}: {result.checkpoint}")
        return asdict(result)

    def summary(self, result: Mapping[str, Any]) -> Summary:
        """The checkpoint, where the run began, how good it is."""
        rate = float(result.get("iterations_per_second") or 0.0)
        waits = 100 * float(result.get("loader_wait_fraction") or 0.0)
        lines = [
            f"succeeded: {result.get('checkpoint')} (iteration {result.get('iteration')}) in "
            f"{format_duration(float(result.get('seconds') or 0.0))}, {rate:.2f} it/s, "
            f"data loader waits {waits:.0f}%"
        ]
        if result.get("resumed_from") is not None:
            lines.append(f"resumed from {result['resumed_from']} (iteration {result.get('start_iteration')})")
        if int(result.get("attempts") or 1) > 1:
            lines.append(f"{result['attempts']} attempts (a worker was lost or the job was run again)")
        validation = result.get("validation") or []
        if validation:
            last = validation[-1]
            lines.append(f"validation at {last['iteration']}: Dice {last['dice']:.4f}, IoU {last['iou']:.4f}")
        if (name := result.get("registered_as")) is not None:
            lines.append(f"registered as {name!r}: inference jobs name it with model: {{name: {name}}}")
        checkpoint = result.get("checkpoint")
        return Summary(tuple(lines), str(checkpoint) if checkpoint is not None else None)


TRAINING = TrainingKind()


def progress_of(record: Mapping[str, Any]) -> Progress:
    """The task's progress record (:meth:`TrainingDir.read_progress`) as the one progress value."""
    details: dict[str, Any] = {
        "phase": str(record.get("state", "training")),
        "loss": record.get("loss"),
        "lr": record.get("lr"),
        "attempt": len(record.get("attempts", [])) or 1,
        "validation": list(record.get("validation", [])),
    }
    rate = float(record.get("iterations_per_second") or 0.0)
    return Progress(
        done=int(record.get("iteration", 0)),
        total=int(record.get("total", 0)),
        unit="iterations",
        elapsed_s=float(record.get("elapsed_s") or 0.0),
        rate=rate if rate > 0 else None,
        details={k: v for k, v in details.items() if v is not None},
    )


def _follow(future: Future, tdir: TrainingDir, env: RunEnv) -> None:
    while not future.done():
        with contextlib.suppress(TimeoutError):
            wait(future, timeout=POLL_S)
        _report(tdir, env)
        if env.cancel.is_set():
            return


def _report(tdir: TrainingDir, env: RunEnv) -> None:
    record = tdir.read_progress()
    if record is not None:
        env.report(progress_of(record))


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


def _finish(job: TrainingJob, tdir: TrainingDir, outcome: TrainingOutcome, seconds: float) -> TrainingResult:
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
    return TrainingResult(
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
