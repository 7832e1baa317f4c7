"""An inference run's progress in *steps*, the unit of work as it happens.

One step is one window computed in pass 1 (all its TTA variants together) or one border chunk
finished in pass 2. A job has ``windows + border chunks`` steps::

    pass 1 of block b: |w|w|w|w|w|w|w|w|     one step per window b owns, counted after every batch
    pass 2 of block b: |c|c|c|                one step per border chunk of b, counted per chunk

Blocks are a per-axis product, and so are their windows, their chunks and their interior chunks,
so every count here comes from per-axis tables: a block's figures in time linear in the axes, a
job's totals as products of per-axis sums, never a loop over chunk pairs.

:class:`StepTally` folds what running tasks report (a count that only grows, per block and pass)
into a run's figures. A report may arrive twice, late, or from a task that Dask ran again after a
lost worker: each (block, pass) counts the highest figure it reported, at most its own total, and
a finished one counts exactly its total whatever came before or after.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volumes.blocks import BlockPlan, Index

# The hook a block pass reports through: the steps it has finished so far (windows in pass 1,
# chunks in pass 2), a count that only grows.
StepHook = Callable[[int], None]


def no_steps(done: int) -> None:
    """The default hook: nobody listens."""


@dataclass(frozen=True)
class StepCounts:
    """A run's figures: steps (windows and pass-2 chunks), and the blocks and voxels finished."""

    windows_done: int
    windows_total: int
    chunks_done: int
    chunks_total: int
    blocks_done: int
    blocks_total: int
    voxels_done: int
    voxels_total: int

    @property
    def done(self) -> int:
        return self.windows_done + self.chunks_done

    @property
    def total(self) -> int:
        return self.windows_total + self.chunks_total


class BlockSteps:
    """How many windows and pass-2 chunks each block has, from per-axis tables."""

    def __init__(self, plan: BlockPlan) -> None:
        self.plan = plan
        self._windows: list[tuple[int, ...]] = []  # per axis, per block index: windows owned
        self._chunks: list[tuple[int, ...]] = []  # per axis, per block index: chunks in its write range
        self._interior: list[tuple[int, ...]] = []  # ... of which only this block's extent touches
        for axis in plan.axes:
            owned = Counter(axis.owner)
            self._windows.append(tuple(owned[k] for k in range(axis.n_blocks)))
            chunks, interior = [], []
            for k in range(axis.n_blocks):
                own = axis.chunks_in(*axis.write_range(k))
                chunks.append(len(own))
                interior.append(sum(1 for j in own if axis.contributors[j] == (k,)))
            self._chunks.append(tuple(chunks))
            self._interior.append(tuple(interior))

    def windows(self, block: Index) -> int:
        return math.prod(table[k] for table, k in zip(self._windows, block, strict=True))

    def chunks(self, block: Index) -> int:
        """The block's border chunks (finished in its pass 2): its chunks less its interior ones."""
        every = math.prod(table[k] for table, k in zip(self._chunks, block, strict=True))
        return every - math.prod(table[k] for table, k in zip(self._interior, block, strict=True))

    def of(self, phase: int, block: Index) -> int:
        return self.windows(block) if phase == 1 else self.chunks(block)

    def total_over(self, phase: int, mask: np.ndarray) -> int:
        """The steps of ``phase`` of every block where ``mask`` (shaped like the block grid) is
        true: a sum of per-axis products, with numpy (a resume of a million blocks)."""
        mask = mask.astype(np.int64)

        def over(tables: list[tuple[int, ...]]) -> int:
            out = mask
            for table in reversed(tables):  # contract the last axis first
                out = out @ np.asarray(table, dtype=np.int64)
            return int(out)

        if phase == 1:
            return over(self._windows)
        return over(self._chunks) - over(self._interior)

    @property
    def windows_total(self) -> int:
        return math.prod(sum(table) for table in self._windows)

    @property
    def chunks_total(self) -> int:
        """Every chunk of the output less the interior ones (a sum over blocks of a per-axis product
        is the product of the per-axis sums)."""
        return math.prod(sum(t) for t in self._chunks) - math.prod(sum(t) for t in self._interior)


class StepTally:
    """The steps a run has done: exact for finished (block, pass)es, the highest count reported by
    running ones. ``is_finished(phase, block)`` is the run's own record of what is finished (no
    second copy of it here: a run may have a million blocks); the run calls :meth:`finished` once
    for each (block, pass) it records, those finished by an earlier run (a resume) included."""

    def __init__(self, steps: BlockSteps, is_finished: Callable[[int, Index], bool]) -> None:
        self.steps, self.is_finished = steps, is_finished
        self._done = {1: 0, 2: 0}  # finished (block, pass)es, by pass
        self._running: dict[tuple[int, Index], int] = {}
        self._partial = {1: 0, 2: 0}  # the sum of ``_running``, by pass

    def report(self, phase: int, block: Index, done: int) -> bool:
        """A running task says it has ``done`` steps; True when that moved the tally."""
        if self.is_finished(phase, block):
            return False  # late news of a task already counted in full
        key = (phase, block)
        before = self._running.get(key, 0)
        now = min(max(before, int(done)), self.steps.of(phase, block))
        if now == before:
            return False
        self._running[key] = now
        self._partial[phase] += now - before
        return True

    def preset(self, phase: int, steps: int) -> None:
        """Steps of (block, pass)es finished before this run (a resume), counted once at start."""
        self._done[phase] += steps

    def finished(self, phase: int, block: Index) -> None:
        """(block, pass) ended: it counts its exact total from now on."""
        self._partial[phase] -= self._running.pop((phase, block), 0)
        self._done[phase] += self.steps.of(phase, block)

    @property
    def windows_done(self) -> int:
        return self._done[1] + self._partial[1]

    @property
    def chunks_done(self) -> int:
        return self._done[2] + self._partial[2]
