"""The pyramid stage of a job: an image's coarser levels, written out of core after level 0 is done.

The output image is created with all its levels (:func:`volumes.output.create_output`); level 0 is
the engine's. This stage then fills level ``k`` from level ``k - 1``, level after level, in tasks
of a few destination chunks each (:data:`TASK_CHUNKS` per axis), each chunk computed from the
source box under it (its factors times its extent) and written whole, so two tasks never write one
chunk and a task holds one chunk's source in memory whatever the volume's size::

    stage = PyramidStage(path, dataset, format, levels, "mean", markers, data_roots)
    while not stage.finished_all():
        task = stage.next_task()            # None: wait for the tasks in flight (a level's end)
        ... run_pyramid_task(task) anywhere ...
        stage.finished(task)
    stage.check()                           # every task's marker on disk, or IncompleteRunError

A task's done marker (``<markers>/l<level>_<z>_<y>_<x>.json``) is written, atomically and synced,
after its chunks; a stage started again (a killed job resumed) skips the tasks with markers. Labels
use ``mode`` or ``strided`` (:func:`volumes.pyramid.downsample_labels`), predictions ``mean``.
"""

from __future__ import annotations

import collections
import itertools
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from volumes.blocks import Index
from volumes.box import Box
from volumes.files import atomic_write
from volumes.open import open_volume
from volumes.output import level_path
from volumes.pyramid import Factors, PyramidMethod, downsample, level_shape
from volumes.volume import Volume
from workers.confine import ChunkFiles, confined, node
from workers.errors import IncompleteRunError

TASK_CHUNKS = (1, 2, 2)  # destination chunks per task along (z, y, x)


@dataclass(frozen=True)
class PyramidTask:
    """Fill the destination box ``block`` (in units of tasks) of level ``level`` from the level above."""

    path: str
    dataset: str
    format: str
    level: int
    step: Factors  # level ``level - 1`` to ``level``
    block: Index
    method: PyramidMethod
    markers: str
    data_roots: tuple[str, ...] = ()
    key: str = ""  # the Dask key's prefix of the run that hands it out

    @property
    def marker(self) -> Path:
        return Path(self.markers) / f"l{self.level}_{'_'.join(map(str, self.block))}.json"


class PyramidStage:
    """Which pyramid tasks come next: every task of a level once the level above is complete."""

    def __init__(
        self,
        path: str,
        dataset: str,
        format: str,
        levels: tuple[Factors, ...],
        chunks: tuple[int, int, int],
        shape: tuple[int, ...],
        method: PyramidMethod,
        markers: Path,
        data_roots: tuple[str, ...] = (),
        key: str = "",
    ) -> None:
        self.path, self.dataset, self.format, self.levels = path, dataset, format, levels
        self.method, self.markers, self.data_roots, self.key = method, markers, data_roots, key
        self._grids = [_task_grid(level_shape(shape[-3:], f), chunks) for f in levels]
        self._chunks = [_chunk_grid(level_shape(shape[-3:], f), chunks) for f in levels]
        self._level = 1
        self._queue: collections.deque[PyramidTask] = collections.deque()
        self._in_flight = 0
        self._started: float | None = None
        self.seconds = 0.0  # from the first task handed out to the last one finished, this run
        self.chunks_done = sum(self._chunks_of(t) for t in self.all_tasks() if t.marker.exists())
        self._fill()

    @property
    def chunks_total(self) -> int:
        """Destination chunks of every level but the first (the progress unit of this stage)."""
        return sum(_count(grid) for grid in self._chunks[1:])

    def all_tasks(self) -> Iterator[PyramidTask]:
        for level in range(1, len(self.levels)):
            yield from self._tasks(level)

    def _tasks(self, level: int) -> Iterator[PyramidTask]:
        step = _step(self.levels[level - 1], self.levels[level])
        for block in itertools.product(*(range(n) for n in self._grids[level])):
            yield PyramidTask(
                self.path, self.dataset, self.format, level, step, block, self.method,
                str(self.markers), self.data_roots, self.key,
            )  # fmt: skip

    def _chunks_of(self, task: PyramidTask) -> int:
        count = 1
        for b, n, per in zip(task.block, self._chunks[task.level], TASK_CHUNKS, strict=True):
            count *= min(per, n - b * per)
        return count

    def _fill(self) -> None:
        """Queue the next level's unfinished tasks once nothing of this one is left."""
        while not self._queue and self._in_flight == 0 and self._level < len(self.levels):
            self._queue.extend(t for t in self._tasks(self._level) if not t.marker.exists())
            self._level += 1

    def next_task(self) -> PyramidTask | None:
        if not self._queue:
            return None
        if self._started is None:
            self._started = time.perf_counter()
        self._in_flight += 1
        return self._queue.popleft()

    def finished(self, task: PyramidTask) -> None:
        self._in_flight -= 1
        self.chunks_done += self._chunks_of(task)
        self.seconds = time.perf_counter() - (self._started or time.perf_counter())
        self._fill()

    def finished_all(self) -> bool:
        return not self._queue and self._in_flight == 0 and self._level >= len(self.levels)

    def check(self) -> None:
        """Success only over a whole pyramid: every task's marker must be on disk."""
        missing = [t for t in self.all_tasks() if not t.marker.exists()]
        if missing:
            first = missing[0]
            raise IncompleteRunError(
                f"{len(missing)} pyramid tasks are not recorded done, first level {first.level} block "
                f"{first.block}; the output stays marked incomplete"
            )


class PyramidStages:
    """The pyramids of several images (affinity_agglomerate's thresholds) as one stage: tasks of any
    image, each image's levels in order (:class:`workers.pyramid.PyramidStage` each)."""

    def __init__(self, stages: list[PyramidStage], key: str) -> None:
        self.stages, self.key = stages, key
        self._of = {s.dataset: s for s in stages}

    @property
    def chunks_total(self) -> int:
        return sum(s.chunks_total for s in self.stages)

    @property
    def chunks_done(self) -> int:
        return sum(s.chunks_done for s in self.stages)

    @property
    def seconds(self) -> float:
        return max(s.seconds for s in self.stages)

    def next_task(self) -> PyramidTask | None:
        for stage in self.stages:
            task = stage.next_task()
            if task is not None:
                return task
        return None

    def finished(self, task: PyramidTask) -> None:
        self._of[task.dataset].finished(task)

    def finished_all(self) -> bool:
        return all(s.finished_all() for s in self.stages)

    def check(self) -> None:
        for stage in self.stages:
            stage.check()


def run_pyramid_task(task: PyramidTask) -> int:
    """Compute and write the chunks of ``task`` (one at a time), then its marker; the chunks written."""
    source = _open(task, task.level - 1, "r")
    target = _open(task, task.level, "r+")
    files = ChunkFiles.of(target) if task.data_roots else None
    spatial = target.chunks[-3:]
    written = 0
    for box in _chunk_boxes(task, tuple(target.shape[-3:]), spatial):
        src = _source_box(box, task.step, tuple(source.shape[-3:]))
        lead = source.shape[:-3]
        data = source.read(Box((*(0 for _ in lead), *src.offset), (*lead, *src.shape)))
        out = downsample(data, task.step, task.method, target.dtype)
        where = Box((*(0 for _ in lead), *box.offset), (*lead, *box.shape))
        if files is not None:
            for path in files.paths(where):
                confined(path, task.data_roots)
        target.write(where, out)
        written += 1
    confined(task.marker, task.data_roots)
    record = json.dumps({"level": task.level, "block": list(task.block), "chunks": written}).encode()
    atomic_write(task.marker, lambda h: h.write(record), durable=True)
    return written


def _open(task: PyramidTask, level: int, mode: str) -> Volume:
    dataset = level_path(task.format, task.dataset, level)
    confined(node(task.path, dataset), task.data_roots)
    return open_volume(task.path, dataset, mode="r+" if mode == "r+" else "r")


def _chunk_boxes(task: PyramidTask, shape: tuple[int, ...], chunks: tuple[int, ...]) -> Iterator[Box]:
    ranges = []
    for b, per, size, chunk in zip(task.block, TASK_CHUNKS, shape, chunks, strict=True):
        first = b * per
        ranges.append(range(first, min(first + per, -(-size // chunk))))
    for index in itertools.product(*ranges):
        start = [i * c for i, c in zip(index, chunks, strict=True)]
        end = [min(s + c, n) for s, c, n in zip(start, chunks, shape, strict=True)]
        yield Box(tuple(start), tuple(e - s for s, e in zip(start, end, strict=True)))


def _source_box(box: Box, step: Factors, shape: tuple[int, ...]) -> Box:
    start = [o * f for o, f in zip(box.offset, step, strict=True)]
    end = [min(e * f, n) for e, f, n in zip(box.end, step, shape, strict=True)]
    return Box(tuple(start), tuple(e - s for s, e in zip(start, end, strict=True)))


def _chunk_grid(shape: tuple[int, ...], chunks: tuple[int, int, int]) -> tuple[int, ...]:
    """Chunks per axis of a level (its stored chunk is ``chunks`` cut to its shape)."""
    return tuple(-(-s // min(c, s)) for s, c in zip(shape, chunks, strict=True))


def _task_grid(shape: tuple[int, ...], chunks: tuple[int, int, int]) -> tuple[int, ...]:
    return tuple(-(-n // per) for n, per in zip(_chunk_grid(shape, chunks), TASK_CHUNKS, strict=True))


def _count(grid: tuple[int, ...]) -> int:
    total = 1
    for n in grid:
        total *= n
    return total


def _step(coarse: Factors, fine: Factors) -> Factors:
    z, y, x = (b // a for a, b in zip(coarse, fine, strict=True))
    return z, y, x
