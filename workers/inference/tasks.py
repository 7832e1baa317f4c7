"""Dask task entry points. Small specs in, small results out; no array or model crosses the scheduler.

This module imports no torch at import time, so the control plane (``service``) can name these
functions in ``client.submit`` without pulling torch into its own process.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from models.ref import ModelInfo, ModelRef
from workers.inference.engine import BlockContext, BlockResult, run_pass2
from workers.inference.geometry import job_geometry
from workers.inference.job import InferenceJob
from workers.inference.pipeline import run_pass1
from workers.inference.rundir import Index, RunDir

_OUTPUTS: dict[tuple[str, str, str], object] = {}


@dataclass(frozen=True)
class BlockTask:
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


def _output_volume(job: InferenceJob, layout_key: str) -> object:
    """The output opened once per worker and job layout (an overwritten output gets a new key)."""
    from volumes.volume import open_volume

    key = (job.output.path, job.output.dataset, layout_key)
    if key not in _OUTPUTS:
        _OUTPUTS[key] = open_volume(job.output.path, job.output.dataset, mode="r+")
    return _OUTPUTS[key]


def run_block(task: BlockTask) -> BlockResult:
    """One pass of one block. Safe to run twice: it writes only its own chunks and scratch files."""
    job = task.job
    ctx = BlockContext(
        job=job,
        geometry=job_geometry(job, task.layout_key),
        run_dir=RunDir.for_output(job.output.path, job.output.dataset, task.layout_key),
        output=_output_volume(job, task.layout_key),  # type: ignore[arg-type]
        out_channels=task.out_channels,
    )
    if task.phase == 2:
        return run_pass2(ctx, task.block)
    from workers.inference.model_cache import cached_predictor

    predictor = cached_predictor(job)
    return run_pass1(ctx, task.block, predictor.predict)
