"""Random training crops read straight from the stores, with PyTC's acceptance rules.

Only the crop's box is ever read, never the whole volume. A draw picks a volume (when there are
several: PyTC's ``VolumeDataset`` rule, below) and a position with the patch inside its ROI, then,
cheapest reads first:

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

Several volumes (:meth:`CropSampler.of_volumes`) are sampled as PyTC v1's ``VolumeDataset`` samples
its list in training: every draw (each valid-mask and each foreground retry alike, as PyTC redraws
the whole sample) first picks volume ``i`` with probability ``n_i / sum(n)``, ``n_i`` the number of
positions of the patch in its ROI (PyTC's ``count_volume`` at stride 1: ``prod(roi - patch + 1)``;
PyTC's valid-mask positions are not counted, that code being commented out upstream), then a
position in it uniformly. One volume draws no volume index, so its crops are those of before.
"""

from __future__ import annotations

from collections.abc import Sequence
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


@dataclass(frozen=True)
class SampledVolume:
    """One training volume: image, label, optional valid mask and the region sampled (None: all)."""

    image: Volume
    label: Volume
    mask: Volume | None = None
    roi: Box | None = None


@dataclass
class Crop:
    """One accepted crop: arrays cover ``box`` grown by the margin (and ``extra_z`` sections)."""

    image: NDArray[np.generic]  # (z, y, x) or (c, z, y, x), raw dtype
    label: NDArray[np.generic]  # (z, y, x)
    mask: NDArray[np.generic] | None
    box: Box  # the patch (without margin), in volume coordinates
    misses: int  # draws below the foreground threshold, the accepted one included if it is below
    hit: bool  # the accepted crop meets the foreground threshold
    volume: int = 0  # which of the sampler's volumes it comes from


class CropSampler:
    """Draws crops of ``rules.patch_size`` inside ``roi`` from an image, label and optional mask
    (or from several such volumes: :meth:`of_volumes`)."""

    def __init__(
        self,
        image: Volume,
        label: Volume,
        rules: SamplingRules,
        mask: Volume | None = None,
        roi: Box | None = None,
        more: Sequence[SampledVolume] = (),
    ) -> None:
        volumes = (SampledVolume(image, label, mask, roi), *more)
        self.rois = tuple(_checked_roi(v, rules, index, len(volumes)) for index, v in enumerate(volumes))
        self.volumes, self.rules = volumes, rules
        self.image, self.label, self.mask, self.roi = image, label, mask, self.rois[0]
        # PyTC's VolumeDataset: a volume's weight is its number of patch positions (stride 1)
        self.positions = tuple(
            int(np.prod([s - p + 1 for s, p in zip(r.shape, rules.patch_size, strict=True)]))
            for r in self.rois
        )
        self._ends = np.cumsum(self.positions)

    @classmethod
    def of_volumes(cls, volumes: Sequence[SampledVolume], rules: SamplingRules) -> CropSampler:
        if not volumes:
            raise GeometryError("no training volume to sample from")
        first = volumes[0]
        return cls(first.image, first.label, rules, mask=first.mask, roi=first.roi, more=volumes[1:])

    def probabilities(self) -> NDArray[np.float64]:
        """The chance of each volume at a draw (before rejection): positions over all positions."""
        counts = np.asarray(self.positions, dtype=np.float64)
        return counts / counts.sum()

    def can_add_sections(self, extra_z: int) -> bool:
        return all(self.rules.patch_size[0] + extra_z <= roi.shape[0] for roi in self.rois)

    def draw(self, rng: np.random.Generator, extra_z: int = 0) -> Crop:
        """One accepted crop, ``extra_z`` sections taller than the patch."""
        rules = self.rules
        size = (rules.patch_size[0] + extra_z, rules.patch_size[1], rules.patch_size[2])
        misses, hit = 0, False
        for _ in range(rules.max_tries):
            index, box, mask = self._valid_box(rng, size)
            source = self.volumes[index]
            label = read_padded(source.label, box.grow((rules.margin,) * 3), "replicate")
            hit = rules.min_foreground <= 0 or self._foreground(label) >= rules.min_foreground
            if hit:
                break
            misses += 1
            if rng.random() >= rules.reject_probability:
                break  # a crop below the threshold, kept by chance; after max_tries PyTC keeps the last
        image = read_padded(source.image, box.grow((rules.margin,) * 3), "replicate")
        return Crop(image, label, mask, box, misses, hit, index)

    def choose(self, rng: np.random.Generator) -> int:
        """A volume index, as PyTC picks one: ``randint(0, sum(n) - 1)`` placed among the cumulative
        counts. One volume draws nothing."""
        if len(self.volumes) == 1:
            return 0
        return int(np.searchsorted(self._ends, int(rng.integers(0, int(self._ends[-1]))), side="right"))

    def _valid_box(
        self, rng: np.random.Generator, size: Shape3
    ) -> tuple[int, Box, NDArray[np.generic] | None]:
        rules = self.rules
        for _ in range(rules.valid_tries):
            index = self.choose(rng)
            roi, source = self.rois[index], self.volumes[index]
            start = [
                int(rng.integers(o, o + s - p + 1))
                for o, s, p in zip(roi.offset, roi.shape, size, strict=True)
            ]
            box = Box(tuple(start), size)
            if source.mask is None:
                return index, box, None
            mask = read_padded(source.mask, box.grow((rules.margin,) * 3), "replicate")
            if float(np.count_nonzero(self._inner(mask))) / box.size > rules.valid_ratio:
                return index, box, mask
        masks = ", ".join(str(v.mask.path) for v in self.volumes if v.mask is not None)
        raise SamplingError(
            f"no crop of shape {list(size)} with a valid-mask fraction above {rules.valid_ratio} in "
            f"{rules.valid_tries} draws from {masks or '?'}"
        )

    def _foreground(self, label: NDArray[np.generic]) -> int:
        return int(np.count_nonzero(self._inner(label)))

    def _inner(self, array: NDArray[np.generic]) -> NDArray[np.generic]:
        m = self.rules.margin
        return array[m : array.shape[0] - m, m : array.shape[1] - m, m : array.shape[2] - m] if m else array


def _checked_roi(volume: SampledVolume, rules: SamplingRules, index: int, count: int) -> Box:
    which = f"volume {index}: " if count > 1 else ""
    spatial = tuple(volume.image.shape[-3:])
    for name, other in (("label", volume.label), ("valid mask", volume.mask)):
        if other is not None and tuple(other.shape) != spatial:
            raise GeometryError(
                f"{which}the {name} {other.path} has shape {list(other.shape)}, the image "
                f"{volume.image.path} has spatial shape {list(spatial)}; they must be equal (z, y, x)"
            )
    roi = volume.roi if volume.roi is not None else Box.of_shape(spatial)
    if not Box.of_shape(spatial).contains(roi):
        raise GeometryError(f"{which}roi {roi} reaches outside the volume of shape {list(spatial)}")
    if any(p > s for p, s in zip(rules.patch_size, roi.shape, strict=True)):
        raise GeometryError(
            f"{which}patch_size {list(rules.patch_size)} is larger than the sampled region "
            f"{list(roi.shape)} (z, y, x)"
        )
    return roi
