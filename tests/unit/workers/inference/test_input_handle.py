"""A block task's input is opened once per worker and run (``workers.inference.pipeline.input_volume``):
the blocks of a run share its handle, a later run (a new attempt) opens it afresh and sees what is
there now."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from tests.helpers import make_job
from volumes.box import Box
from volumes.open import open_volume
from volumes.output import create_output
from workers.inference.engine import BlockContext
from workers.inference.geometry import build_geometry
from workers.inference.job import WindowSpec
from workers.inference.pipeline import input_volume
from workers.inference.rundir import RunDir
from workers.runtime.state import worker_state


def _context(tmp_path: Path, attempt: str) -> BlockContext:
    window = WindowSpec((4, 8, 8), (2, 4, 4), "gaussian")
    job = make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=(8, 8, 8))
    geometry = build_geometry(job, (8, 16, 16))
    if not (tmp_path / "out.zarr").exists():
        create_output(job.output.path, "pred", "zarr3", (1, 8, 16, 16), "float32", (8, 8, 8), None, {})
    output = open_volume(tmp_path / "out.zarr", "pred", "r+")
    return BlockContext(
        job, geometry, RunDir.for_output(job.output.path, "pred", "k"), output, 1, attempt=attempt
    )


def test_blocks_of_a_run_share_the_input_and_a_new_run_reopens_it(tmp_path: Path) -> None:
    first = np.full((8, 16, 16), 3, np.uint8)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=first, chunks=(4, 8, 8))
    run = _context(tmp_path, "attempt-1")
    node = tmp_path / "in.zarr" / "raw"
    volume = input_volume(run, node)
    assert input_volume(run, node) is volume  # the next block of the run: no second open
    assert (volume.read(Box((0, 0, 0), (8, 16, 16))) == 3).all()
    # the input replaced (another shape, other values) before the job is run again
    second = np.full((8, 16, 24), 7, np.uint8)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=second, chunks=(4, 8, 8))
    again = input_volume(_context(tmp_path, "attempt-2"), node)
    assert again is not volume and again.shape == (8, 16, 24)
    assert (again.read(Box((0, 0, 0), (8, 16, 24))) == 7).all()
    worker_state().inputs.clear()
