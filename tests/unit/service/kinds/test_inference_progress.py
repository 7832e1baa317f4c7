"""The inference kind's progress, without Dask: events folded into the run (a retried block never
counts twice), the pace of reports and its heartbeat, and the progress object the service stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from models.ref import ModelInfo
from service.kinds.inference import HEARTBEAT_S, REPORT_MIN_S, ReportPace, StepInbox, run_progress
from service.progress import format_progress
from tests.helpers import make_job
from workers.inference.job import WindowSpec
from workers.inference.run import InferenceRun, pyramid_serially
from workers.inference.tasks import run_block

INFO = ModelInfo(1, 1, "sha-of-the-test-model")


@pytest.fixture
def run(tmp_path: Path) -> InferenceRun:
    data = np.random.default_rng(1).random((16, 24, 24), dtype=np.float32)
    zarr.open_group(tmp_path / "in.zarr", mode="w").create_array("raw", data=data, chunks=(8, 8, 8))
    window = WindowSpec((5, 7, 7), (3, 4, 4), "gaussian", batch_size=4)
    return InferenceRun.start(
        make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, block_shape=(8, 8, 8)), INFO
    )


def doubled(batch: np.ndarray) -> np.ndarray:
    return batch * 2.0


def events_of(phase: int, block: tuple[int, ...], total: int) -> list[tuple[float, dict[str, Any]]]:
    """What a task's worker sends: its count after each step, as Dask hands events to a subscriber."""
    return [(float(n), {"block": list(block), "phase": phase, "done": n}) for n in range(1, total + 1)]


def test_a_retried_block_never_pushes_done_past_total(run: InferenceRun) -> None:
    """Every task's events arrive twice (its worker was lost and Dask ran it again) and once more
    after the task ended; the count never passes the total and ends exactly on it."""
    inbox, steps = StepInbox(), run.counts()
    while (task := run.next_task()) is not None:
        total = (
            len(list(run.plan.windows(task.block)))
            if task.phase == 1
            else len(run.plan.border_chunks(task.block))
        )
        events = events_of(task.phase, task.block, total)
        for event in events[: total // 2] + events + events:
            inbox(event)
        inbox((0.0, {"something": "else"}))  # another shape of event is ignored
        inbox.fold_into(run)
        assert run.counts().done <= steps.total
        run.finished(task, run_block(task, predict=doubled))
        for event in events:  # late news
            inbox(event)
        assert not inbox.fold_into(run)
    pyramid_serially(run)  # the stage after the blocks: its chunks are steps too
    final = run.counts()
    assert final.done == final.total == steps.total and final.pyramid_done == final.pyramid_total > 0
    assert final.windows_done == run.plan.grid.count
    assert final.chunks_done == sum(len(run.plan.border_chunks(b)) for b in run.plan.blocks())


def test_events_move_the_count_while_a_task_runs(run: InferenceRun) -> None:
    inbox = StepInbox()
    task = run.next_task()
    assert task is not None and task.phase == 1
    inbox((0.0, {"block": list(task.block), "phase": 1, "done": 3}))
    assert inbox.fold_into(run) and run.counts().windows_done == 3
    inbox.close()
    inbox((0.0, {"block": list(task.block), "phase": 1, "done": 4}))  # after the run: dropped
    assert not inbox.fold_into(run) and run.counts().windows_done == 3


def test_the_service_stores_steps_with_the_parts_and_the_line_shows_them(run: InferenceRun) -> None:
    counts = run.counts()
    record = run_progress(run).to_json()
    assert record["unit"] == "steps" and record["done"] == 0
    assert record["total"] == counts.windows_total + counts.chunks_total + counts.pyramid_total
    assert record["parts"]["pyramid"] == [0, counts.pyramid_total] and counts.pyramid_total > 0
    assert record["windows_total"] == counts.windows_total and record["chunks_total"] == counts.chunks_total
    assert record["blocks_done"] == 0 and record["blocks_total"] == run.plan.n_blocks
    assert record["voxels_total"] == 16 * 24 * 24
    assert record["parts"]["windows"] == [0, counts.windows_total]
    text = format_progress(run_progress(run))
    assert (
        f"windows 0/{counts.windows_total}  chunks 0/{counts.chunks_total}  blocks 0/{run.plan.n_blocks}"
        in text
    )


def test_reports_are_paced_with_a_heartbeat() -> None:
    now = [0.0]
    pace = ReportPace(lambda: now[0])
    now[0] = REPORT_MIN_S / 2
    assert not pace.due(moved=True)  # moved, but too soon after the first report
    assert not pace.due()
    now[0] = REPORT_MIN_S
    assert pace.due()  # the move is still owed
    assert pace.due(ended=True)  # a task's end at once
    assert not pace.due()
    now[0] = 0.0
    pace = ReportPace(lambda: now[0])  # nothing moves from here on; the driver wakes every 0.5 s
    reports = []
    for tick in range(1, 31):
        now[0] = tick * 0.5
        if pace.due():
            reports.append(now[0])
    assert reports == [HEARTBEAT_S, 2 * HEARTBEAT_S, 3 * HEARTBEAT_S]
