"""The segmentation run's folder: its done record (the inference engine's two-file ledger) and the
cancel flag.

Under ``<output.path>/.pytc-run/<dataset, percent-encoded>/<layout_key>/`` (the inference run's
place, :meth:`workers.inference.rundir.RunDir.all_for_dataset`)::

    done/done.snap, done/done.log    which (step, block) finished: :mod:`workers.inference.ledger`
    CANCELLED                        a cancel request every worker sees

The record is written by the driver alone (``pytc run``'s loop or the service's), after a step's
task returned, so only over files on disk; the tasks never write it. Each step has a slot of one
bit per block in the ledger (a merge: one bit): two files per run whatever its size, where a file
per (step, block) used to be. A driver killed before a record reached the log runs that step again
on resume; every step rewrites its own files whole, so the result is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.inference.ledger import Ledger, linear, unlinear
from workers.inference.rundir import RunDir
from workers.runtime.cancel import CancelFlag

Index = tuple[int, ...]
# The ledger's slot of each step (workers.segmentation.steps: LABEL, LINK, RANK, DILATE, WRITE,
# then the merges NUMBER and SIZES, one block each; affinity_agglomerate's EDGES and AGGLOMERATE).
SLOTS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 4, 10: 5, 11: 6, 6: 7, 12: 8}


@dataclass(frozen=True)
class SegRunDir(CancelFlag):
    root: Path

    @classmethod
    def for_output(cls, output_path: str, dataset: str, layout_key: str) -> SegRunDir:
        return cls(RunDir.all_for_dataset(output_path, dataset) / layout_key)

    def ledger(self, counts: tuple[int, ...]) -> SegLedger:
        """The done record as the runs before left it, for a grid of ``counts`` blocks."""
        n = int(np.prod(counts, dtype=np.int64))
        return SegLedger(Ledger.open(self.root / "done", len(SLOTS) * n), tuple(counts), n)

    @property
    def cancel_flag(self) -> Path:
        return self.root / "CANCELLED"


class SegLedger:
    """Which (step, block) finished, in the driver's memory and in the ledger's two files."""

    def __init__(self, ledger: Ledger, counts: tuple[int, ...], n_blocks: int) -> None:
        self.ledger, self.counts, self.n_blocks = ledger, counts, n_blocks

    def _index(self, step: int, block: Index) -> int:
        return SLOTS[step] * self.n_blocks + linear(block, self.counts)

    def is_done(self, step: int, block: Index) -> bool:
        return bool(self.ledger.p1[self._index(step, block)])

    def record(self, step: int, block: Index) -> None:
        """(``step``, ``block``) finished: appended to the log now (one write; fsynced every few
        seconds and at close), so a driver killed afterwards does not run it again."""
        self.ledger.record(1, self._index(step, block))
        self.ledger.flush()

    def done_blocks(self, step: int) -> set[Index]:
        start = SLOTS[step] * self.n_blocks
        bits = np.frombuffer(bytes(self.ledger.p1[start : start + self.n_blocks]), dtype=np.uint8)
        return {unlinear(int(i), self.counts) for i in np.flatnonzero(bits)}

    def forget(self, step: int, block: Index) -> None:
        """Un-record one step of one block, durably (tests)."""
        self.ledger.forget(1, [self._index(step, block)])

    def close(self) -> None:
        self.ledger.close()
