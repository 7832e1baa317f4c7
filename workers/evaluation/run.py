"""The driver of an evaluation: the blocks of the volume, grouped a few to a task, on a Dask client
with a bounded number in flight, their tables merged as they come back
(:class:`volumes.metrics.table.TableMerger`: memory within a small multiple of the merged table);
or the same blocks one after the other in this process (:func:`evaluate_serially`, what
``pytc evaluate`` does without a cluster). Both give the same figures: the tables are exact integer
counts and their sum does not depend on the grouping or the order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from volumes.box import Box
from volumes.metrics.blockwise import block_boxes, block_shape_for, region_of, table_of_box
from volumes.metrics.scores import Scores, score_table
from volumes.metrics.table import TableMerger
from workers.errors import BlockCancelledError
from workers.evaluation.job import EvaluationJob
from workers.evaluation.tasks import open_pair, table_task

if TYPE_CHECKING:
    from distributed import Client

Progress = Callable[[int, int], None]  # (blocks done, blocks in all)
IN_FLIGHT_PER_THREAD = 2


@dataclass(frozen=True)
class Plan:
    shape: tuple[int, int, int]
    block_shape: tuple[int, ...]
    boxes: tuple[Box, ...]


def plan(job: EvaluationJob) -> Plan:
    """The blocks of the job (opening both volumes, which checks them)."""
    seg, _, shape = open_pair(job)
    region = region_of(shape, job.roi)
    block = job.block_shape or block_shape_for(region.shape, seg.chunks)
    return Plan(shape, block, tuple(block_boxes(region.shape, block, region.offset)))


def evaluate_serially(
    job: EvaluationJob, on_progress: Progress | None = None, stop: Callable[[], bool] | None = None
) -> Scores:
    """Every block in this process, one after the other."""
    p = plan(job)
    seg, gt, _ = open_pair(job)
    merger = TableMerger()
    for done, box in enumerate(p.boxes, start=1):
        if stop is not None and stop():
            raise BlockCancelledError(f"cancelled after {done - 1} of {len(p.boxes)} blocks")
        merger.add(table_of_box(seg, gt, box))
        if on_progress is not None:
            on_progress(done, len(p.boxes))
    return score_table(merger.result(), job.metrics)


def evaluate_on_client(
    job: EvaluationJob,
    client: Client,
    *,
    on_progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
    retries: int = 2,
    priority: int = 0,
) -> Scores:
    """The blocks as Dask tasks (``job.blocks_per_task`` each), a few in flight per worker thread."""
    from distributed import as_completed

    p = plan(job)
    groups = [p.boxes[i : i + job.blocks_per_task] for i in range(0, len(p.boxes), job.blocks_per_task)]
    threads = max(1, sum(client.nthreads().values()))
    attempt = uuid.uuid4().hex[:8]
    pending = iter(enumerate(groups))
    merger, done = TableMerger(), 0

    blocks_of: dict[str, int] = {}  # a task's key: how many blocks it counts

    def submit(index: int, boxes: tuple[Box, ...]) -> object:
        key = f"pytc-eval-{attempt}-{index}"
        blocks_of[key] = len(boxes)
        return client.submit(table_task, job, boxes, key=key, retries=retries, priority=priority)

    running = as_completed([submit(i, g) for i, g in _take(pending, IN_FLIGHT_PER_THREAD * threads)])
    try:
        for future in running:
            if stop is not None and stop():
                raise BlockCancelledError(f"cancelled after {done} of {len(p.boxes)} blocks")
            merger.add(future.result())  # a task's error is raised here, naming its path
            done += blocks_of.pop(future.key)
            for i, g in _take(pending, 1):
                running.add(submit(i, g))
            if on_progress is not None:
                on_progress(done, len(p.boxes))
    except BaseException:
        client.cancel(list(running.futures))  # what is still in flight is of no use any more
        raise
    return score_table(merger.result(), job.metrics)


def _take(items: Iterator[tuple[int, tuple[Box, ...]]], n: int) -> list[tuple[int, tuple[Box, ...]]]:
    taken = []
    for _ in range(n):
        item = next(items, None)
        if item is None:
            break
        taken.append(item)
    return taken
