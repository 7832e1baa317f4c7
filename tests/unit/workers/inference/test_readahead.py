"""Block-task keys and the read-ahead slot: a run of a job never gets what an earlier run left."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from models.ref import ModelInfo
from tests.helpers import make_job
from volumes.box import Box
from workers.inference import readahead
from workers.inference.job import InferenceJob, WindowSpec
from workers.inference.run import InferenceRun
from workers.runtime.state import worker_state

INFO = ModelInfo(1, 1, "sha-of-the-test-model")


@pytest.fixture
def job(tmp_path: Path) -> InferenceJob:
    data = np.random.default_rng(1).random((16, 24, 24), dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    window = WindowSpec((5, 7, 7), (3, 4, 4), "gaussian", batch_size=4)
    return make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=(8, 8, 8))


def test_each_run_of_a_job_names_its_tasks_apart_from_the_runs_before(job: InferenceJob) -> None:
    first, second = InferenceRun.start(job, INFO), InferenceRun.start(job, INFO)
    assert first.layout_key == second.layout_key and first.attempt != second.attempt
    a, b = first.next_task(), second.next_task()
    assert a is not None and b is not None and (a.block, a.phase) == (b.block, b.phase)
    key_a = readahead.task_key(a.layout_key, a.phase, a.block, a.attempt)
    key_b = readahead.task_key(b.layout_key, b.phase, b.block, b.attempt)
    assert key_a != key_b
    assert key_a.startswith(readahead.task_prefix(first.layout_key, first.attempt))
    assert not key_b.startswith(readahead.task_prefix(first.layout_key, first.attempt))


def test_a_block_read_ahead_by_an_earlier_run_is_dropped_not_taken() -> None:
    slot = worker_state().readahead
    box = Box((0, 0, 0), (8, 8, 8))
    reader = object()
    with slot.lock:
        slot.pending = (("layout", "old-run", (1, 0, 0), box), reader)
    assert readahead.take("layout", (1, 0, 0), box, "new-run") is None  # it may hold a failed read
    assert slot.pending is None
    with slot.lock:
        slot.pending = (("layout", "this-run", (1, 0, 0), box), reader)
    assert readahead.take("layout", (1, 0, 0), box, "this-run") is reader
