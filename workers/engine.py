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
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from volumes.box import Box
from volumes.padding import read_padded
from volumes.volume import Volume, open_volume
from workers.errors import BlockCancelledError, BlockError
from workers.geometry import JobGeometry
from workers.job import InferenceJob, Normalize, OutputDtype
from workers.rundir import Index, RunDir

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
    seconds: dict[str, float] = field(default_factory=dict)


def normalize(raw: np.ndarray, spec: Normalize) -> np.ndarray:
    """Per dataset, never per block: integer input / dtype max, then the fixed mean/std."""
    data = raw.astype(np.float32)
    if spec.mode == "auto" and np.issubdtype(raw.dtype, np.integer):
        data /= np.float32(np.iinfo(raw.dtype).max)
    if spec.mean is not None or spec.std is not None:
        data = (data - np.float32(spec.mean or 0.0)) / np.float32(spec.std or 1.0)
    return data


def to_output_dtype(values: np.ndarray, dtype: OutputDtype) -> np.ndarray:
    if dtype == "uint8":
        return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    return values.astype(dtype, copy=False)


def _batches(items: list[Index], size: int) -> Iterator[list[Index]]:
    it = iter(items)
    while batch := list(islice(it, size)):
        yield batch


@dataclass
class BlockContext:
    """Everything a block pass needs; built by the task from the job."""

    job: InferenceJob
    geometry: JobGeometry
    run_dir: RunDir
    output: Volume
    out_channels: int

    def write_output(self, box: Box, values: np.ndarray) -> int:
        data = to_output_dtype(values, self.job.output.dtype)
        self.output.write(Box((0, *box.offset), (self.out_channels, *box.shape)), data)
        return int(data.nbytes)

    def finish(self, box: Box, num: np.ndarray) -> int:
        """Divide by the weight sum and write: ``box`` is chunk-aligned, owned by this block."""
        return self.write_output(box, num / self.geometry.weight_sum(box))


def read_block_input(ctx: BlockContext, read_box: Box) -> np.ndarray:
    """The block's input as float32 (Cin, *read_box.shape); read_box is in output coordinates."""
    volume_box = read_box.shift(ctx.geometry.roi.offset)
    volume = open_volume(ctx.job.input.path, ctx.job.input.dataset)
    raw = read_padded(volume, volume_box, ctx.job.window.pad_mode)
    data = normalize(raw, ctx.job.input.normalize)
    return data if data.ndim == 4 else data[None]


def accumulate_windows(ctx: BlockContext, block: Index, predict: Predict, result: BlockResult) -> np.ndarray:
    """``sum(p * w)`` over the block's own windows, on its extent, float32 (C, *extent.shape)."""
    plan, grid, weights = ctx.geometry.plan, ctx.geometry.grid, ctx.geometry.weights
    extent, read_box = plan.extent(block), plan.read_box(block)
    num = np.zeros((ctx.out_channels, *extent.shape), dtype=np.float32)
    t0 = time.perf_counter()
    data = read_block_input(ctx, read_box)
    result.seconds["read"] = time.perf_counter() - t0
    forward = 0.0
    for batch in _batches(list(plan.windows(block)), ctx.job.window.batch_size):
        if ctx.run_dir.is_cancelled():
            raise BlockCancelledError(f"block {block}: the job was cancelled")
        boxes = [grid.box(w) for w in batch]
        inputs = np.stack([data[(slice(None), *b.relative_to(read_box).slices())] for b in boxes])
        t1 = time.perf_counter()
        preds = predict(inputs)
        forward += time.perf_counter() - t1
        for box, pred in zip(boxes, preds, strict=True):
            part = box.intersect(extent)
            inside = part.relative_to(box).slices()
            num[(slice(None), *part.relative_to(extent).slices())] += (
                pred[(slice(None), *inside)] * weights[inside]
            )
        result.windows += len(batch)
    result.seconds["forward"] = forward
    return num


def run_pass1(ctx: BlockContext, block: Index, predict: Predict) -> BlockResult:
    plan = ctx.geometry.plan
    result = BlockResult(block, 1)
    t0 = time.perf_counter()
    extent = plan.extent(block)
    if not extent.is_empty():
        num = accumulate_windows(ctx, block, predict, result)
        interior = plan.interior_box(block)
        t1 = time.perf_counter()
        if not interior.is_empty():
            result.output_bytes += ctx.finish(
                interior, num[(slice(None), *interior.relative_to(extent).slices())]
            )
            result.voxels_written += interior.size
        for chunk in plan.spill_chunks(block):
            part = extent.intersect(plan.chunk_box(chunk))
            spill = np.ascontiguousarray(num[(slice(None), *part.relative_to(extent).slices())])
            result.scratch_bytes += ctx.run_dir.write_scratch(chunk, block, spill)
        result.seconds["write"] = time.perf_counter() - t1
    result.seconds["total"] = time.perf_counter() - t0
    record = {"windows": result.windows, "scratch_bytes": result.scratch_bytes}
    ctx.run_dir.mark_done(1, block, record)
    if not plan.border_chunks(block):
        ctx.run_dir.mark_done(2, block, record)
    log.info("block %s pass 1: %d windows in %.2fs", block, result.windows, result.seconds["total"])
    return result


def gather_chunk(ctx: BlockContext, chunk: Index) -> np.ndarray:
    """Sum of every contributor's partial sums inside one chunk; a missing one is an error, never a hole."""
    plan = ctx.geometry.plan
    box = plan.chunk_box(chunk)
    num = np.zeros((ctx.out_channels, *box.shape), dtype=np.float32)
    for source in plan.contributors(chunk):
        part = plan.extent(source).intersect(box)
        try:
            spill = ctx.run_dir.read_scratch(chunk, source)
        except FileNotFoundError as exc:
            raise BlockError(
                f"chunk {chunk}: partial sums of block {source} are missing from "
                f"{ctx.run_dir.scratch_path(chunk, source)}"
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
    t0 = time.perf_counter()
    chunks = plan.border_chunks(block)
    for chunk in chunks:
        box = plan.chunk_box(chunk)
        result.output_bytes += ctx.finish(box, gather_chunk(ctx, chunk))
        result.voxels_written += box.size
    result.seconds["total"] = time.perf_counter() - t0
    ctx.run_dir.mark_done(2, block, {"chunks": len(chunks)})
    ctx.run_dir.drop_scratch(chunks)
    return result
