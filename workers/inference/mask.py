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

Memory: the mask at its own scale for the job's region (the hull of the footprints), one byte a
voxel, plus a 4-byte prefix sum of one axis at a time; the answer is one byte per window. A mask
16x coarser per axis than a petascale input is small; a mask at the input's full scale over a
huge ROI is not (it would have to be reduced blockwise, which this module does not do).

Every process that needs the decisions (the driver, each worker) computes the same array from the
same mask, so the blocks agree: a window is computed by its owner iff it is kept, and the weight
sum of any voxel (``JobGeometry.weight_sum``) counts exactly the kept windows over it.
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


def window_keep(job: InferenceJob, roi: Box, grid: WindowGrid, input_volume: Volume) -> np.ndarray:
    """Whether each window of ``grid`` is computed (bool, shaped ``grid.counts``)."""
    factors = check_mask(job, input_volume)
    spatial = tuple(input_volume.shape[-3:])
    bounds = [footprints(grid, roi, spatial, factors, a) for a in range(3)]
    # the job's region of the mask: the hull of every footprint, at the mask's own scale
    begin = [int(lo.min()) for lo, _ in bounds]
    end = [max(int(hi.max()), b) for (_, hi), b in zip(bounds, begin, strict=True)]
    region = Box(tuple(begin), tuple(e - b for b, e in zip(begin, end, strict=True)))
    values = open_mask(job).read(region) if region.size else np.zeros(region.shape, dtype=bool)
    return keep_from_mask(
        np.asarray(values) != 0, [(lo - b, hi - b) for (lo, hi), b in zip(bounds, begin, strict=True)]
    )


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


def block_flags(plan: BlockPlan, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per block (shaped ``plan.block_counts``): whether it owns a kept window (its pass 1 computes
    something), and whether a kept window touches its write box (it has a voxel to write)."""
    owns = kept.astype(np.int64)
    touched = kept.astype(np.int64)
    for axis, layout in enumerate(plan.axes):
        n_windows = len(layout.starts)
        owner = np.zeros((n_windows, layout.n_blocks), dtype=np.int64)
        owner[np.arange(n_windows), np.asarray(layout.owner, dtype=np.int64)] = 1
        starts = np.asarray(layout.starts, dtype=np.int64)[:, None]
        ranges = [layout.write_range(k) for k in range(layout.n_blocks)]
        begins = np.asarray([b for b, _ in ranges], dtype=np.int64)[None, :]
        ends = np.asarray([e for _, e in ranges], dtype=np.int64)[None, :]
        touches = ((starts < ends) & (starts + layout.patch > begins)).astype(np.int64)
        owns = np.moveaxis(np.tensordot(owns, owner, axes=([axis], [0])), -1, axis)
        touched = np.moveaxis(np.tensordot(touched, touches, axes=([axis], [0])), -1, axis)
    return owns > 0, touched > 0


def skipped_windows(kept: np.ndarray | None) -> int:
    return 0 if kept is None else int(math.prod(kept.shape) - np.count_nonzero(kept))


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
