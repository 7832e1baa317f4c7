"""The checkpoint folder of a training job and the job's small durable records beside it.

Layout under ``checkpoint.dir``::

    checkpoint_00500.pth.tar           PyTC's names; each records the job key of the run that wrote it
    .pytc-train/<job_key>/progress.json   iteration, loss, lr, it/s, validation (atomically replaced)
    .pytc-train/<job_key>/checkpoints.json  iterations this job saved (what pruning may delete)
    .pytc-train/<job_key>/CANCELLED        the cancel flag, checked by the task every iteration

Futures cannot stream progress and die with their client, so the task writes progress here and the
driver (``pytc run``, the service) polls it. No torch here: the control plane reads these records.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from volumes.errors import VolumeFormatError
from volumes.files import read_json, write_json_atomic
from workers.runtime.cancel import CancelFlag

RUN_FOLDER = ".pytc-train"
CHECKPOINT_NAME = "checkpoint_{:05d}.pth.tar"
_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pth\.tar$")

logger = logging.getLogger(__name__)


def _read_record(path: Path) -> Any | None:
    """The JSON in ``path``; None when it is missing or cannot be read (logged): these records are
    progress and bookkeeping, and a broken one must not stop the run that reads it."""
    try:
        return read_json(path)
    except VolumeFormatError as err:
        logger.warning("%s; treating it as absent", err)  # err names the file
        return None


@dataclass(frozen=True)
class TrainingDir(CancelFlag):
    root: Path  # checkpoint.dir
    job_key: str

    @property
    def run(self) -> Path:
        return self.root / RUN_FOLDER / self.job_key

    def checkpoint_path(self, iteration: int) -> Path:
        return self.root / CHECKPOINT_NAME.format(iteration)

    def checkpoints(self) -> list[tuple[int, Path]]:
        """Every ``checkpoint_NNNNN.pth.tar`` in the folder (any job's), oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if (m := _CHECKPOINT_RE.match(p.name))]
        return sorted(found)

    # --- which checkpoints this job wrote ---------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.run / "checkpoints.json"

    def own_iterations(self) -> list[int]:
        record = _read_record(self.index_path)
        return sorted(int(i) for i in record) if isinstance(record, list) else []

    def record_checkpoint(self, iteration: int) -> None:
        write_json_atomic(self.index_path, sorted({*self.own_iterations(), iteration}))

    def prune(self, keep_last: int, keep: set[int]) -> list[Path]:
        """Delete this job's checkpoints but the newest ``keep_last`` and those in ``keep``."""
        own = self.own_iterations()
        doomed = [i for i in own[: max(0, len(own) - keep_last)] if i not in keep]
        removed = []
        for iteration in doomed:
            path = self.checkpoint_path(iteration)
            path.unlink(missing_ok=True)
            removed.append(path)
        if doomed:
            write_json_atomic(self.index_path, [i for i in own if i not in doomed])
        return removed

    # --- progress -----------------------------------------------------------------------------------

    @property
    def progress_path(self) -> Path:
        return self.run / "progress.json"

    def write_progress(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.progress_path, {**record, "job_key": self.job_key, "updated_at": time.time()})

    def read_progress(self) -> dict[str, Any] | None:
        record = _read_record(self.progress_path)
        return record if isinstance(record, dict) else None

    # --- cancel ---------------------------------------------------------------------------------

    @property
    def cancel_flag(self) -> Path:
        return self.run / "CANCELLED"
