"""Dask entry points of training: one task runs a whole training job on one worker.

Submitted with one accelerator slot (:mod:`workers.resources`). Like :mod:`workers.inference.tasks`,
this module imports no torch at import time, so the control plane can name these functions in
``client.submit``; the work is in :mod:`workers.training.session`.
"""

from __future__ import annotations

from workers.training.job import TrainingJob, TrainingModelInfo, TrainingOutcome


def inspect_training(job: TrainingJob) -> TrainingModelInfo:
    """Pre-flight on a worker: the model builds, fits the image and the targets, and the starting
    weights load into it. Raises :class:`workers.errors.SpecError` naming the field."""
    from workers.training.session import inspect

    return inspect(job)


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
