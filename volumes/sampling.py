"""Random training crops read straight from the stores, with PyTC's acceptance rules.

Only the crop's box is ever read, never the whole volume. A draw picks a position with the patch
inside the ROI, then, cheapest reads first:

1. the valid mask (if any): rejected unless its valid fraction *exceeds* ``valid_ratio`` (PyTC's
   ``VALID_RATIO``, 0.5), at most ``valid_tries`` draws, then :class:`SamplingError`;
2. the label: a crop with fewer than ``min_foreground`` foreground voxels is rejected with
   probability ``reject_probability`` (PyTC's ``REJECT_SAMPLING``: ``SIZE_THRES``, ``P`` = 0.95),
   at most ``max_tries`` draws, after which the last draw is taken as PyTC does;
3. the image, for the accepted crop only.

Every crop is read with ``margin`` voxels of extra context on each side (targets such as contours
need their neighbours); outside the volume the context is replicated. Each :class:`Crop` reports
its draws so the caller can tell a volume without any foreground from bad luck (a budget of
draws in a row without foreground, across crops) instead of looping forever.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from volumes.box import Box
from volumes.errors import GeometryError, VolumeError
from volumes.padding import read_padded
from volumes.volume import Volume

Shape3 = tuple[int, int, int]


class SamplingError(VolumeError, ValueError):
    """No acceptable crop can be drawn: too little valid mask, or no foreground within the budget."""


@dataclass(frozen=True)
class SamplingRules:
    patch_size: Shape3
    margin: int = 0
    valid_ratio: float = 0.5
    min_foreground: int = 0  # voxels; 0 turns rejection off
    reject_probability: float = 0.95
    max_tries: int = 50
    valid_tries: int = 1000


@dataclass
class Crop:
    """One accepted crop: arrays cover ``box`` grown by the margin (and ``extra_z`` sections)."""

    image: NDArray[np.generic]  # (z, y, x) or (c, z, y, x), raw dtype
    label: NDArray[np.generic]  # (z, y, x)
    mask: NDArray[np.generic] | None
    box: Box  # the patch (without margin), in volume coordinates
    misses: int  # draws below the foreground threshold, the accepted one included if it is below
    hit: bool  # the accepted crop meets the foreground threshold


class CropSampler:
    """Draws crops of ``rules.patch_size`` inside ``roi`` from an image, label and optional mask."""

    def __init__(
        self,
        image: Volume,
        label: Volume,
        rules: SamplingRules,
        mask: Volume | None = None,
        roi: Box | None = None,
    ) -> None:
        spatial = tuple(image.shape[-3:])
        for name, volume in (("label", label), ("valid mask", mask)):
            if volume is not None and tuple(volume.shape) != spatial:
                raise GeometryError(
                    f"the {name} {volume.path} has shape {list(volume.shape)}, the image "
                    f"{image.path} has spatial shape {list(spatial)}; they must be equal (z, y, x)"
                )
        self.roi = roi if roi is not None else Box.of_shape(spatial)
        if not Box.of_shape(spatial).contains(self.roi):
            raise GeometryError(f"roi {self.roi} reaches outside the volume of shape {list(spatial)}")
        if any(p > s for p, s in zip(rules.patch_size, self.roi.shape, strict=True)):
            raise GeometryError(
                f"patch_size {list(rules.patch_size)} is larger than the sampled region "
                f"{list(self.roi.shape)} (z, y, x)"
            )
        self.image, self.label, self.mask, self.rules = image, label, mask, rules

    def can_add_sections(self, extra_z: int) -> bool:
        return self.rules.patch_size[0] + extra_z <= self.roi.shape[0]

    def draw(self, rng: np.random.Generator, extra_z: int = 0) -> Crop:
        """One accepted crop, ``extra_z`` sections taller than the patch."""
        rules = self.rules
        size = (rules.patch_size[0] + extra_z, rules.patch_size[1], rules.patch_size[2])
        misses, hit = 0, False
        for _ in range(rules.max_tries):
            box, mask = self._valid_box(rng, size)
            label = read_padded(self.label, box.grow((rules.margin,) * 3), "replicate")
            hit = rules.min_foreground <= 0 or self._foreground(label) >= rules.min_foreground
            if hit:
                break
            misses += 1
            if rng.random() >= rules.reject_probability:
                break  # a crop below the threshold, kept by chance; after max_tries PyTC keeps the last
        image = read_padded(self.image, box.grow((rules.margin,) * 3), "replicate")
        return Crop(image, label, mask, box, misses, hit)

    def _valid_box(self, rng: np.random.Generator, size: Shape3) -> tuple[Box, NDArray[np.generic] | None]:
        rules = self.rules
        for _ in range(rules.valid_tries):
            start = [
                int(rng.integers(o, o + s - p + 1))
                for o, s, p in zip(self.roi.offset, self.roi.shape, size, strict=True)
            ]
            box = Box(tuple(start), size)
            if self.mask is None:
                return box, None
            mask = read_padded(self.mask, box.grow((rules.margin,) * 3), "replicate")
            if float(np.count_nonzero(self._inner(mask))) / box.size > rules.valid_ratio:
                return box, mask
        raise SamplingError(
            f"no crop of shape {list(size)} with a valid-mask fraction above {rules.valid_ratio} in "
            f"{rules.valid_tries} draws from {self.mask.path if self.mask else '?'}"
        )

    def _foreground(self, label: NDArray[np.generic]) -> int:
        return int(np.count_nonzero(self._inner(label)))

    def _inner(self, array: NDArray[np.generic]) -> NDArray[np.generic]:
        m = self.rules.margin
        return array[m : array.shape[0] - m, m : array.shape[1] - m, m : array.shape[2] - m] if m else array
