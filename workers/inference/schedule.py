"""Which block task comes next, in time per task that does not depend on the job's size.

Pass 1 runs in block order. A block's pass 2 waits for the pass 1 of every block whose partial sums
reach its border chunks (its *sources*, itself included); a source's spill file (one per block,
``workers.inference.spill``) lives until every block reading it (its *consumers*) finished pass 2.
Both relations are per-axis products (blocks, chunks and contributors are: ``volumes.blocks``), so
they are kept as per-axis tables, never as per-block or per-chunk lists::

    sources(b)   = U_z(b_z) x U_y(b_y) x U_x(b_x)   U_a(k): contributors of k's chunks on axis a, and k
    consumers(s) = R_z(s_z) x R_y(s_y) x R_x(s_x)   R_a(s) = {k : s in U_a(k)}

The driver keeps two counters per block: ``waiting[b]``, the sources of ``b`` whose pass 1 has not
finished (pass 2 of ``b`` is ready at 0), and ``readers[s]``, the consumers of ``s`` whose pass 2 has
not (its spill file is dropped at 0). A finished task touches its own few neighbours: a few
microseconds whether the job has a thousand blocks or a million. At start, both counters come from
the done record by one separable sum per axis (numpy), in time linear in the blocks; lost spill
files are found by one listing of the scratch folder, never a look at each chunk.

Using the per-axis union of contributors over all of a block's chunks can only add sources that a
chunk of the block does not need (a block's own interior chunks have it alone as contributor, and a
block is always its own source), so a pass 2 may wait longer than it must in odd geometries, never
less; and a spill file is kept until every block that might read it finished.
"""

from __future__ import annotations

import array
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from volumes.blocks import AxisLayout, BlockPlan, Index
from workers.inference.ledger import Ledger, linear, unlinear

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AxisTables:
    """One axis of the dependency tables (see the module docstring)."""

    sources: tuple[tuple[int, ...], ...]  # U_a(k)
    consumers: tuple[tuple[int, ...], ...]  # R_a(s)
    border: tuple[bool, ...]  # a chunk of k's write range has another contributor than k
    spills: tuple[bool, ...]  # k's extent touches a chunk with another contributor than its owner
    empty: tuple[bool, ...]  # k owns no window along this axis

    @classmethod
    def of(cls, axis: AxisLayout) -> AxisTables:
        n = axis.n_blocks
        interior = [axis.contributors[j] == (axis.owner_of_chunk(j),) for j in range(axis.n_chunks)]
        sources, border, spills, empty = [], [], [], []
        for k in range(n):
            own = axis.chunks_in(*axis.write_range(k))
            found = {k}
            for j in own:
                found.update(axis.contributors[j])
            sources.append(tuple(sorted(found)))
            border.append(any(not interior[j] for j in own))
            touched = axis.chunks_in(*axis.extent(k))
            spills.append(any(not interior[j] for j in touched))
            empty.append(len(touched) == 0)
        consumers: list[list[int]] = [[] for _ in range(n)]
        for k, found_k in enumerate(sources):
            for s in found_k:
                consumers[s].append(k)
        return cls(
            tuple(sources), tuple(tuple(c) for c in consumers), tuple(border), tuple(spills), tuple(empty)
        )


def neighbour_sum(values: np.ndarray, tables: list[tuple[tuple[int, ...], ...]]) -> np.ndarray:
    """``out[b] = sum(values[s] for s in T_0(b_0) x T_1(b_1) x ...)``, one axis at a time (the
    neighbourhood is a product, so the sum is separable); each axis is a few shifted adds."""
    out = values.astype(np.int32)  # counts of neighbours: small
    for axis, table in enumerate(tables):
        n = len(table)
        offsets: dict[int, np.ndarray] = {}
        for k, members in enumerate(table):
            for s in members:
                offsets.setdefault(s - k, np.zeros(n, dtype=bool))[k] = True
        shape = [1] * out.ndim
        shape[axis] = n
        total = np.zeros_like(out)
        for d, mask in offsets.items():
            index = np.clip(np.arange(n) + d, 0, n - 1)
            total += np.take(out, index, axis=axis) * mask.reshape(shape)
        out = total
    return out


def _outer(
    flags: list[tuple[bool, ...]], combine: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> np.ndarray:
    out = np.asarray(flags[0], dtype=bool)
    for f in flags[1:]:
        out = combine(out[..., None], np.asarray(f, dtype=bool))
    return out


class Schedule:
    """Pass 1 in block order, pass 2 once its sources' pass 1 finished; the done record kept."""

    def __init__(self, plan: BlockPlan, ledger: Ledger, spill_files: np.ndarray | None = None) -> None:
        """``spill_files``: which blocks have a spill file on disk (bool, one per block), to find
        the partial sums a previous run recorded but which are gone."""
        self.plan, self.ledger = plan, ledger
        self.counts = plan.block_counts
        self.tables = [AxisTables.of(a) for a in plan.axes]
        strides = [int(np.prod(self.counts[a + 1 :], dtype=np.int64)) for a in range(len(self.counts))]
        self._sources = [
            [tuple(s * st for s in t) for t in tab.sources]
            for tab, st in zip(self.tables, strides, strict=True)
        ]
        self._consumers = [
            [tuple(s * st for s in t) for t in tab.consumers]
            for tab, st in zip(self.tables, strides, strict=True)
        ]
        shape = self.counts
        border = _outer([t.border for t in self.tables], np.logical_or).reshape(-1)
        empty = _outer([t.empty for t in self.tables], np.logical_or)
        spills = (_outer([t.spills for t in self.tables], np.logical_or) & ~empty).reshape(-1)
        p1 = np.frombuffer(ledger.p1, dtype=np.uint8).astype(bool)
        p2 = np.frombuffer(ledger.p2, dtype=np.uint8).astype(bool)
        # a block without border chunks is done with its pass 1
        newly = p1 & ~border & ~p2
        for i in np.flatnonzero(newly).tolist():
            ledger.record(2, i)
        p2 |= newly
        readers = neighbour_sum((border & ~p2).reshape(shape), [t.consumers for t in self.tables]).reshape(-1)
        self.lost: list[int] = []
        if spill_files is not None:
            lost = p1 & spills & (readers > 0) & ~spill_files
            self.lost = np.flatnonzero(lost).tolist()
            if self.lost:
                log.warning("recomputing pass 1 of %d blocks whose partial sums are missing", len(self.lost))
                ledger.forget(1, self.lost)
                p1 &= ~lost
            self.orphans = np.flatnonzero(spill_files & (readers == 0)).tolist()
        else:
            self.orphans = []
        waiting = neighbour_sum((~p1).reshape(shape), [t.sources for t in self.tables]).reshape(-1)
        self.border = bytearray(border.astype(np.uint8).tobytes())
        self.spills = bytearray(spills.astype(np.uint8).tobytes())
        # 4 bytes a block each (a list would take 8 and more): a million blocks hold 20 MB in all
        self.waiting = array.array("i", waiting.astype(np.int32).tobytes())
        self.readers = array.array("i", readers.astype(np.int32).tobytes())
        self._pass1 = np.flatnonzero(~p1)  # handed out in this order, from a cursor
        self._next1 = 0
        self.ready = collections.deque(np.flatnonzero(border & p1 & ~p2 & (waiting == 0)).tolist())
        self.in_flight = 0
        self.dropped: list[int] = []  # spill files no block reads any more, for the run to delete

    # --- per task --------------------------------------------------------------------------------

    def index(self, block: Index) -> int:
        return linear(block, self.counts)

    def block(self, index: int) -> Index:
        return unlinear(index, self.counts)

    def _around(self, tables: list[list[tuple[int, ...]]], index: int) -> list[int]:
        if len(tables) == 3:
            _, ny, nx = self.counts
            rest, x = divmod(index, nx)
            z, y = divmod(rest, ny)
            return [a + b + c for a in tables[0][z] for b in tables[1][y] for c in tables[2][x]]
        out = [0]
        for table, k in zip(tables, self.block(index), strict=True):
            out = [o + t for o in out for t in table[k]]
        return out

    def next_step(self) -> tuple[int, int] | None:
        if self.ready:
            self.in_flight += 1
            return 2, self.ready.popleft()
        if self._next1 < len(self._pass1):
            self.in_flight += 1
            self._next1 += 1
            return 1, int(self._pass1[self._next1 - 1])
        return None

    @property
    def pass1(self) -> list[int]:
        """The pass-1 tasks not handed out yet, in order."""
        return self._pass1[self._next1 :].tolist()

    def finished(self, phase: int, index: int) -> None:
        """A task ended; recorded (on disk at the ledger's next flush)."""
        self.in_flight -= 1
        ledger = self.ledger
        if phase == 1:
            if ledger.p1[index]:
                return
            ledger.record(1, index)
            if not self.border[index] and not ledger.p2[index]:
                ledger.record(2, index)
            waiting, ready, border, p2 = self.waiting, self.ready, self.border, ledger.p2
            for c in self._around(self._consumers, index):
                waiting[c] -= 1
                if waiting[c] == 0 and border[c] and not p2[c]:
                    ready.append(c)
            if self.spills[index] and self.readers[index] == 0:
                self.dropped.append(index)  # every reader finished before (a recomputed pass 1)
        else:
            if ledger.p2[index]:
                return
            ledger.record(2, index)
            readers, spills, p1 = self.readers, self.spills, ledger.p1
            for s in self._around(self._sources, index):
                readers[s] -= 1
                if readers[s] == 0 and spills[s] and p1[s]:
                    self.dropped.append(s)

    def idle(self) -> bool:
        return not self.ready and self._next1 >= len(self._pass1) and self.in_flight == 0

    def take_dropped(self) -> list[int]:
        dropped, self.dropped = self.dropped, []
        return dropped
