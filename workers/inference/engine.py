"""The two passes of one output block (see docs/design.md and ``volumes.blocks``).

Pass 1 reads the block's input once (its windows' hull plus padding outside the volume), runs its
own windows, accumulates ``sum(p * w)`` in float32 over its extent, finishes its interior chunks
and hands every other chunk's partial sums to scratch. Pass 2 adds the partial sums of all
contributors into the block's border chunks and finishes them. No window is computed twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from volumes.blocks import Index
from volumes.box import Box
from volumes.volume import Volume
from workers.confine import ChunkFiles, confined
from workers.errors import BlockError
from workers.inference.geometry import JobGeometry
from workers.inference.job import InferenceJob, Normalize, OutputDtype, Uint8Rounding
from workers.inference.rundir import RunDir
from workers.inference.steps import StepHook, no_steps
from workers.runtime.affinity import usable_cores

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class BlockResult:
    """What a block task returns: small, for progress and the benchmark."""

    block: Index
    phase: int
    windows: int = 0
    voxels_written: int = 0
    scratch_bytes: int = 0
    output_bytes: int = 0
    read_ahead: bool = False  # its input was read while the previous block computed
    seconds: dict[str, float] = field(default_factory=dict)


def normalize(raw: np.ndarray, spec: Normalize) -> np.ndarray:
    """Per dataset, never per block: integer input / dtype max, then the fixed mean/std."""
    data = raw.astype(np.float32)
    if spec.mode == "auto" and np.issubdtype(raw.dtype, np.integer):
        data /= np.float32(np.iinfo(raw.dtype).max)
    if spec.mean is not None or spec.std is not None:
        data = (data - np.float32(spec.mean or 0.0)) / np.float32(spec.std or 1.0)
    return data


def to_output_dtype(
    values: np.ndarray, dtype: OutputDtype, rounding: Uint8Rounding = "truncate"
) -> np.ndarray:
    """float32 values as the output's dtype. uint8 is ``clip(x, 0, 1) * 255`` in float32, then
    truncated as PyTC's ``astype(np.uint8)`` does (``rounding: round`` rounds to the nearest level)."""
    if dtype == "uint8":
        scaled = np.clip(values, np.float32(0.0), np.float32(1.0)).astype(
            np.float32, copy=False
        ) * np.float32(255.0)
        return (np.rint(scaled) if rounding == "round" else scaled).astype(np.uint8)
    return values.astype(dtype, copy=False)


def _batches(items: list[Index], size: int) -> Iterator[list[Index]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


@dataclass
class BlockContext:
    """Everything a block pass needs; built by the task from the job. ``progress`` hears the steps
    the pass has finished as it goes (:mod:`workers.inference.steps`): windows after every batch in
    pass 1, chunks one by one in pass 2; whoever runs the task decides where that goes."""

    job: InferenceJob
    geometry: JobGeometry
    run_dir: RunDir
    output: Volume
    out_channels: int
    progress: StepHook = no_steps
    attempt: str = ""  # the run's token (workers.inference.readahead.task_prefix)
    chunk_files: ChunkFiles | None = None  # where the output keeps its chunks, to confine each write

    def write_output(self, box: Box, values: np.ndarray) -> int:
        data = to_output_dtype(values, self.job.output.dtype, self.job.output.uint8_rounding)
        full = Box((0, *box.offset), (self.out_channels, *box.shape))
        self._confine(full)
        self.output.write(full, data)
        return int(data.nbytes)

    def _confine(self, box: Box) -> None:
        """The output, and every chunk file the write of ``box`` goes to, still inside the data
        roots (:mod:`workers.confine`): a folder swapped for a symlink is refused, never followed."""
        self.job.output_node()
        if self.chunk_files is not None and self.job.data_roots:
            for path in self.chunk_files.paths(box):
                confined(path, self.job.data_roots)

    def finish(self, box: Box, num: np.ndarray) -> int:
        """Divide by the weight sum and write: ``box`` is chunk-aligned, owned by this block."""
        return self.write_output(box, self.geometry.divide(num, box))


def gather_chunk(ctx: BlockContext, chunk: Index) -> np.ndarray:
    """Sum of every contributor's partial sums inside one chunk; a missing one is an error, never a hole."""
    plan = ctx.geometry.plan
    box = plan.chunk_box(chunk)
    num = np.zeros((ctx.out_channels, *box.shape), dtype=np.float32)
    readers = ctx.geometry.readers(box)
    for source in plan.contributors(chunk):
        if readers is not None and source not in readers:
            continue  # it computed no window over the chunk (input.mask): nothing to add
        part = plan.extent(source).intersect(box)
        try:
            spill = ctx.run_dir.read_spill(source, chunk)
        except (FileNotFoundError, ValueError) as exc:
            raise BlockError(
                f"chunk {chunk}: partial sums of block {source} are missing from "
                f"{ctx.run_dir.spill_path(source)}: {exc}"
            ) from exc
        if spill.shape[1:] != part.shape:
            raise BlockError(
                f"chunk {chunk}: partial sums of block {source} have shape {spill.shape[1:]}, "
                f"expected {part.shape}"
            )
        num[(slice(None), *part.relative_to(box).slices())] += spill
    return num


def run_pass2(ctx: BlockContext, block: Index) -> BlockResult:
    plan = ctx.geometry.plan
    result = BlockResult(block, 2)
    # Run again (its worker died before reporting), it finds the same partial sums: the driver drops
    # a spill file only once every block reading it is recorded done, and records only what returned.
    t0 = time.perf_counter()
    chunks = plan.border_chunks(block)

    def finish_chunk(chunk: Index) -> tuple[int, int]:
        box = plan.chunk_box(chunk)
        return ctx.finish(box, gather_chunk(ctx, chunk)), box.size

    # The model is idle during pass 2: its chunks (reading partial sums, adding, compressing)
    # go on as many threads as this worker has cores, up to 4; numpy and the codecs release the GIL.
    threads = max(1, min(4, len(chunks), len(usable_cores())))
    with ThreadPoolExecutor(threads, thread_name_prefix="pytc-pass2") as pool:
        for finished, (written, voxels) in enumerate(pool.map(finish_chunk, chunks), start=1):
            result.output_bytes += written
            result.voxels_written += voxels
            ctx.progress(finished)
    result.seconds["total"] = time.perf_counter() - t0
    return result
