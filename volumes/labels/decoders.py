"""PyTC's connected-components decoders: their parameters, a block's foreground, and the whole volume
decoded in memory.

The semantics are those of ``connectomics/utils/process.py`` (PyTC v1.0):

- ``binary_connected``: foreground ``volume[0] > thres``; connected components (scikit-image's
  ``label``: full connectivity, 26 in 3-D; 6 and 18 as options here); then the size filter.
- ``bc_connected``: foreground ``volume[0] > thres1`` and ``volume[1] < thres2``; connected
  components; a grey dilation of the labels by a box ``dilation_struct`` (the highest label wins
  where dilated objects meet); then the size filter on the dilated objects.
- ``affinity_connected`` (not in PyTC v1; the affinity tutorial's connected components): three
  channels z, y, x, channel ``a`` at voxel ``v`` the affinity between ``v`` and ``v - e_a``; voxels
  joined by an affinity ``> thres`` are one object; a voxel with no such edge is background.

Thresholds compare as PyTC does on its uint8 maps, ``value > int(255 * t)`` (and ``< int(255 * t)``
for the boundary), and as ``value > t`` on float maps. Objects are numbered as ``label`` numbers
them on the whole volume: in raster order of each object's first voxel (before the dilation, for
``bc_connected``). ``remove_small_mode: background`` zeroes objects of fewer than ``thres_small``
voxels (``skimage.morphology.remove_small_objects``), keeping the other numbers (PyTC's output has
gaps there); ``none`` keeps all. ``neighbor`` (PyTC's ``merge_small_objects``: each small object
takes the most frequent label in-plane around it, else 0) is accepted only where no two objects
touch in-plane (connected components at 18 or 26 connectivity, no dilation): there it zeroes every
small object as ``background`` does, unless the background itself is smaller than ``thres_small``
(PyTC then merges the background into an object), which :func:`check_background` refuses.
``background_2d`` zeroes an object's voxels in each z slice where it has fewer than ``thres_small``
(PyTC's ``remove_small_objects`` slice by slice); ``neighbor_2d`` is the same where ``neighbor`` is
taken (each slice's background checked as above).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

DecoderName = Literal[
    "binary_connected",
    "bc_connected",
    "affinity_connected",
    "binary_watershed",
    "bc_watershed",
    "bcd_watershed",
    "affinity_agglomerate",
]
RemoveSmallMode = Literal["background", "none", "neighbor", "background_2d", "neighbor_2d"]
PER_SLICE = ("background_2d", "neighbor_2d")
Connectivity = Literal[6, 18, 26]
CHANNELS: dict[str, int] = {
    "binary_connected": 1,
    "bc_connected": 2,
    "affinity_connected": 3,
    "binary_watershed": 1,
    "bc_watershed": 2,
    "bcd_watershed": 3,
    "affinity_agglomerate": 3,
}
WATERSHED = ("binary_watershed", "bc_watershed", "bcd_watershed")
# How many times a block's watershed halo may double where its flood cannot settle
# (:func:`volumes.labels.blockwise.grow_step`): a block task reads at most the block grown by
# ``halo * 2**HALO_DOUBLINGS`` on each side.
HALO_DOUBLINGS = 1


@dataclass(frozen=True)
class Decoder:
    """One decoder with its parameters (PyTC's names; see the module docstring).

    ``thresholds``: ``(thres,)`` for binary and affinity, ``(thres1, thres2)`` for bc, ``(thres1,
    ...)`` for the watershed decoders (2, 3 and 5 of them, see :mod:`volumes.labels.watershed`).
    ``dilation``: bc_connected's ``dilation_struct`` (odd sizes), None for the others.
    ``seed_thres``: the watershed decoders' size filter on whole seeds; ``margin``: how far past a
    block the blockwise watershed reads and floods (its halo), (0, 0, 0) for the others.
    ``affinity_agglomerate`` (:mod:`volumes.labels.agglomerate`): ``thresholds`` are its
    segmentation thresholds, ``aff_threshold`` and ``merge_function`` its own, ``margin`` (0, 0, 0):
    its fragments need no halo."""

    name: DecoderName
    thresholds: tuple[float, ...]
    thres_small: int = 128
    remove_small_mode: RemoveSmallMode = "background"
    connectivity: Connectivity = 26
    dilation: tuple[int, int, int] | None = None
    seed_thres: int = 32
    margin: tuple[int, int, int] = (0, 0, 0)
    aff_threshold: tuple[float, float] | None = None
    merge_function: str | None = None

    @property
    def channels(self) -> int:
        return CHANNELS[self.name]

    @property
    def watershed(self) -> bool:
        return self.name in WATERSHED

    @property
    def halo(self) -> tuple[int, int, int]:
        """How far the dilation reaches on each side (0 without one), or the watershed's margin."""
        if self.watershed or self.name == "affinity_agglomerate":
            return self.margin
        if self.dilation is None:
            return (0, 0, 0)
        z, y, x = (s // 2 for s in self.dilation)
        return (z, y, x)

    @property
    def per_slice(self) -> bool:
        """The size filter counts an object's voxels per z slice (``background_2d``, ``neighbor_2d``)."""
        return self.remove_small_mode in PER_SLICE

    def removes(self, sizes: np.ndarray) -> np.ndarray:
        """Which objects of these voxel counts the size filter drops (none for the per-slice modes,
        whose filter acts on each slice of an object, :func:`volumes.labels.merge.slice_filter`)."""
        if self.remove_small_mode == "none" or self.per_slice:
            return np.zeros(sizes.shape, dtype=bool)
        return sizes < self.thres_small


class SmallBackgroundError(ValueError):
    """``neighbor`` over a volume whose background has fewer than ``thres_small`` voxels."""


def check_background(decoder: Decoder, background: int) -> None:
    """Under ``neighbor``, PyTC treats the background (label 0) as one more object: with fewer than
    ``thres_small`` voxels it is merged into the object most around it. Not reproduced: refused."""
    if decoder.remove_small_mode in ("neighbor", "neighbor_2d") and 0 < background < decoder.thres_small:
        raise SmallBackgroundError(
            f"decoder.remove_small_mode: {decoder.remove_small_mode!r} with a background of {background} "
            "voxels (in a z slice, for neighbor_2d), fewer than "
            f"thres_small ({decoder.thres_small}): PyTC would merge the background itself into an "
            "object, which is not reproduced; use background"
        )


def above(values: np.ndarray, t: float) -> np.ndarray:
    """``values > t`` as PyTC compares: on uint8 maps against ``int(255 * t)``."""
    return values > (int(255 * t) if values.dtype == np.uint8 else t)


def below(values: np.ndarray, t: float) -> np.ndarray:
    return values < (int(255 * t) if values.dtype == np.uint8 else t)


def foreground(decoder: Decoder, pred: np.ndarray) -> np.ndarray:
    """The binary or bc foreground of ``pred`` (C, Z, Y, X), boolean (Z, Y, X); for the watershed
    decoders, their seed map (the mask whose connected components are the seeds)."""
    if decoder.watershed:
        return seed_map(decoder, pred)
    if decoder.name == "binary_connected":
        return above(pred[0], decoder.thresholds[0])
    mask = above(pred[0], decoder.thresholds[0])
    mask &= below(pred[1], decoder.thresholds[1])
    return mask


def distance(values: np.ndarray) -> np.ndarray:
    """The signed distance channel as PyTC reads it: ``d / 255 * 2 - 1`` on uint8 maps."""
    if values.dtype == np.uint8:
        return (values / 255.0) * 2.0 - 1.0
    return values


def seed_map(decoder: Decoder, pred: np.ndarray) -> np.ndarray:
    """Where seeds are (boolean (Z, Y, X)) in ``pred`` (C, Z, Y, X)."""
    t = decoder.thresholds
    mask = above(pred[0], t[0])
    if decoder.name in ("bc_watershed", "bcd_watershed"):
        mask &= below(pred[1], t[1])
    if decoder.name == "bcd_watershed":
        mask &= distance(pred[2]) > t[3]
    return mask


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 neighbourhood of a connectivity (6, 18 or 26), as scipy wants it."""
    from scipy import ndimage  # scipy.ndimage is imported where it is used: not at a job's start-up

    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def dilate(labels: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Grey dilation by a box of odd ``size``: the highest label within reach (scikit-image's
    ``dilation`` with ``np.ones(size)``; at the array's faces only voxels inside count).

    A box's maximum is the maximum along each axis in turn; along an axis, that of the voxels at
    each offset up to the radius, by in-place maxima of shifted views (2r passes of numpy's
    vectorised maximum): the same values as ``scipy.ndimage.maximum_filter(mode="nearest")``, and
    a job that dilates never imports scipy.ndimage (0.35 s of CPU at its start)."""
    if all(s == 1 for s in size):
        return labels
    out = labels
    for axis, width in enumerate(size):
        if width > 1:
            out = _max_along(out, axis, width // 2)
    return out


def _max_along(a: np.ndarray, axis: int, radius: int) -> np.ndarray:
    """out[i] = max(a[i - radius .. i + radius]) along ``axis``, the window cut at the ends."""
    out = a.copy()
    n = a.shape[axis]

    def part(lo: int, hi: int) -> tuple[slice, ...]:
        return tuple(slice(lo, hi) if d == axis else slice(None) for d in range(a.ndim))

    for d in range(1, min(radius, n - 1) + 1):
        ahead, behind = out[part(0, n - d)], out[part(d, n)]
        np.maximum(ahead, a[part(d, n)], out=ahead)  # the voxel d further on
        np.maximum(behind, a[part(0, n - d)], out=behind)  # the voxel d before
    return out
