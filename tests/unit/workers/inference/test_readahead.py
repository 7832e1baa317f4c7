"""Block-task keys and the read-ahead slot: a run of a job never gets what an earlier run left."""

from __future__ import annotations

from models.ref import ModelInfo
from volumes.box import Box
from workers.inference import readahead
from workers.inference.job import InferenceJob
from workers.inference.run import InferenceRun
from workers.runtime.state import worker_state

INFO = ModelInfo(1, 1, "sha-of-the-test-model")


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
