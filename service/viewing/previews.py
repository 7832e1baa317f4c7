"""Slice previews: one z plane of a layer as a small PNG, cheap whatever the volume's size.

The plane comes from the coarsest pyramid level that still has :data:`PREVIEW_PX` pixels across
(the finest when none has), and is read in strips of rows, keeping every n-th row and column, so a
preview of a level without a pyramid reads one plane's chunks and holds a strip at a time. ``z`` is
a plane of the view's global grid (the first layer's voxels, usually the input's): each layer maps
it through its own scale and translation, so input, prediction and labels line up.

Images are drawn grey: ``uint8`` as stored, floats in [0, 1] (what sigmoid and softmax give) times
255, anything else stretched between its plane's minimum and maximum. Labels get a colour per id
(id 0 black), the same colour for an id in every preview.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from service.viewing.layers import Layer, Level
from volumes.box import Box
from volumes.open import open_volume

PREVIEW_PX = 384  # the larger side of a preview, at most


class OutsideError(ValueError):
    """The plane asked for is outside the layer."""


def pick_level(layer: Layer, px: int = PREVIEW_PX) -> Level:
    """The coarsest level with at least ``px`` pixels (or the whole extent) along y or x."""
    base = layer.base
    wanted = min(px, max(base.shape[-2:]))
    fitting = [level for level in layer.levels if max(level.shape[-2:]) >= wanted]
    return fitting[-1] if fitting else base


def plane_index(level: Level, z: float, global_nm: Sequence[float]) -> int:
    """The plane of ``level`` holding global plane ``z`` (``global_nm`` the global voxel size)."""
    position = (z + 0.5) * global_nm[0]
    index = int(np.floor((position - level.translation_nm[0]) / level.scale_nm[0]))
    if not 0 <= index < level.shape[-3]:
        raise OutsideError(f"plane {z} is outside {level.path} (it has {level.shape[-3]} planes)")
    return index


def read_plane(layer: Layer, level: Level, index: int, channel: int, px: int = PREVIEW_PX) -> np.ndarray:
    """Plane ``index`` (channel ``channel`` when the layer has channels), every n-th row and column."""
    volume = open_volume(layer.source.store, level.path)
    ny, nx = level.shape[-2:]
    step = max(1, -(-max(ny, nx) // px))
    strip = max(step, (volume.chunks[-2] // step) * step)
    rows = []
    lead = (min(channel, level.shape[0] - 1),) if len(level.shape) == 4 else ()
    for y0 in range(0, ny, strip):
        height = min(strip, ny - y0)
        offset = (*lead, index, y0, 0)
        shape = (*(1 for _ in lead), 1, height, nx)
        rows.append(volume.read(Box(offset, shape)).reshape(height, nx)[::step, ::step])
    return np.concatenate(rows, axis=0)


def to_png(plane: np.ndarray, labels: bool) -> bytes:
    image = Image.fromarray(_colours(plane) if labels else _grey(plane))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def preview_png(layer: Layer, z: float, global_nm: Sequence[float], channel: int = 0) -> bytes:
    level = pick_level(layer)
    plane = read_plane(layer, level, plane_index(level, z, global_nm), channel)
    return to_png(plane, layer.source.layer_type == "segmentation")


def _grey(plane: np.ndarray) -> np.ndarray:
    if plane.dtype == np.uint8:
        return plane
    values = plane.astype(np.float32)
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if plane.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return np.asarray(np.clip(scaled * 255.0, 0, 255), np.uint8)


def _colours(plane: np.ndarray) -> np.ndarray:
    ids = plane.astype(np.uint64)
    mixed = (ids * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)
    rgb = np.stack([(mixed >> np.uint64(s)) & np.uint64(0xFF) for s in (0, 8, 16)], axis=-1)
    rgb = np.asarray(rgb, np.uint8) | np.uint8(0x40)
    rgb[ids == 0] = 0
    return rgb
