"""Durable per-job records on shared storage: the done record and the scratch of the block exchange.

Layout, under ``<output.path>/.pytc-run/<dataset, percent-encoded>/<layout_key>/``::

    done.snap, done.log          which blocks finished which pass (workers.inference.ledger)
    scratch/b<z>_<y>_<x>.spill   one block's partial sums for every chunk it shares (workers.inference.spill)
    CANCELLED                    a cancel request every worker sees

Only the driver writes the done record, after a task returned (so after its chunks and spill file
were written); workers write chunks and spill files. The key is the job's layout hash, so records
of another spec are never reused. A run folder holds two files and one spill file per block
waiting for its readers, whatever the number of chunks.

Scratch is float32 partial sums, compressed (:data:`SCRATCH_CODEC`: the ``.npy`` bytes, bit-shuffled
and zstd'ed by Blosc) and published atomically; ``scratch_bytes`` counts the bytes on disk. A spill
file lives until every block reading it finished pass 2, the job completes, or the job fails for
good (:func:`drop_dataset_scratch`, called by the service): a later run recomputes pass 1 of the
blocks whose partial sums are gone (``workers.inference.schedule``), so dropping it costs time,
never a hole. Scratch and markers an older version left (one file per chunk and source, ``done/``)
are not read as scratch: the markers are taken into the done record once, and the partial sums
count as lost, so recomputed.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from numcodecs import Blosc

from volumes.blocks import Index
from workers.inference.spill import SpillWriter, read_part
from workers.runtime.cancel import CancelFlag

log = logging.getLogger(__name__)

RUN_FOLDER = ".pytc-run"
# Measured on the benchmark's partial sums (64x512x512, 8 blocks, the demo model's raw outputs):
# 0.89 of their float32 bytes, 1.18 scratch bytes per output byte instead of 1.32; encoding at about
# 280 MB/s and decoding at 330 MB/s on the 2-core CI machine, 0.3 s each way for the whole job.
# Noisy mantissas barely compress (zstd alone: 0.92, byte shuffle: 0.91); a map of probabilities
# with a saturated background, or padding, does much better (zeros: 1/300).
SCRATCH_CODEC = Blosc(cname="zstd", clevel=1, shuffle=Blosc.BITSHUFFLE)


def _name(index: Index) -> str:
    return "_".join(str(i) for i in index)


def _parse(name: str) -> Index:
    return tuple(int(p) for p in name.split("_"))


@dataclass(frozen=True)
class RunDir(CancelFlag):
    root: Path

    @classmethod
    def for_output(cls, output_path: str, dataset: str, layout_key: str) -> RunDir:
        return cls(RunDir.all_for_dataset(output_path, dataset) / layout_key)

    @staticmethod
    def all_for_dataset(output_path: str, dataset: str) -> Path:
        """The run folders of one output dataset. Its name is the dataset's, percent-encoded: one
        folder level whatever the dataset's depth, and one name per dataset (``a/b`` is ``a%2Fb``,
        ``a__b`` stays ``a__b``), so two outputs of one container never share partial sums."""
        return Path(output_path) / RUN_FOLDER / quote(dataset.strip("/"), safe="")

    def legacy_done_blocks(self, phase: int) -> set[Index]:
        """Blocks an older version recorded with one marker file each (read once, at a resume)."""
        folder = self.root / "done"
        if not folder.is_dir():
            return set()
        prefix = f"p{phase}_"
        return {_parse(p.stem[len(prefix) :]) for p in folder.glob(f"{prefix}*.json")}

    def spill_path(self, block: Index) -> Path:
        return self.root / "scratch" / f"b{_name(block)}.spill"

    def spill_writer(self, block: Index) -> SpillWriter:
        return SpillWriter(self.spill_path(block), SCRATCH_CODEC)

    def write_spills(self, source: Index, parts: Mapping[Index, np.ndarray]) -> int:
        """``source``'s partial sums for each chunk, in one file; the bytes it takes on disk."""
        writer = self.spill_writer(source)
        try:
            written = sum(writer.add(chunk, data) for chunk, data in parts.items())
            return written + writer.close()
        finally:
            writer.abort()

    def read_spill(self, source: Index, chunk: Index) -> np.ndarray:
        """``source``'s partial sums inside ``chunk``; FileNotFoundError when they are missing."""
        return read_part(self.spill_path(source), chunk, SCRATCH_CODEC)

    def spill_blocks(self) -> set[Index]:
        """The blocks with a spill file, from one listing of the scratch folder."""
        try:
            entries = os.scandir(self.root / "scratch")
        except FileNotFoundError:
            return set()
        with entries:
            return {
                _parse(e.name[1:-6]) for e in entries if e.name.startswith("b") and e.name.endswith(".spill")
            }

    def drop_spill(self, block: Index) -> None:
        self.spill_path(block).unlink(missing_ok=True)

    @property
    def cancel_flag(self) -> Path:
        return self.root / "CANCELLED"

    def drop_all_scratch(self) -> None:
        shutil.rmtree(self.root / "scratch", ignore_errors=True)


def drop_dataset_scratch(output_path: str, dataset: str) -> None:
    """Drop the scratch of every run folder of one output dataset (what a failed job leaves);
    the done markers stay, so a later run redoes only what the partial sums were needed for."""
    for folder in RunDir.all_for_dataset(output_path, dataset).glob("*/scratch"):
        shutil.rmtree(folder, ignore_errors=True)


class Janitor:
    """Deletes files on a thread of its own, so that a driver never waits for a slow file system
    (spill files no block reads any more). A file not deleted (a killed driver) is found at the
    next start and dropped then (``workers.inference.run``)."""

    def __init__(self, path_of: Callable[[Index], Path]) -> None:
        self.path_of = path_of
        self._queue: queue.Queue[Index | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def drop(self, block: Index) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pytc-janitor", daemon=True)
            self._thread.start()
        self._queue.put(block)

    def _run(self) -> None:
        while (block := self._queue.get()) is not None:
            path = self.path_of(block)
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                log.warning("could not delete %s: %s", path, err)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def drain(self) -> None:
        """Until every file handed over is deleted; the thread ends."""
        if self._thread is not None:
            self._queue.put(None)
            self._queue.join()
            self._thread.join()
            self._thread = None
