"""The segmentation run's folder: done markers, one small file per (step, block), and the cancel flag.

Under ``<output.path>/.pytc-run/<dataset, percent-encoded>/<layout_key>/`` (the inference run's
place, :meth:`workers.inference.rundir.RunDir.all_for_dataset`)::

    done/p<step>_<z>_<y>_<x>.json    the step of that block finished (its files written first)
    CANCELLED                        a cancel request every worker sees

A marker is written by the task, only after what it vouches for is on disk, by an atomic rename.
A segmentation job has a few steps per block (3, or 5 with a dilation), so a file per marker stays
a small number next to the block's own files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volumes.files import atomic_write
from workers.inference.rundir import RunDir
from workers.runtime.cancel import CancelFlag

Index = tuple[int, ...]


def _name(index: Index) -> str:
    return "_".join(str(i) for i in index)


@dataclass(frozen=True)
class SegRunDir(CancelFlag):
    root: Path

    @classmethod
    def for_output(cls, output_path: str, dataset: str, layout_key: str) -> SegRunDir:
        return cls(RunDir.all_for_dataset(output_path, dataset) / layout_key)

    def marker(self, step: int, block: Index) -> Path:
        return self.root / "done" / f"p{step}_{_name(block)}.json"

    def is_done(self, step: int, block: Index) -> bool:
        return self.marker(step, block).exists()

    def mark_done(self, step: int, block: Index, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        atomic_write(self.marker(step, block), lambda h: h.write(data))

    def done_blocks(self, step: int) -> set[Index]:
        folder = self.root / "done"
        if not folder.is_dir():
            return set()
        prefix = f"p{step}_"
        return {
            tuple(int(p) for p in f.stem[len(prefix) :].split("_")) for f in folder.glob(f"{prefix}*.json")
        }

    @property
    def cancel_flag(self) -> Path:
        return self.root / "CANCELLED"
