"""The contingency table of two label volumes: how many voxels carry each (ground truth, prediction)
pair of ids. Every metric of :mod:`volumes.metrics.scores` is a function of it, and it adds up:

    table(whole volume) == merge(table(block) for block in any partition of the volume)

so a volume of any size is scored block by block (:mod:`volumes.metrics.blockwise`), holding one
entry per distinct pair of ids that occur together, never one per voxel. Counts are integers, so
the merged table is *exactly* the whole volume's table, whatever the blocks.

Ids are uint64; 0 is background in both volumes (the metrics decide what it means). The pairs are
kept sorted by (gt, pred), each pair once, its count > 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

_LOW32 = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True, eq=False)
class ContingencyTable:
    """Pairs ``(gt[k], pred[k])`` seen on ``count[k]`` voxels; sorted by (gt, pred), unique."""

    gt: np.ndarray  # uint64
    pred: np.ndarray  # uint64
    count: np.ndarray  # int64, > 0

    @property
    def voxels(self) -> int:
        return int(self.count.sum())

    @property
    def pairs(self) -> int:
        return len(self.count)

    @property
    def nbytes(self) -> int:
        return int(self.gt.nbytes + self.pred.nbytes + self.count.nbytes)

    def gt_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each ground-truth id (ascending) and its voxel count, background included."""
        return _group_sum(self.gt, self.count)

    def pred_sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each predicted id (ascending) and its voxel count, background included."""
        return _group_sum(self.pred, self.count)

    def equals(self, other: ContingencyTable) -> bool:
        return (
            np.array_equal(self.gt, other.gt)
            and np.array_equal(self.pred, other.pred)
            and np.array_equal(self.count, other.count)
        )


def empty_table() -> ContingencyTable:
    return ContingencyTable(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))


def table_of(gt: np.ndarray, pred: np.ndarray) -> ContingencyTable:
    """The table of two label arrays of one shape (non-negative integers or booleans).

    Voxels that are background in both are counted apart (they are most of a mitochondria volume)
    and only the rest is sorted."""
    if gt.shape != pred.shape:
        raise ValueError(f"the label arrays differ in shape: {gt.shape} and {pred.shape}")
    g = np.ravel(gt).astype(np.uint64, copy=False)
    p = np.ravel(pred).astype(np.uint64, copy=False)
    keep = (g | p) != 0
    both_background = g.size - int(np.count_nonzero(keep))
    g, p = (g[keep], p[keep]) if both_background else (g, p)
    table = _count_pairs(g, p)
    if both_background:
        table = ContingencyTable(
            np.concatenate([np.zeros(1, np.uint64), table.gt]),
            np.concatenate([np.zeros(1, np.uint64), table.pred]),
            np.concatenate([np.array([both_background], np.int64), table.count]),
        )
    return table


def merge_tables(tables: Iterable[ContingencyTable]) -> ContingencyTable:
    """One table holding the sums of ``tables`` (the table of the union of their voxels)."""
    parts = list(tables)
    if not parts:
        return empty_table()
    if len(parts) == 1:
        return parts[0]
    g = np.concatenate([t.gt for t in parts])
    p = np.concatenate([t.pred for t in parts])
    c = np.concatenate([t.count for t in parts])
    return _reduce_pairs(g, p, c)


def _reduce_pairs(g: np.ndarray, p: np.ndarray, c: np.ndarray) -> ContingencyTable:
    """Pairs sorted by (g, p), each once with its summed count."""
    order = np.lexsort((p, g))
    g, p, c = g[order], p[order], c[order]
    starts = _run_starts(g, p)
    return ContingencyTable(g[starts], p[starts], np.add.reduceat(c, starts) if len(c) else c)


class TableMerger:
    """Tables added one at a time, merged in batches: a batch is merged once it holds as many pairs
    as the sum so far, so each pair is merged O(log blocks) times and memory stays within a small
    multiple of the merged table."""

    def __init__(self) -> None:
        self._merged = empty_table()
        self._pending: list[ContingencyTable] = []
        self._pending_pairs = 0

    def add(self, table: ContingencyTable) -> None:
        self._pending.append(table)
        self._pending_pairs += table.pairs
        if self._pending_pairs >= max(self._merged.pairs, 1 << 16):
            self._flush()

    def result(self) -> ContingencyTable:
        self._flush()
        return self._merged

    def _flush(self) -> None:
        if self._pending:
            self._merged = merge_tables([self._merged, *self._pending])
            self._pending, self._pending_pairs = [], 0


def _count_pairs(g: np.ndarray, p: np.ndarray) -> ContingencyTable:
    if g.size == 0:
        return empty_table()
    if int(g.max()) <= 0xFFFFFFFF and int(p.max()) <= 0xFFFFFFFF:
        # One key per voxel, (gt << 32) | pred, sorted once: the order of (gt, pred).
        keys, counts = np.unique((g << np.uint64(32)) | p, return_counts=True)
        return ContingencyTable(keys >> np.uint64(32), keys & _LOW32, counts.astype(np.int64))
    return _reduce_pairs(g, p, np.ones(g.size, np.int64))


def _run_starts(g: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Where each run of equal (g, p) begins in sorted arrays."""
    if g.size == 0:
        return np.zeros(0, np.intp)
    changed = np.empty(g.size, bool)
    changed[0] = True
    changed[1:] = (g[1:] != g[:-1]) | (p[1:] != p[:-1])
    return np.flatnonzero(changed)


def _group_sum(ids: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct id (ascending) and the sum of its counts, in exact integers."""
    if ids.size == 0:
        return ids[:0], count[:0]
    order = np.argsort(ids, kind="stable")
    ids, count = ids[order], count[order]
    starts = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1]]))
    return ids[starts], np.add.reduceat(count, starts)
