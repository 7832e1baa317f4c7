"""Mask-restricted inference: which windows of the grid are computed, as a pure function of the
window's global index and the mask.

``input.mask`` names an array over the input volume (bool or integer; nonzero = compute here), at
the input's scale or a coarser one: each mask voxel covers ``f`` input voxels along an axis, ``f``
an integer per axis derived from the two voxel sizes, so the mask has ``ceil(D / f)`` voxels there::

    input   |....|....|....|....|..       f = 4, D = 18
    mask    |  0 |  1 |  0 |  0 | 0|     ceil(18 / 4) = 5 voxels

A window's *footprint* is its box in input space, its padding included (the grid lives on the ROI
grown by ``pad_size``), cut to the volume. The window is computed iff a nonzero mask voxel covers
a voxel of its footprint. Boxes are a per-axis product, so "any nonzero voxel in the box" is
computed separably, one axis at a time, from prefix sums along that axis at the window's bounds
(a summed-area table taken one axis at a time):

    any(mask[z0:z1, y0:y1, x0:x1]) for every window = three passes of ``C[hi] - C[lo] > 0``

Memory does not grow with the volume. Nothing holds the whole mask, nor a flag per window:

- a task decides its own windows (pass 1) and the windows over a chunk it finishes (pass 2) from
  the mask read over their footprints' hull only (:meth:`MaskWindows.keep`): the block's share;
- the driver schedules blocks from one streaming pass over the mask's chunks (each read, reduced to
  "holds a nonzero voxel" per cell of about a block's size at the mask's scale, dropped:
  :func:`chunk_any`), a byte per cell, then per block (:meth:`MaskWindows.block_flags`). A block
  is left out only when every footprint of its windows meets cells of zeros alone, so a block left
  out has no kept window; a block scheduled may still compute none (its chunks are then written as
  the fill value, 0).

Every process decides a window the same way from the same mask, so the blocks agree: a window is
computed by its owner iff it is kept, and the weight sum of any voxel (``JobGeometry.weight_sum``)
counts exactly the kept windows over it; pass 2 reads the partial sums of exactly the blocks that
own a kept window over the chunk (each was scheduled: its flag is true whenever the exact one is).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from volumes.blocks import BlockPlan
from volumes.box import Box
from volumes.errors import VolumeError, VolumeFormatError, VolumeNotFoundError
from volumes.open import open_volume
from volumes.volume import Volume
from volumes.windows import WindowGrid
from workers.errors import SpecError
from workers.inference.job import InferenceJob

FIELD = "input.mask"
TOLERANCE = 1e-6  # relative: voxel sizes written as decimals (4.0 / 8.0 nm, 0.1 / 0.3 um)


def open_mask(job: InferenceJob) -> Volume:
    """The job's mask array (confined to the data roots again), or a SpecError naming its field."""
    spec = job.input.mask
    assert spec is not None
    job.input.mask_node(job.data_roots)
    try:
        return open_volume(spec.path, spec.dataset)
    except VolumeNotFoundError as err:
        if not Path(spec.path).exists():
            raise SpecError(f"{FIELD}.path", f"{spec.path} does not exist") from err
        if spec.dataset is None:
            raise SpecError(
                f"{FIELD}.dataset", f"{spec.path} is a container, not an array; name one"
            ) from err
        raise SpecError(f"{FIELD}.dataset", str(err)) from err
    except VolumeFormatError as err:
        raise SpecError(f"{FIELD}.path", f"not a readable volume: {err}") from err
    except (VolumeError, OSError) as err:
        raise SpecError(
            f"{FIELD}.path", f"cannot open {spec.path} (dataset {spec.dataset!r}): {err}"
        ) from err


def scale_factors(
    mask_voxel: Sequence[float] | None, input_voxel: Sequence[float] | None
) -> tuple[int, int, int]:
    """Input voxels per mask voxel along each axis: ``mask voxel size / input voxel size``, an
    integer >= 1. A side without a voxel size is at the other's scale."""
    if mask_voxel is None or input_voxel is None:
        return (1, 1, 1)
    factors = []
    for axis, m, i in zip("zyx", mask_voxel, input_voxel, strict=True):
        ratio = float(m) / float(i)
        f = round(ratio)
        if f < 1 or abs(ratio - f) > TOLERANCE * max(1.0, ratio):
            raise SpecError(
                FIELD,
                f"the mask's voxel size {list(mask_voxel)} is not an integer multiple of the input's "
                f"{list(input_voxel)} (axis {axis}: {m} / {i} = {ratio:g}); a mask must be at the "
                "input's scale or coarser by a whole factor per axis",
            )
        factors.append(f)
    return (factors[0], factors[1], factors[2])


def check_mask(job: InferenceJob, source: Volume) -> tuple[int, int, int]:
    """The mask fits the input: a 3D bool or integer array covering the input volume at a whole
    scale factor per axis. Returns the factors; a SpecError naming ``input.mask`` otherwise."""
    mask = open_mask(job)
    if mask.ndim != 3:
        raise SpecError(FIELD, f"expected a 3D (z, y, x) array, got shape {list(mask.shape)}")
    if mask.dtype.kind not in "biu":
        raise SpecError(
            FIELD, f"expected a bool or integer array (nonzero = compute), got dtype {mask.dtype}"
        )
    factors = scale_factors(mask.voxel_size, source.voxel_size)
    spatial = tuple(source.shape[-3:])
    expected = tuple(-(-d // f) for d, f in zip(spatial, factors, strict=True))
    if tuple(mask.shape) != expected:
        raise SpecError(
            FIELD,
            f"shape {list(mask.shape)} does not cover the input of shape {list(spatial)} at scale "
            f"factors {list(factors)} (from the voxel sizes {mask.voxel_size} and {source.voxel_size}): "
            f"expected {list(expected)}",
        )
    return factors


def footprints(
    grid: WindowGrid, roi: Box, spatial: Sequence[int], factors: Sequence[int], axis: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per window along ``axis``: its footprint's bounds in mask voxels, ``[lo, hi)`` (empty where
    the window lies wholly in the padding outside the volume)."""
    starts = np.asarray(grid.starts[axis], dtype=np.int64) + roi.offset[axis]
    lo = np.clip(starts, 0, spatial[axis])
    hi = np.clip(starts + grid.patch[axis], 0, spatial[axis])
    f = factors[axis]
    mask_lo = lo // f
    mask_hi = np.minimum(-(-hi // f), -(-spatial[axis] // f))
    return mask_lo, np.where(hi > lo, mask_hi, mask_lo)


class MaskWindows:
    """Which windows of a job's grid are computed, decided from the mask over only the windows asked
    about: a task reads the mask (at its own scale) over its windows' footprints and nothing more.

    Per axis, each window's footprint bounds in mask voxels are kept (two integers per window along
    one axis: small); the mask itself is read a box at a time, never whole."""

    def __init__(self, job: InferenceJob, roi: Box, grid: WindowGrid, input_volume: Volume) -> None:
        self.job = job
        self.factors = check_mask(job, input_volume)
        spatial = tuple(input_volume.shape[-3:])
        self.bounds = [footprints(grid, roi, spatial, self.factors, a) for a in range(3)]
        self.n_windows = math.prod(len(lo) for lo, _ in self.bounds)

    def keep(self, ranges: Sequence[Sequence[int]]) -> np.ndarray:
        """Whether each window of the product of the per-axis window indices ``ranges`` is computed
        (bool, shaped by the ranges' lengths): the mask read once, over the hull of their footprints."""
        picked = [(lo[list(r)], hi[list(r)]) for (lo, hi), r in zip(self.bounds, ranges, strict=True)]
        if any(len(lo) == 0 for lo, _ in picked):
            return np.zeros([len(r) for r in ranges], dtype=bool)
        begin = [int(lo.min()) for lo, _ in picked]
        end = [max(int(hi.max()), b) for (_, hi), b in zip(picked, begin, strict=True)]
        region = Box(tuple(begin), tuple(e - b for b, e in zip(begin, end, strict=True)))
        values = open_mask(self.job).read(region) if region.size else np.zeros(region.shape, dtype=bool)
        relative = [(lo - b, hi - b) for (lo, hi), b in zip(picked, begin, strict=True)]
        return keep_from_mask(np.asarray(values) != 0, relative)

    def block_flags(self, plan: BlockPlan) -> tuple[np.ndarray, np.ndarray]:
        """Per block (shaped ``plan.block_counts``): whether it may own a kept window (its pass 1 is
        scheduled), and whether a kept window may touch its write box (its pass 2 is). From one
        streaming pass over the mask's chunks (:func:`chunk_any`), so a flag is true whenever the
        exact answer is, and false for every block whose windows' footprints meet only chunks of
        zeros; the tasks then decide each window exactly."""
        mask = open_mask(self.job)
        chunk = tuple(int(c) for c in mask.chunks[-3:])
        block = [a.block for a in plan.axes]
        cell = tuple(
            _divisor_at_most(c, max(1, b // f)) for c, b, f in zip(chunk, block, self.factors, strict=True)
        )
        nonzero = chunk_any(mask, chunk, cell)
        owns: list[tuple[np.ndarray, np.ndarray]] = []
        touches: list[tuple[np.ndarray, np.ndarray]] = []
        for axis, layout in enumerate(plan.axes):
            lo, hi = self.bounds[axis]
            starts = np.asarray(layout.starts, dtype=np.int64)
            owner = np.asarray(layout.owner, dtype=np.int64)
            own_bounds, touch_bounds = [], []
            for k in range(layout.n_blocks):
                begin, end = layout.write_range(k)
                touching = (starts < end) & (starts + layout.patch > begin)
                own_bounds.append(_chunk_hull(lo[owner == k], hi[owner == k], cell[axis]))
                touch_bounds.append(_chunk_hull(lo[touching], hi[touching], cell[axis]))
            owns.append(_as_bounds(own_bounds))
            touches.append(_as_bounds(touch_bounds))
        return keep_from_mask(nonzero, owns), keep_from_mask(nonzero, touches)

    def owned_windows(self, plan: BlockPlan, blocks: np.ndarray) -> int:
        """How many windows the blocks where ``blocks`` is true own (per-axis counts, multiplied)."""
        out = blocks.astype(np.int64)
        for layout in reversed(plan.axes):
            counts = np.bincount(np.asarray(layout.owner, dtype=np.int64), minlength=layout.n_blocks)
            out = out @ counts[: layout.n_blocks]
        return int(out)


def _chunk_hull(lo: np.ndarray, hi: np.ndarray, chunk: int) -> tuple[int, int]:
    """The mask cells ``[first, last + 1)`` the footprints ``[lo, hi)`` meet; (0, 0) for none."""
    nonempty = hi > lo
    if not nonempty.any():
        return (0, 0)
    return int(lo[nonempty].min()) // chunk, -(-int(hi[nonempty].max()) // chunk)


def _as_bounds(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray([a for a, _ in pairs], dtype=np.int64), np.asarray(
        [b for _, b in pairs], dtype=np.int64
    )


def _divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of ``n`` that is at most ``limit`` (1 at least)."""
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def chunk_any(mask: Volume, chunk: Sequence[int], cell: Sequence[int] | None = None) -> np.ndarray:
    """Per cell of ``cell`` voxels (a divisor of ``chunk`` per axis; the chunk by default) of the 3D
    ``mask``: whether it holds a nonzero voxel. The mask is read a chunk at a time (read, reduced,
    dropped); the answer is one byte per cell."""
    cell = tuple(chunk if cell is None else cell)
    counts = [-(-int(n) // int(c)) for n, c in zip(mask.shape, cell, strict=True)]
    out = np.zeros(counts, dtype=bool)
    whole = Box.of_shape(tuple(mask.shape))
    per_chunk = [c // e for c, e in zip(chunk, cell, strict=True)]
    for index in np.ndindex(*[-(-int(n) // int(c)) for n, c in zip(mask.shape, chunk, strict=True)]):
        box = Box(tuple(i * c for i, c in zip(index, chunk, strict=True)), tuple(chunk)).intersect(whole)
        values = np.asarray(mask.read(box)) != 0
        cells = [-(-s // e) for s, e in zip(values.shape, cell, strict=True)]
        padded = np.zeros([n * e for n, e in zip(cells, cell, strict=True)], dtype=bool)
        padded[tuple(slice(0, s) for s in values.shape)] = values
        reduced = padded.reshape(cells[0], cell[0], cells[1], cell[1], cells[2], cell[2]).any(axis=(1, 3, 5))
        start = [i * p for i, p in zip(index, per_chunk, strict=True)]
        out[tuple(slice(b, b + n) for b, n in zip(start, cells, strict=True))] = reduced
    return out


def keep_from_mask(mask: np.ndarray, bounds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``out[i, j, k] = any(mask[lo_z[i]:hi_z[i], lo_y[j]:hi_y[j], lo_x[k]:hi_x[k]])``, one axis at
    a time: along an axis, the count in ``[lo, hi)`` is a difference of prefix sums."""
    counts = mask.astype(np.uint8)
    for axis in reversed(range(mask.ndim)):
        lo, hi = bounds[axis]
        prefix = np.cumsum(counts, axis=axis, dtype=np.int32)
        pad = [(0, 0)] * prefix.ndim
        pad[axis] = (1, 0)
        prefix = np.pad(prefix, pad)
        inside = np.take(prefix, hi, axis=axis) - np.take(prefix, lo, axis=axis)
        counts = (inside > 0).astype(np.uint8)
    return counts.astype(bool)


def record_without_tasks(p1: bytearray, p2: bytearray, flags: tuple[np.ndarray, np.ndarray]) -> int:
    """Mark done, in a done record's bits, what the mask leaves nothing to compute: the pass 1 of a
    block owning no kept window (no partial sums: readers skip it), and both passes of a block no
    kept window touches (its chunks stay unwritten and read as the fill value, 0). A pure function
    of the mask, so a resume marks the same. Returns the blocks left with no task at all."""
    owns, touched = (f.reshape(-1) for f in flags)
    done1 = np.frombuffer(p1, dtype=np.uint8)
    done2 = np.frombuffer(p2, dtype=np.uint8)
    done1[~owns] = 1
    done2[~touched] = 1
    return int(np.count_nonzero(~touched))
