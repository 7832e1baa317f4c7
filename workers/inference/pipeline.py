"""Streaming pass 1: reading and writing overlap the model's forward passes inside one block.

Windows run in C order, so their z-starts never decrease. A reader thread fills the block's input
slab by slab (one slab per row of windows in z) ahead of the model; once no remaining window
reaches below some z, every accumulator voxel above it is final, and a writer thread finishes
those interior chunks and hands those partial sums to scratch while the model goes on::

    z  ^   read: [slab 0][slab 1][slab 2] ...        (reader thread, ahead of the model)
       |   model:     [row 0   ][row 1   ][row 2   ]  (this thread)
       |   write:               [done<z1][done<z2]    (writer thread, behind the model)

Both queues are bounded by the block itself: the input buffer and the accumulator are allocated
once, so memory depends on the block and the model, not on the volume.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volumes.blocks import Index
from volumes.box import Box
from volumes.open import open_volume
from volumes.padding import read_padded
from volumes.urls import is_url
from volumes.volume import Volume
from workers.confine import confined
from workers.errors import BlockCancelledError, BlockError
from workers.inference import readahead
from workers.inference.engine import BlockContext, BlockResult, normalize
from workers.runtime.affinity import usable_cores
from workers.runtime.state import worker_state

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]

READER_POLL_S = 1.0  # a model thread waiting for its input looks at the reader thread this often
# Rows of windows are read together until a read holds this many voxels: a read has a fixed cost
# (about 10 ms through zarr-python, whatever its size), so a small block is read in one go, while a
# big one (64x512x512: slabs of millions of voxels) still streams slab by slab.
MIN_SLAB_VOXELS = 1 << 20


_WRITERS: ThreadPoolExecutor | None = None
_WRITERS_LOCK = threading.Lock()


def writer_pool() -> ThreadPoolExecutor:
    """The process's writer threads, shared by its blocks (two where there are cores): starting a
    pool per block cost a tiny block a few milliseconds. A block waits for its own writes only."""
    global _WRITERS
    with _WRITERS_LOCK:
        if _WRITERS is None:
            _WRITERS = ThreadPoolExecutor(min(2, len(usable_cores())), thread_name_prefix="pytc-writer")
        return _WRITERS


# Inputs whose handle is kept open between a worker's blocks (zarr, N5, precomputed on a local or
# shared file system: a handle is metadata and a store); the other formats, and inputs in an
# object store, are opened for every block as before.
_KEPT_INPUTS = frozenset({"zarr2", "zarr3", "n5", "precomputed"})


def input_volume(ctx: BlockContext, node: Path) -> Volume:
    """The job's input, opened once per worker and run, as its output is
    (:func:`workers.inference.tasks._output_volume`): opening it for every block (finding its
    format, reading its metadata, zarr's own round trips) was a fixed cost of each block task.
    ``node``, the input's folder the block has just confined, must still be there: an input moved
    or deleted during the run fails the next block naming it (a kept handle would read its
    missing chunks as the fill value). A run after a failure (the input repaired or replaced)
    opens it afresh."""
    inputs = worker_state().inputs
    job = ctx.job
    key = (job.input.path, job.input.dataset, ctx.run_dir.root.name, ctx.attempt)
    volume: Volume | None = inputs.get(key)
    if volume is not None and not node.exists():
        inputs.pop(key)
        volume = None  # open_volume names what is missing
    if volume is None:
        volume = open_volume(job.input.path, job.input.dataset)
        if volume.format in _KEPT_INPUTS and not is_url(job.input.path):
            inputs.put(key, volume)
    return volume


class SlabReader:
    """Reads the block's read box in z-slabs on a background thread, in order."""

    def __init__(self, ctx: BlockContext, read_box: Box, row_ends: list[int]) -> None:
        self.ctx, self.read_box = ctx, read_box
        channels = ctx.geometry.input_shape[0] if len(ctx.geometry.input_shape) == 4 else 1
        self.data = np.empty((channels, *read_box.shape), dtype=np.float32)
        # slab r ends where window row r ends; slabs partition the read box along z
        self.ends = [min(e, read_box.end[0]) - read_box.offset[0] for e in row_ends]
        self.ready = [threading.Event() for _ in self.ends]
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="pytc-reader", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Everything the thread does is inside the try, opening the input included (a renamed
        # input, an NFS hiccup, a permission change): whatever ends it early reaches the model's
        # thread, which would otherwise wait for its rows for ever.
        begin = 0
        try:
            node = self.ctx.job.input_node()  # still inside the data roots (workers.confine)
            volume = input_volume(self.ctx, node)
            plane = int(np.prod(self.read_box.shape[1:]))
            waiting: list[int] = []  # rows the next read covers
            for index, end in enumerate(self.ends):
                if self.stopped.is_set():  # the block ended early: no one reads the rest
                    raise BlockError(f"reading the input of {self.read_box} stopped: the block ended")
                waiting.append(index)
                if index + 1 < len(self.ends) and (end - begin) * plane < MIN_SLAB_VOXELS:
                    continue  # a small block is read in one go: each read has a fixed cost
                if end > begin:
                    t0 = time.perf_counter()
                    box = Box(
                        (self.read_box.offset[0] + begin, *self.read_box.offset[1:]),
                        (end - begin, *self.read_box.shape[1:]),
                    )
                    raw = read_padded(
                        volume, box.shift(self.ctx.geometry.roi.offset), self.ctx.job.window.pad_mode
                    )
                    slab = normalize(raw, self.ctx.job.input.normalize)
                    self.data[:, begin:end] = slab if slab.ndim == 4 else slab[None]
                    self.seconds += time.perf_counter() - t0
                    begin = end
                for row in waiting:
                    self.ready[row].set()
                waiting.clear()
        except BaseException as exc:  # handed to the model's thread, which raises it
            self.error = exc
            for event in self.ready:
                event.set()

    def wait_row(self, row: int) -> None:
        """Until the rows up to ``row`` are read; the reader's error if it failed. A reader that
        ended without either (it cannot, but a wait must never outlive its thread) is an error too."""
        while not self.ready[row].wait(READER_POLL_S):
            if not self.thread.is_alive() and not self.ready[row].is_set():
                raise BlockError(
                    f"the reader of {self.ctx.job.input.path} ended before row {row} of "
                    f"{self.read_box} was read"
                )
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """Stop reading at the next slab and wait for the thread (the block ended early)."""
        self.stopped.set()
        self.thread.join()


@dataclass(order=True)
class _Unit:
    """A piece of the accumulator final once no window reaches below ``z_end``."""

    z_end: int
    kind: str
    box: Box
    chunk: Index = ()


class Flusher:
    """Finishes interior chunks and writes spills on a background thread as they become final."""

    def __init__(self, ctx: BlockContext, block: Index, num: np.ndarray, result: BlockResult) -> None:
        self.ctx, self.block, self.num, self.result = ctx, block, num, result
        plan = ctx.geometry.plan
        self.extent = plan.extent(block)
        self.units = sorted(
            self._interior_units()
            + [
                _Unit(
                    plan.extent(block).intersect(plan.chunk_box(c)).end[0],
                    "spill",
                    plan.extent(block).intersect(plan.chunk_box(c)),
                    c,
                )
                for c in plan.spill_chunks(block)
            ]
        )
        # Units become final one z-row at a time while the model runs; the block's last ones all at
        # once when it ends, while the model waits: those go on two threads where there are cores.
        self.pool = writer_pool()
        self.pending: list[Future[None]] = []
        self.lock = threading.Lock()
        # every part of this block's partial sums goes into one file, published when the block ends
        self.spill = ctx.run_dir.spill_writer(block)
        if any(u.kind == "spill" for u in self.units):
            confined(self.spill.path, ctx.job.data_roots)
        self.seconds = 0.0

    def _interior_units(self) -> list[_Unit]:
        interior = self.ctx.geometry.plan.interior_box(self.block)
        if interior.is_empty():
            return []
        step = self.ctx.geometry.plan.chunks[0]
        units = []
        for z0 in range(interior.offset[0], interior.end[0], step):
            z1 = min(z0 + step, interior.end[0])
            units.append(_Unit(z1, "out", Box((z0, *interior.offset[1:]), (z1 - z0, *interior.shape[1:]))))
        return units

    def flush_until(self, z: float) -> None:
        while self.units and self.units[0].z_end <= z:
            self.pending.append(self.pool.submit(self._write, self.units.pop(0)))

    def _write(self, unit: _Unit) -> None:
        t0 = time.perf_counter()
        values = self.num[(slice(None), *unit.box.relative_to(self.extent).slices())]
        output = scratch = voxels = 0
        if unit.kind == "out":
            output, voxels = self.ctx.finish(unit.box, values), unit.box.size
        else:
            scratch = self.spill.add(unit.chunk, values)
        with self.lock:  # two writer threads
            self.result.output_bytes += output
            self.result.voxels_written += voxels
            self.result.scratch_bytes += scratch
            self.seconds += time.perf_counter() - t0

    def close(self, complete: bool) -> None:
        """Wait for every write (after writing what is left when the block ``complete``d); the first
        failure is raised. A block that did not complete writes nothing more: no partial sums."""
        if complete:
            self.flush_until(float("inf"))
        published = False
        try:
            for future in self.pending:
                future.result()
            if complete:
                self.result.scratch_bytes += self.spill.close()  # one fsync for the block
                published = True
        finally:
            wait(self.pending)  # the shared pool stays; this block's writes are all over
            if not published:
                self.spill.abort()


def _windows_by_row(ctx: BlockContext, block: Index) -> tuple[list[Index], list[int], list[int]]:
    """The block's windows in C order, each one's z-row, and where each z-row's input ends."""
    plan, grid = ctx.geometry.plan, ctx.geometry.grid
    ranges = plan.window_ranges(block)
    windows = list(plan.windows(block))
    kept = ctx.geometry.kept_windows(ranges)
    if kept is not None:  # input.mask: only the kept windows are computed
        first = [r[0] if len(r) else 0 for r in ranges]
        windows = [w for w in windows if kept[tuple(i - f for i, f in zip(w, first, strict=True))]]
    rows = [w[0] - ranges[0][0] for w in windows]
    row_ends = [grid.starts[0][i] + grid.patch[0] for i in ranges[0]]
    return windows, rows, row_ends


def _reader_for(ctx: BlockContext, block: Index) -> tuple[Box, SlabReader] | None:
    """A reader of ``block``'s input, started (for :mod:`workers.inference.readahead`)."""
    if ctx.geometry.plan.extent(block).is_empty():
        return None
    read_box = ctx.geometry.plan.read_box(block)
    return read_box, SlabReader(ctx, read_box, _windows_by_row(ctx, block)[2])


def run_pass1(ctx: BlockContext, block: Index, predict: Predict) -> BlockResult:
    """Compute the block's own windows once and write what is final as soon as it is final."""
    plan, grid, weights = ctx.geometry.plan, ctx.geometry.grid, ctx.geometry.weights
    result = BlockResult(block, 1)
    t0 = time.perf_counter()
    extent, read_box = plan.extent(block), plan.read_box(block)
    if not extent.is_empty():
        windows, rows, row_ends = _windows_by_row(ctx, block)
        layout_key = ctx.run_dir.root.name
        ahead = readahead.take(layout_key, block, read_box, ctx.attempt)  # the previous task started it
        reader = ahead if ahead is not None else SlabReader(ctx, read_box, row_ends)
        result.read_ahead = ahead is not None
        looked_ahead = False
        num = np.zeros((ctx.out_channels, *extent.shape), dtype=np.float32)
        flusher = Flusher(ctx, block, num, result)
        forward = waited = 0.0
        complete = False
        try:
            size = ctx.job.window.batch_size
            for first in range(0, len(windows), size):
                if ctx.run_dir.is_cancelled():
                    raise BlockCancelledError(f"block {block}: the job was cancelled")
                batch = windows[first : first + size]
                t1 = time.perf_counter()
                reader.wait_row(rows[first + len(batch) - 1])
                waited += time.perf_counter() - t1
                boxes = [grid.box(w) for w in batch]
                inputs = np.stack(
                    [reader.data[(slice(None), *b.relative_to(read_box).slices())] for b in boxes]
                )
                t2 = time.perf_counter()
                preds = predict(inputs)
                forward += time.perf_counter() - t2
                for box, pred in zip(boxes, preds, strict=True):
                    part = box.intersect(extent)
                    inside = part.relative_to(box).slices()
                    num[(slice(None), *part.relative_to(extent).slices())] += (
                        pred[(slice(None), *inside)] * weights[inside]
                    )
                result.windows += len(batch)
                ctx.progress(result.windows)
                if not looked_ahead and not reader.thread.is_alive():
                    looked_ahead = True  # this block's input is in: read the next one's meanwhile
                    readahead.start_next(layout_key, lambda b: _reader_for(ctx, b), ctx.attempt)
                following = first + len(batch)
                flusher.flush_until(
                    grid.box(windows[following]).offset[0] if following < len(windows) else 1 << 62
                )
            complete = True
        finally:
            t3 = time.perf_counter()
            flusher.close(complete)
            waited += time.perf_counter() - t3
            if complete:
                reader.thread.join()
            else:
                reader.stop()
        result.seconds.update(forward=forward, read=reader.seconds, write=flusher.seconds, waited=waited)
    result.seconds["total"] = time.perf_counter() - t0
    log.info("block %s pass 1: %d windows in %.2fs", block, result.windows, result.seconds["total"])
    return result
