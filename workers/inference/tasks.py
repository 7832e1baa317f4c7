"""Dask task entry points. Small specs in, small results out; no array or model crosses the scheduler.

This module imports no torch at import time, so the control plane (``service``) can name these
functions in ``client.submit`` without pulling torch into its own process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from models.ref import ModelInfo, ModelRef
from volumes.blocks import Index
from volumes.open import open_volume
from volumes.volume import Volume
from workers.inference.engine import BlockContext, BlockResult, run_pass2
from workers.inference.geometry import job_geometry
from workers.inference.job import InferenceJob
from workers.inference.pipeline import run_pass1
from workers.inference.rundir import RunDir
from workers.runtime.state import worker_state


@dataclass(frozen=True)
class BlockTask:
    """One pass of one block of a job, as :class:`workers.inference.run.InferenceRun` hands it out."""

    job: InferenceJob
    layout_key: str
    block: Index
    phase: Literal[1, 2]
    out_channels: int


def inspect_model(ref: ModelRef, patch_size: tuple[int, int, int]) -> ModelInfo:
    """Load the model where it will run and report its channels and identity."""
    from workers.inference.model_cache import cached_model

    loaded = cached_model(ref, patch_size)
    return ModelInfo(loaded.in_channels, loaded.out_channels, loaded.sha256, loaded.description)


def _output_volume(job: InferenceJob, layout_key: str) -> Volume:
    """The output opened once per worker and job layout (an overwritten output gets a new key)."""
    outputs = worker_state().outputs
    key = (job.output.path, job.output.dataset, layout_key)
    volume: Volume | None = outputs.get(key)
    if volume is None:
        volume = open_volume(job.output.path, job.output.dataset, mode="r+")
        outputs.put(key, volume)
    return volume


def run_block(task: BlockTask, *, predict: Callable[[np.ndarray], np.ndarray] | None = None) -> BlockResult:
    """One pass of one block. Safe to run twice: it writes only its own chunks and scratch files.

    ``predict`` replaces the job's model (tests, :func:`workers.inference.run.run_serially`)."""
    job = task.job
    ctx = BlockContext(
        job=job,
        geometry=job_geometry(job, task.layout_key),
        run_dir=RunDir.for_output(job.output.path, job.output.dataset, task.layout_key),
        output=_output_volume(job, task.layout_key),
        out_channels=task.out_channels,
    )
    if task.phase == 2:
        return run_pass2(ctx, task.block)
    if predict is None:
        from workers.inference.model_cache import cached_predictor  # torch, on the worker only

        predict = cached_predictor(job).predict
    return run_pass1(ctx, task.block, predict)
