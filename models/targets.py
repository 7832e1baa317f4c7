"""Training targets per head, made from a label crop (PyTC's ``seg_to_*`` rules), in numpy.

They run in the data loader's threads, after augmentation, on a label crop read with a ``margin``
of real context on every side (:func:`target_margin`), so contours and affinities at the crop's
border see their true neighbours; the margin is cut off the result.

- ``binary``: foreground, ``label > 0``.
- ``boundary``: instance contours, PyTC's ``seg_to_instance_bd`` (3x3 in-plane window, ``do_bg``):
  a voxel is contour when its (1, 3, 3) neighbourhood holds more than one label value, background
  included, so both sides of a border are marked.
- ``affinity``: nearest-neighbour affinities in (z, y, x) order: channel ``a`` is 1 where the voxel
  and its predecessor along axis ``a`` carry the same non-zero label.
- ``semantic``: one channel per class, one-hot of the label's class ids ``0 .. classes-1``.

Before a head's target is made, its label may be eroded then dilated in xy, as PyTC's
``MODEL.LABEL_EROSION`` and ``LABEL_DILATION`` do per target (:func:`widen_border`,
:func:`dilate_label`); the margin then grows by both, so the crop's border sees real neighbours
where PyTC's crop reflects its own edge.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from models.errors import ModelConfigError
from models.training_config import HeadSpec

F32 = NDArray[np.float32]


def target_margin(heads: Sequence[HeadSpec]) -> int:
    """Voxels of context the targets need around the crop: 1 for contours and affinities, plus a
    head's label erosion and dilation."""
    return max(
        (int(h.kind in ("boundary", "affinity")) + h.label_erosion + h.label_dilation for h in heads),
        default=0,
    )


def make_targets(label: NDArray[np.generic], heads: Sequence[HeadSpec], margin: int = 0) -> F32:
    """All heads' targets stacked to ``(channels, z, y, x)`` float32, ``margin`` cut from each side.

    ``label`` is a (z, y, x) crop of instance ids (or class ids for semantic heads).
    """
    if label.ndim != 3:
        raise ModelConfigError(f"targets: expected a (z, y, x) label crop, got shape {label.shape}")
    if margin < target_margin(heads):
        raise ModelConfigError(
            f"targets: heads {[h.kind for h in heads]} need a margin of {target_margin(heads)} voxel(s)"
        )
    inner = tuple(slice(margin, s - margin) for s in label.shape)
    parts = [_head_target(_transformed(label, head), head)[(slice(None), *inner)] for head in heads]
    return np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=np.float32)


def _transformed(label: NDArray[np.generic], head: HeadSpec) -> NDArray[np.generic]:
    if head.label_erosion:
        label = widen_border(label, head.label_erosion)
    if head.label_dilation:
        label = dilate_label(label, head.label_dilation)
    return label


def widen_border(label: NDArray[np.generic], width: int) -> NDArray[np.generic]:
    """PyTC's ``seg_widen_border`` (Kisuk Lee's border widening): a voxel whose in-plane window of
    ``(2 width + 1)`` squared voxels holds more than one non-zero id becomes background (0). Each
    section on its own; the window reflects at the array's edge (numpy's ``reflect``, scipy's
    ``mirror``), as PyTC pads it. ``width`` 0 returns the label unchanged."""
    if width <= 0:
        return label
    if label.ndim not in (2, 3):
        raise ModelConfigError(
            f"label erosion: expected a (z, y, x) or (y, x) label, got shape {label.shape}"
        )
    side = 2 * width + 1
    size = (1, side, side) if label.ndim == 3 else (side, side)
    ids = np.asarray(label)
    if ids.dtype.kind == "b":
        ids = ids.astype(np.uint8)
    highest = ndimage.maximum_filter(ids, size=size, mode="mirror")
    # the smallest non-zero id of each window: background counts as larger than every id
    ceiling = np.iinfo(ids.dtype).max if ids.dtype.kind in "iu" else np.inf
    lowest = ndimage.minimum_filter(np.where(ids == 0, ceiling, ids), size=size, mode="mirror")
    return np.where(highest == lowest, ids, 0).astype(ids.dtype, copy=False)


def dilate_label(label: NDArray[np.generic], width: int) -> NDArray[np.generic]:
    """PyTC's label dilation (``dilate_label``): each voxel takes the largest id of its in-plane
    window of ``(2 width + 1)`` squared voxels (grey dilation, so a larger id wins a contested
    voxel). ``width`` 0 returns the label unchanged."""
    if width <= 0:
        return label
    side = 2 * width + 1
    size = (1, side, side) if label.ndim == 3 else (side, side)
    return ndimage.maximum_filter(np.asarray(label), size=size, mode="nearest")


def _head_target(label: NDArray[np.generic], head: HeadSpec) -> F32:
    if head.kind == "binary":
        return binary_target(label)
    if head.kind == "boundary":
        return boundary_target(label)
    if head.kind == "affinity":
        return affinity_target(label)
    return semantic_target(label, int(head.classes or 0))


def binary_target(label: NDArray[np.generic]) -> F32:
    return (np.asarray(label) != 0).astype(np.float32)[None]


def boundary_target(label: NDArray[np.generic]) -> F32:
    window = (1, 3, 3)
    high = ndimage.maximum_filter(label, size=window, mode="nearest")
    low = ndimage.minimum_filter(label, size=window, mode="nearest")
    return (high != low).astype(np.float32)[None]


def affinity_target(label: NDArray[np.generic]) -> F32:
    """Channel ``a``: ``label[p] == label[p - e_a] != 0``; 0 where ``p - e_a`` is outside the crop."""
    out = np.zeros((3, *label.shape), dtype=np.float32)
    for axis in range(3):
        here: list[slice] = [slice(None)] * 3
        before: list[slice] = [slice(None)] * 3
        here[axis], before[axis] = slice(1, None), slice(None, -1)
        current, previous = label[tuple(here)], label[tuple(before)]
        out[axis][tuple(here)] = (current == previous) & (current != 0)
    return out


def semantic_target(label: NDArray[np.generic], classes: int) -> F32:
    if classes < 2:
        raise ModelConfigError(f"targets: a semantic head needs classes >= 2, got {classes}")
    if label.size and (int(label.min()) < 0 or int(label.max()) >= classes):
        raise ModelConfigError(
            f"targets: semantic label values must lie in 0..{classes - 1} (classes: {classes}), "
            f"found {int(label.min())}..{int(label.max())}"
        )
    ids = label.astype(np.int64)
    return (ids[None] == np.arange(classes).reshape(-1, 1, 1, 1)).astype(np.float32)
