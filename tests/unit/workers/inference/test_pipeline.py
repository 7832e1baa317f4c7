"""The threads of a pass-1 block: whatever ends the reader early reaches the block's task."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from models.ref import ModelInfo
from volumes.errors import VolumeNotFoundError
from workers.inference.job import InferenceJob
from workers.inference.run import InferenceRun, run_serially

INFO = ModelInfo(1, 1, "sha-of-the-test-model")


def doubled(batch: np.ndarray) -> np.ndarray:
    return batch * 2.0


def run_in_a_thread(job: InferenceJob, on_task, timeout_s: float = 60.0) -> BaseException | None:  # type: ignore[no-untyped-def]
    """The serial run's error, or None; a run still going after ``timeout_s`` is a hang."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            run_serially(job, INFO, predict=doubled, on_task=on_task)
        except BaseException as err:
            caught.append(err)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), "the block waits for a reader that is gone"
    return caught[0] if caught else None


def test_an_input_gone_between_blocks_fails_the_next_block_naming_it(job: InferenceJob) -> None:
    source = Path(job.input.path)

    def rename_after_the_first_block(run: InferenceRun) -> None:
        if source.exists():
            source.rename(source.with_name("moved.zarr"))

    error = run_in_a_thread(job, rename_after_the_first_block)
    assert isinstance(error, VolumeNotFoundError) and str(source) in str(error)
    source.with_name("moved.zarr").rename(source)
    assert run_in_a_thread(job, None) is None  # the same job again, the input back: it finishes
