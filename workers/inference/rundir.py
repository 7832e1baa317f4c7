"""Durable per-job records on shared storage: done markers and the scratch of the block exchange.

Layout, under ``<output.path>/.pytc-run/<dataset, percent-encoded>/<layout_key>/``::

    done/p1_<z>_<y>_<x>.json    pass 1 of a block finished (its interior chunks and spills written)
    done/p2_<z>_<y>_<x>.json    the block is finished: every chunk of its write box is written
    scratch/c<z>_<y>_<x>/from_<z>_<y>_<x>.npy.blosc   partial sums of one block inside one chunk

A marker is written only after what it vouches for is on disk, by an atomic rename, so a reader
never sees a marker for a half-written block. The key is the job's layout hash, so markers of
another spec are never reused.

Scratch is float32 partial sums, compressed (:data:`SCRATCH_CODEC`: the ``.npy`` bytes, bit-shuffled
and zstd'ed by Blosc) and written atomically as markers are; ``scratch_bytes`` counts the bytes on
disk. It lives until pass 2 consumes it, the job completes, or the job fails for good
(:func:`drop_dataset_scratch`, called by the service): a later run recomputes pass 1 of the blocks
whose partial sums are gone (``workers.inference.run``), so dropping it costs time, never a hole.
Uncompressed scratch an older version left (``.npy``) is not read: it counts as lost, and recomputed.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from numcodecs import Blosc

from volumes.blocks import Index
from volumes.files import atomic_write
from workers.runtime.cancel import CancelFlag
from workers.storage import run_base

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
        return run_base(output_path) / RUN_FOLDER / quote(dataset.strip("/"), safe="")

    def marker(self, phase: int, block: Index) -> Path:
        return self.root / "done" / f"p{phase}_{_name(block)}.json"

    def is_done(self, phase: int, block: Index) -> bool:
        return self.marker(phase, block).exists()

    def mark_done(self, phase: int, block: Index, record: dict[str, Any]) -> None:
        data = json.dumps(record, sort_keys=True).encode()
        atomic_write(self.marker(phase, block), lambda h: h.write(data))

    def done_blocks(self, phase: int) -> set[Index]:
        folder = self.root / "done"
        if not folder.is_dir():
            return set()
        prefix = f"p{phase}_"
        return {_parse(p.stem[len(prefix) :]) for p in folder.glob(f"{prefix}*.json")}

    def scratch_path(self, chunk: Index, source: Index) -> Path:
        return self.root / "scratch" / f"c{_name(chunk)}" / f"from_{_name(source)}.npy.blosc"

    def write_scratch(self, chunk: Index, source: Index, data: np.ndarray) -> int:
        """Write ``data`` compressed, atomically; the bytes it takes on disk."""
        buffer = io.BytesIO()
        np.save(buffer, data, allow_pickle=False)
        packed = bytes(SCRATCH_CODEC.encode(buffer.getbuffer()))
        atomic_write(self.scratch_path(chunk, source), lambda h: h.write(packed))
        return len(packed)

    def read_scratch(self, chunk: Index, source: Index) -> np.ndarray:
        packed = self.scratch_path(chunk, source).read_bytes()
        return np.load(io.BytesIO(SCRATCH_CODEC.decode(packed)), allow_pickle=False)

    def drop_scratch(self, chunks: Iterable[Index]) -> None:
        for chunk in chunks:
            shutil.rmtree(self.root / "scratch" / f"c{_name(chunk)}", ignore_errors=True)

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
