"""The small job the engine's unit tests share: a random 16x24x24 float input in chunks of 8, a
5x7x7 patch with stride 3x4x4, and 8x8x8 blocks (several blocks, border chunks and pass 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import make_job
from workers.inference.job import InferenceJob, WindowSpec

SHAPE = (16, 24, 24)


@pytest.fixture
def job(tmp_path: Path) -> InferenceJob:
    data = np.random.default_rng(1).random(SHAPE, dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    window = WindowSpec((5, 7, 7), (3, 4, 4), "gaussian", batch_size=4)
    return make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=(8, 8, 8))
