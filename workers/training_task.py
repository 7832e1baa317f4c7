"""Dask entry points of training: one task runs a whole training job on one worker.

Submitted with ``resources={"GPU": 1}``. Like :mod:`workers.tasks`, this module imports no torch at
import time, so the control plane can name these functions in ``client.submit``; the work is in
:mod:`workers.training_session`.
"""

from __future__ import annotations

from workers.training_job import TrainingJob, TrainingModelInfo, TrainingOutcome


def inspect_training(job: TrainingJob) -> TrainingModelInfo:
    """Pre-flight on a worker: the model builds, fits the image and the targets, and the starting
    weights load into it. Raises :class:`workers.training_job.TrainingInputError` naming the field."""
    from workers.training_session import inspect

    return inspect(job)


def run_training_task(job: TrainingJob) -> TrainingOutcome:
    """Train to ``solver.iterations`` (or until cancelled), from this job's newest checkpoint if any.

    Errors a retry cannot fix come back as an outcome with ``status="failed"``; anything else is
    raised, and Dask's retry resumes from the newest checkpoint.
    """
    from workers.training_session import train

    return train(job)
