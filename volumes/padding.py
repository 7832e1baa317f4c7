"""Reading a box that may reach outside the volume, padded as if the whole volume had been padded.

Blocks read their context from real neighbours; only where the box leaves the *volume* does padding
apply, and then exactly as ``np.pad(whole_volume, pads, mode)`` would fill it, so that a block's
input never depends on how the volume was cut into blocks::

        volume  |<------------ n ------------>|
    box     |<--+--------- inside ---------+--+-->|
            pad  real voxels (always read)    pad   <- mirrored / edge / 0, per pad_mode

Each axis's coordinates are mapped to in-volume indices (periodic mirroring for ``reflect``,
clamping for ``replicate``), the bounding box of those indices is read once, and the padded result
is gathered from it along each axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from volumes.box import Box
from volumes.errors import GeometryError
from volumes.volume import Volume

PadMode = Literal["reflect", "replicate", "constant"]


def read_padded(volume: Volume, box: Box, pad_mode: PadMode, channel: int | None = None) -> np.ndarray:
    """The voxels of spatial ``box`` (z, y, x), padded by ``pad_mode`` where it leaves ``volume``.

    ``reflect`` is numpy's "reflect" (the edge voxel is not repeated; pads longer than the volume
    keep reflecting), ``replicate`` is numpy's "edge", ``constant`` is 0. A 4D (c, z, y, x) volume
    gives (c, *box.shape), or box.shape for one ``channel``.
    """
    lead_offset, lead_shape = _leading(volume, channel)
    spatial = tuple(volume.shape[len(lead_shape) :])
    if box.ndim != 3:
        raise GeometryError(f"box {box} must be spatial (z, y, x) for volume {volume.path}")
    if box.is_empty():
        data = np.zeros((*lead_shape, *box.shape), volume.dtype)
    elif pad_mode == "constant":
        data = _read_constant(volume, box, spatial, lead_offset, lead_shape)
    elif pad_mode in ("reflect", "replicate"):
        data = _read_mapped(volume, box, spatial, lead_offset, lead_shape, pad_mode)
    else:
        raise ValueError(f"pad_mode {pad_mode!r} is not one of reflect, replicate, constant")
    return data[0] if channel is not None else data


def source_indices(
    start: int, length: int, size: int, pad_mode: Literal["reflect", "replicate"]
) -> np.ndarray:
    """In-volume index of each coordinate ``start .. start+length-1`` on an axis of ``size`` voxels.

    ``reflect`` mirrors about the first and last voxel with period ``2 * (size - 1)``, which is
    what repeated reflection by ``np.pad`` amounts to; a one-voxel axis repeats its voxel, as there.
    """
    if size <= 0:
        raise GeometryError(f"cannot pad an axis of size {size}")
    coords = np.arange(start, start + length)
    if pad_mode == "replicate" or size == 1:
        return np.clip(coords, 0, size - 1)
    period = 2 * (size - 1)
    folded = np.mod(coords, period)
    return np.where(folded < size, folded, period - folded)


def _leading(volume: Volume, channel: int | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Offset and shape of the non-spatial axes to read: none for 3D, all or one channel for 4D."""
    if volume.ndim == 3 and channel is None:
        return (), ()
    if volume.ndim == 4 and channel is None:
        return (0,), (volume.shape[0],)
    if volume.ndim == 4 and channel is not None and 0 <= channel < volume.shape[0]:
        return (channel,), (1,)
    raise GeometryError(
        f"channel {channel} does not fit volume {volume.path} of shape {volume.shape}: "
        "expected (z, y, x) without a channel or (c, z, y, x) with 0 <= channel < c"
    )


def _read_constant(
    volume: Volume,
    box: Box,
    spatial: Sequence[int],
    lead_offset: tuple[int, ...],
    lead_shape: tuple[int, ...],
) -> np.ndarray:
    """Zeros with the part of ``box`` inside the volume read into place."""
    data = np.zeros((*lead_shape, *box.shape), volume.dtype)
    inside = box.intersect(Box.of_shape(spatial))
    if not inside.is_empty():
        target = (slice(None),) * len(lead_shape) + inside.relative_to(box).slices()
        data[target] = volume.read(Box((*lead_offset, *inside.offset), (*lead_shape, *inside.shape)))
    return data


def _read_mapped(
    volume: Volume,
    box: Box,
    spatial: Sequence[int],
    lead_offset: tuple[int, ...],
    lead_shape: tuple[int, ...],
    pad_mode: Literal["reflect", "replicate"],
) -> np.ndarray:
    """Read the hull of the mapped indices once, then gather each axis that is not a plain range."""
    indices = [
        source_indices(o, s, n, pad_mode) for o, s, n in zip(box.offset, box.shape, spatial, strict=True)
    ]
    lo = tuple(int(i.min()) for i in indices)
    hull = tuple(int(i.max()) + 1 - low for i, low in zip(indices, lo, strict=True))
    data = volume.read(Box((*lead_offset, *lo), (*lead_shape, *hull)))
    for axis, (idx, low) in enumerate(zip(indices, lo, strict=True)):
        local = idx - low
        if not np.array_equal(local, np.arange(data.shape[len(lead_shape) + axis])):
            data = np.take(data, local, axis=len(lead_shape) + axis)
    return data
