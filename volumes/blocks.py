"""Output blocks, window ownership and the chunk-level exchange between blocks.

Blocks partition the ROI (output coordinates) and are aligned to the output chunks. Each window
is owned by the block holding its centre (clamped into the ROI), so no window is ever computed
twice. A block's *extent* is the hull of its windows, cut to the ROI; it reaches past the block's
write box by up to one window. For every output chunk we know, per axis, which blocks' extents
touch it (its *contributors*): a chunk touched by its own block alone is *interior* and finished in
pass 1; any other chunk is finished in pass 2 from the scratch partial sums of its contributors::

    block k-1          block k                     block k+1
    .........|-----------write box k-----------|.........
         [==extent k (hull of k's windows)=========]
             ^^^^ border chunks of k ^^^^          ^ spill into k+1's chunk

Everything is a per-axis product, so it is computed per axis and combined.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

from volumes.box import Box
from volumes.errors import GeometryError
from volumes.windows import WindowGrid

Index = tuple[int, ...]

DEFAULT_BLOCK_VOXELS = 64 * 512 * 512  # the most voxels of a block the planner picks


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class AxisLayout:
    """One axis of the plan: blocks, chunks, window ownership and contributors."""

    length: int
    chunk: int
    block: int
    starts: tuple[int, ...]
    patch: int

    @cached_property
    def n_blocks(self) -> int:
        return _ceil_div(self.length, self.block)

    @cached_property
    def n_chunks(self) -> int:
        return _ceil_div(self.length, self.chunk)

    @cached_property
    def owner(self) -> tuple[int, ...]:
        """Block index owning each window: the block holding the window's centre."""
        centres = (min(max(s + self.patch // 2, 0), self.length - 1) for s in self.starts)
        return tuple(c // self.block for c in centres)

    def windows_of(self, k: int) -> range:
        hits = [i for i, o in enumerate(self.owner) if o == k]
        return range(hits[0], hits[-1] + 1) if hits else range(0)

    def extent(self, k: int) -> tuple[int, int]:
        """Hull of block k's windows along this axis, cut to the ROI (empty as (0, 0))."""
        owned = self.windows_of(k)
        if not owned:
            return (0, 0)
        begin = max(self.starts[owned[0]], 0)
        end = min(self.starts[owned[-1]] + self.patch, self.length)
        return (begin, end)

    def write_range(self, k: int) -> tuple[int, int]:
        return (k * self.block, min((k + 1) * self.block, self.length))

    def chunk_range(self, j: int) -> tuple[int, int]:
        return (j * self.chunk, min((j + 1) * self.chunk, self.length))

    def chunks_in(self, begin: int, end: int) -> range:
        if end <= begin:
            return range(0)
        return range(begin // self.chunk, _ceil_div(end, self.chunk))

    @cached_property
    def contributors(self) -> tuple[tuple[int, ...], ...]:
        """Per chunk: the blocks whose extent overlaps it."""
        result: list[list[int]] = [[] for _ in range(self.n_chunks)]
        for k in range(self.n_blocks):
            for j in self.chunks_in(*self.extent(k)):
                result[j].append(k)
        return tuple(tuple(r) for r in result)

    def owner_of_chunk(self, j: int) -> int:
        return (j * self.chunk) // self.block


@dataclass(frozen=True)
class BlockPlan:
    """The whole decomposition of one job's output."""

    roi_shape: tuple[int, ...]
    chunks: tuple[int, ...]
    block_shape: tuple[int, ...]
    grid: WindowGrid

    def __post_init__(self) -> None:
        for axis, (c, b) in enumerate(zip(self.chunks, self.block_shape, strict=True)):
            if c <= 0 or b <= 0 or b % c:
                raise GeometryError(
                    f"block shape {self.block_shape} is not a multiple of chunks {self.chunks} (axis {axis})"
                )

    @cached_property
    def axes(self) -> tuple[AxisLayout, ...]:
        return tuple(
            AxisLayout(n, c, b, s, w)
            for n, c, b, s, w in zip(
                self.roi_shape, self.chunks, self.block_shape, self.grid.starts, self.grid.patch, strict=True
            )
        )

    @property
    def block_counts(self) -> tuple[int, ...]:
        return tuple(a.n_blocks for a in self.axes)

    @property
    def n_blocks(self) -> int:
        return math.prod(self.block_counts)

    def blocks(self) -> Iterator[Index]:
        return itertools.product(*[range(n) for n in self.block_counts])

    def write_box(self, block: Index) -> Box:
        return Box.from_bounds(
            *zip(*(a.write_range(k) for a, k in zip(self.axes, block, strict=True)), strict=True)
        )

    def extent(self, block: Index) -> Box:
        return Box.from_bounds(
            *zip(*(a.extent(k) for a, k in zip(self.axes, block, strict=True)), strict=True)
        )

    def window_ranges(self, block: Index) -> list[range]:
        return [a.windows_of(k) for a, k in zip(self.axes, block, strict=True)]

    def windows(self, block: Index) -> Iterator[Index]:
        return itertools.product(*self.window_ranges(block))

    def read_box(self, block: Index) -> Box:
        """Hull of the block's windows in output coordinates (may reach outside the ROI)."""
        ranges = self.window_ranges(block)
        if any(len(r) == 0 for r in ranges):
            return Box(tuple(0 for _ in ranges), tuple(0 for _ in ranges))
        first = self.grid.box(tuple(r[0] for r in ranges))
        last = self.grid.box(tuple(r[-1] for r in ranges))
        return Box.from_bounds(first.offset, last.end)

    def chunk_box(self, chunk: Index) -> Box:
        return Box.from_bounds(
            *zip(*(a.chunk_range(j) for a, j in zip(self.axes, chunk, strict=True)), strict=True)
        )

    def contributors(self, chunk: Index) -> list[Index]:
        return list(itertools.product(*[a.contributors[j] for a, j in zip(self.axes, chunk, strict=True)]))

    def chunk_owner(self, chunk: Index) -> Index:
        return tuple(a.owner_of_chunk(j) for a, j in zip(self.axes, chunk, strict=True))

    def is_interior(self, chunk: Index) -> bool:
        """True when only the chunk's own block touches it: it is finished in pass 1."""
        return self.contributors(chunk) == [self.chunk_owner(chunk)]

    def chunks_of(self, block: Index) -> Iterator[Index]:
        """Output chunks inside the block's write box."""
        box = self.write_box(block)
        return itertools.product(
            *[a.chunks_in(b, e) for a, b, e in zip(self.axes, box.offset, box.end, strict=True)]
        )

    def interior_box(self, block: Index) -> Box:
        """The block's interior chunks form one box (a per-axis product of contiguous ranges)."""
        begins, ends = [], []
        for a, k in zip(self.axes, block, strict=True):
            own = [j for j in a.chunks_in(*a.write_range(k)) if a.contributors[j] == (k,)]
            begins.append(a.chunk_range(own[0])[0] if own else 0)
            ends.append(a.chunk_range(own[-1])[1] if own else 0)
        return Box.from_bounds(begins, ends)

    def border_chunks(self, block: Index) -> list[Index]:
        return [c for c in self.chunks_of(block) if not self.is_interior(c)]

    def spill_chunks(self, block: Index) -> list[Index]:
        """Chunks (of any block) that receive partial sums from this block through scratch."""
        ext = self.extent(block)
        if ext.is_empty():
            return []
        touched = itertools.product(
            *[a.chunks_in(b, e) for a, b, e in zip(self.axes, ext.offset, ext.end, strict=True)]
        )
        return [c for c in touched if not self.is_interior(c)]

    def pass2_dependencies(self, block: Index) -> set[Index]:
        """Blocks whose pass 1 must finish before this block's pass 2."""
        deps: set[Index] = set()
        for chunk in self.border_chunks(block):
            deps.update(self.contributors(chunk))
        return deps


def plan_blocks(
    roi_shape: Sequence[int],
    chunks: Sequence[int],
    block_shape: Sequence[int] | None,
    grid: WindowGrid,
    target_voxels: int = DEFAULT_BLOCK_VOXELS,
) -> BlockPlan:
    """The block decomposition; without a ``block_shape``, the planner picks a multiple of the chunks
    of at most ``target_voxels``, and at least about two windows per axis where the ROI allows, so
    that spills stay a small fraction of the block."""
    if block_shape is None:
        block_shape = default_block_shape(roi_shape, chunks, grid.patch, target_voxels)
    return BlockPlan(tuple(roi_shape), tuple(chunks), tuple(block_shape), grid)


def default_block_shape(
    roi_shape: Sequence[int], chunks: Sequence[int], patch: Sequence[int], target_voxels: int
) -> tuple[int, ...]:
    shape = [c * max(1, _ceil_div(2 * p, c)) for c, p in zip(chunks, patch, strict=True)]
    shape = [min(s, c * _ceil_div(n, c)) for s, c, n in zip(shape, chunks, roi_shape, strict=True)]
    grown = list(range(len(shape)))
    while len(grown) > 1:
        grown = []
        for axis in sorted(range(len(shape)), key=lambda a: shape[a]):
            bigger = shape[axis] + chunks[axis]
            limit = chunks[axis] * _ceil_div(roi_shape[axis], chunks[axis])
            if bigger <= limit and math.prod(shape) // shape[axis] * bigger <= target_voxels:
                shape[axis] = bigger
                grown.append(axis)
    if grown:
        # An axis that could not grow never can again (the others only grow), so when one axis
        # alone grew it takes all its remaining chunks at once: the loop would add them one pass
        # at a time, a million passes for a thin region in chunks of one voxel.
        (axis,) = grown
        limit = chunks[axis] * _ceil_div(roi_shape[axis], chunks[axis])
        most = min(limit, target_voxels // (math.prod(shape) // shape[axis]))
        shape[axis] += max(0, (most - shape[axis]) // chunks[axis]) * chunks[axis]
    return tuple(shape)
