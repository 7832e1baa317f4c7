"""Multiscale pyramids: which levels an image gets, and how one level is computed from the one above.

Levels halve the finer axes until the level fits in one chunk; z is halved only once the y and x
voxels have reached its size (anisotropic EM: 30 x 8 x 8 nm gives 30x16x16, 30x32x32, 60x64x64,
...), and an axis of one voxel is never halved. Factors are cumulative, level 0 is (1, 1, 1)::

    pyramid_factors((64, 512, 512), (32, 256, 256), (30, 8, 8))
    -> ((1, 1, 1), (1, 2, 2), (1, 4, 4), (2, 8, 8))

A level's voxel ``i`` summarises the source voxels ``i * f ... i * f + f - 1`` that exist (the last
one along an axis may have fewer). Predictions are averaged (:func:`downsample_mean`: accumulated in
float64, rounded for integer outputs); labels keep their ids (:func:`downsample_labels`: the most
frequent id of the window, ties to the smallest, or the first voxel for ``strided``). Both work on
any leading axes (channels), and on a box whose start is a multiple of the factors: a pyramid is
computed block by block with the values of the whole.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from numpy.typing import DTypeLike

from volumes.errors import GeometryError

Factors = tuple[int, int, int]
LabelRule = Literal["mode", "strided"]
PyramidMethod = Literal["mean", "mode", "strided"]
MAX_LEVELS = 24  # 2**23 voxels along an axis reach one chunk well before this


def pyramid_factors(
    shape: Sequence[int], chunks: Sequence[int], voxel_size: Sequence[float] | None
) -> tuple[Factors, ...]:
    """Cumulative (z, y, x) factors of every level, from (1, 1, 1) down to the first level whose
    shape fits in one chunk (``chunks``, z y x). An unknown voxel size counts as isotropic."""
    shape3, chunks3 = _three(shape, "shape"), _three(chunks, "chunks")
    base = [float(v) for v in voxel_size] if voxel_size is not None else [1.0, 1.0, 1.0]
    levels: list[Factors] = [(1, 1, 1)]
    while len(levels) < MAX_LEVELS:
        current = level_shape(shape3, levels[-1])
        if all(s <= c for s, c in zip(current, chunks3, strict=True)):
            break
        step = _step(current, chunks3, [v * f for v, f in zip(base, levels[-1], strict=True)])
        z, y, x = (f * s for f, s in zip(levels[-1], step, strict=True))
        levels.append((z, y, x))
    return tuple(levels)


def _step(shape: Sequence[int], chunks: Sequence[int], voxel: Sequence[float]) -> Factors:
    """This level's halving: y and x while longer than one voxel, z once y and x reached its size."""
    z, y, x = (2 if s > 1 else 1 for s in shape)
    xy = [v for v, s in zip(voxel[1:], shape[1:], strict=True) if s > 1]
    if xy and min(xy) < voxel[0] * (1 - 1e-9):
        z = 1
    if (z, y, x) == (1, 1, 1):  # only z is left too long: halve what does not fit
        z, y, x = (2 if s > c else 1 for s, c in zip(shape, chunks, strict=True))
    return z, y, x


def level_shape(shape: Sequence[int], factors: Sequence[int]) -> tuple[int, ...]:
    """The spatial shape of the level ``factors`` of an image of ``shape`` (leading axes kept)."""
    lead = len(shape) - len(factors)
    return (*shape[:lead], *(-(-int(s) // int(f)) for s, f in zip(shape[lead:], factors, strict=True)))


def downsample_mean(data: np.ndarray, factors: Sequence[int], dtype: DTypeLike) -> np.ndarray:
    """The mean of each window of ``factors`` over the last axes of ``data`` (the voxels that exist
    in a window cut by the edge), as ``dtype``: floats as they come, integers rounded and clipped."""
    windows, valid = _windows(data.astype(np.float64, copy=False), factors, 0.0)
    counts = valid.sum(axis=-1)
    mean = windows.sum(axis=-1) / np.maximum(counts, 1)
    out = np.dtype(dtype)
    if out.kind in "iu":
        info = np.iinfo(out)
        return np.clip(np.rint(mean), info.min, info.max).astype(out)
    return mean.astype(out)


def downsample_labels(data: np.ndarray, factors: Sequence[int], rule: LabelRule = "mode") -> np.ndarray:
    """Labels of the level below: per window of ``factors`` over the last axes, the most frequent id
    (``mode``; ties to the smallest id; voxels cut by the edge do not vote) or the window's first
    voxel (``strided``). Ids are never mixed: every output id is one of the window's."""
    if rule == "strided":
        lead = data.ndim - len(factors)
        return np.ascontiguousarray(
            data[(slice(None),) * lead + tuple(slice(None, None, int(f)) for f in factors)]
        )
    if rule != "mode":
        raise ValueError(f"unknown label rule {rule!r}; expected 'mode' or 'strided'")
    windows, valid = _windows(data, factors, 0)
    size = windows.shape[-1]
    votes = np.zeros(windows.shape, dtype=np.int16)
    for i in range(size):
        votes[..., i] = ((windows == windows[..., i : i + 1]) & valid).sum(axis=-1)
    votes = np.where(valid, votes, -1)
    best = votes.max(axis=-1, keepdims=True)
    top = np.where(votes == best, windows, _largest(windows.dtype))
    return top.min(axis=-1).astype(data.dtype, copy=False)


def downsample(
    data: np.ndarray, factors: Sequence[int], method: PyramidMethod, dtype: DTypeLike
) -> np.ndarray:
    """:func:`downsample_mean` for ``mean``, else :func:`downsample_labels` with ``method`` as rule."""
    if method == "mean":
        return downsample_mean(data, factors, dtype)
    return downsample_labels(data, factors, method).astype(dtype, copy=False)


def _windows(data: np.ndarray, factors: Sequence[int], fill: float) -> tuple[np.ndarray, np.ndarray]:
    """``data`` padded to whole windows and viewed as (..., out z, out y, out x, window voxels), and
    which window voxels exist."""
    n = len(factors)
    lead, spatial = data.shape[:-n], data.shape[-n:]
    out = [-(-s // int(f)) for s, f in zip(spatial, factors, strict=True)]
    pad = [(0, 0)] * len(lead) + [(0, o * int(f) - s) for o, f, s in zip(out, factors, spatial, strict=True)]
    padded = np.pad(data, pad, constant_values=fill) if any(p for _, p in pad) else data
    split = [*lead, *(d for o, f in zip(out, factors, strict=True) for d in (o, int(f)))]
    order = [
        *range(len(lead)),
        *(len(lead) + 2 * i for i in range(n)),
        *(len(lead) + 2 * i + 1 for i in range(n)),
    ]
    windows = padded.reshape(split).transpose(order).reshape(*lead, *out, math.prod(int(f) for f in factors))
    valid = np.ones([*out, *(int(f) for f in factors)], dtype=bool)
    for axis, (s, f) in enumerate(zip(spatial, factors, strict=True)):
        present = (np.arange(out[axis] * int(f)) < s).reshape(out[axis], int(f))
        shape = [1] * (2 * n)
        shape[axis], shape[n + axis] = out[axis], int(f)
        valid = valid & present.reshape(shape)
    return windows, valid.reshape(*out, -1)


def _largest(dtype: np.dtype) -> int | float | bool:
    if dtype.kind == "b":
        return True
    return int(np.iinfo(dtype).max) if dtype.kind in "iu" else float("inf")


def _three(values: Sequence[int], name: str) -> tuple[int, int, int]:
    if len(values) != 3 or any(int(v) < 1 for v in values):
        raise GeometryError(f"pyramid: {name} must be three positive sizes (z, y, x), got {tuple(values)}")
    return int(values[0]), int(values[1]), int(values[2])
