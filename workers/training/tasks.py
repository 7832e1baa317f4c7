"""Dask entry points of training: one task runs a whole training job on one worker.

Submitted with one accelerator slot (:mod:`workers.resources`). Like :mod:`workers.inference.tasks`,
this module imports no torch at import time, so the control plane can name these functions in
``client.submit``; the work is in :mod:`workers.training.session`.
"""

from __future__ import annotations

import logging

from models.errors import ModelError
from volumes.errors import VolumeError
from workers.errors import Refusal, SpecError
from workers.training.checks import check_precision
from workers.training.job import TrainingJob, TrainingModelInfo, TrainingOutcome

log = logging.getLogger(__name__)


def inspect_training(job: TrainingJob) -> TrainingModelInfo | Refusal:
    """Pre-flight on a worker: its device runs ``compute.precision`` natively, the model builds,
    fits the image and the targets, and the starting weights load into it.

    A job that fails one of these comes back as a :class:`~workers.errors.Refusal` naming the
    field, not raised: Dask would log a raised error with its traceback (see ``Refusal``)."""
    from workers.runtime.precision import unsupported_precisions
    from workers.training.session import inspect

    try:
        check_precision(job, dict(unsupported_precisions(job.compute.device)[1]))
        return inspect(job)
    except SpecError as err:
        log.debug("training pre-flight refused the job", exc_info=True)
        return Refusal.of(err)
    except (ModelError, VolumeError) as err:  # not named by a check: the model or the data at large
        log.debug("training pre-flight refused the job", exc_info=True)
        return Refusal.of(SpecError("model" if isinstance(err, ModelError) else "data", str(err)))


def run_training_task(job: TrainingJob) -> TrainingOutcome:
    """Train to ``solver.iterations`` (or until cancelled), from this job's newest checkpoint if any.

    Errors a retry cannot fix come back as an outcome with ``status="failed"``; anything else is
    raised, and Dask's retry resumes from the newest checkpoint.

    On a Dask worker the task secedes from the worker's thread pool at once: it keeps the worker's
    ``GPU`` resource for the whole run, so no other GPU task starts beside it, but frees the thread
    slot, so a task that asks for no GPU (the service's pre-flight check of a submission, which
    loads models on the CPU) runs meanwhile instead of waiting until the training ends.
    """
    from distributed import secede
    from distributed.worker import get_worker

    from workers.training.session import train

    try:
        get_worker()
    except ValueError:  # called outside a worker (a test, a debugger): nothing to secede from
        pass
    else:
        secede()
    return train(job)
