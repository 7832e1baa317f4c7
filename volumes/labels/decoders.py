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
gaps there); ``none`` keeps all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

DecoderName = Literal["binary_connected", "bc_connected", "affinity_connected"]
RemoveSmallMode = Literal["background", "none"]
Connectivity = Literal[6, 18, 26]
CHANNELS: dict[str, int] = {"binary_connected": 1, "bc_connected": 2, "affinity_connected": 3}


@dataclass(frozen=True)
class Decoder:
    """One decoder with its parameters (PyTC's names; see the module docstring).

    ``thresholds``: ``(thres,)`` for binary and affinity, ``(thres1, thres2)`` for bc.
    ``dilation``: bc_connected's ``dilation_struct`` (odd sizes), None for the others."""

    name: DecoderName
    thresholds: tuple[float, ...]
    thres_small: int = 128
    remove_small_mode: RemoveSmallMode = "background"
    connectivity: Connectivity = 26
    dilation: tuple[int, int, int] | None = None

    @property
    def channels(self) -> int:
        return CHANNELS[self.name]

    @property
    def halo(self) -> tuple[int, int, int]:
        """How far the dilation reaches on each side (0 without one)."""
        if self.dilation is None:
            return (0, 0, 0)
        z, y, x = (s // 2 for s in self.dilation)
        return (z, y, x)

    def removes(self, sizes: np.ndarray) -> np.ndarray:
        """Which objects of these voxel counts the size filter drops."""
        if self.remove_small_mode == "none":
            return np.zeros(sizes.shape, dtype=bool)
        return sizes < self.thres_small


def above(values: np.ndarray, t: float) -> np.ndarray:
    """``values > t`` as PyTC compares: on uint8 maps against ``int(255 * t)``."""
    return values > (int(255 * t) if values.dtype == np.uint8 else t)


def below(values: np.ndarray, t: float) -> np.ndarray:
    return values < (int(255 * t) if values.dtype == np.uint8 else t)


def foreground(decoder: Decoder, pred: np.ndarray) -> np.ndarray:
    """The binary or bc foreground of ``pred`` (C, Z, Y, X), boolean (Z, Y, X)."""
    if decoder.name == "binary_connected":
        return above(pred[0], decoder.thresholds[0])
    mask = above(pred[0], decoder.thresholds[0])
    mask &= below(pred[1], decoder.thresholds[1])
    return mask


def structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 neighbourhood of a connectivity (6, 18 or 26), as scipy wants it."""
    return ndimage.generate_binary_structure(3, {6: 1, 18: 2, 26: 3}[connectivity])


def dilate(labels: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Grey dilation by a box of odd ``size``: the highest label within reach (scikit-image's
    ``dilation`` with ``np.ones(size)``; at the array's faces only voxels inside count)."""
    if all(s == 1 for s in size):
        return labels
    return ndimage.maximum_filter(labels, size=size, mode="nearest")
