"""The global sliding-window grid, PyTC's and MONAI's rule.

Windows live in *output coordinates*: voxel 0 is the first voxel of the ROI. The grid covers the ROI
grown by ``pad_size`` on both sides, so windows may start before 0 and end after the ROI; what they
read there comes from the real volume when it exists, and from padding outside it::

    pad |<------------------ ROI (output) ------------------>| pad
    [---w0---]
          [---w1---]
                [---w2---]     ...          [--w(n-1), snapped--]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from volumes.box import Box
from volumes.errors import GeometryError


def stride_from_overlap(patch_size: Sequence[int], overlap: float) -> tuple[int, ...]:
    """MONAI's and PyTC's ``stride = int(patch * (1 - overlap))``, at least 1."""
    if not 0.0 <= overlap < 1.0:
        raise GeometryError(f"overlap must be in [0, 1), got {overlap}")
    return tuple(max(1, int(p * (1.0 - overlap))) for p in patch_size)


def window_starts(length: int, patch: int, stride: int) -> tuple[int, ...]:
    """Window starts over one axis of ``length`` voxels: ``n = 1 + ceil((D - w) / s)``, start ``i * s``,
    the last one snapped to ``D - w``. An axis shorter than the patch gets one window, centred the way
    MONAI pads it (``(w - D) // 2`` before)."""
    if patch <= 0 or stride <= 0 or length <= 0:
        raise GeometryError(f"patch {patch}, stride {stride} and length {length} must be positive")
    if stride > patch:
        raise GeometryError(f"stride {stride} is larger than the patch {patch}: voxels would be skipped")
    if length <= patch:
        return (-((patch - length) // 2),)
    count = 1 + math.ceil((length - patch) / stride)
    return tuple(min(i * stride, length - patch) for i in range(count))


@dataclass(frozen=True)
class WindowGrid:
    """The product of per-axis window starts, in output coordinates."""

    patch: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per axis, increasing

    @classmethod
    def over_roi(
        cls, roi_shape: Sequence[int], patch: Sequence[int], stride: Sequence[int], pad: Sequence[int]
    ) -> WindowGrid:
        starts = tuple(
            tuple(s - p for s in window_starts(n + 2 * p, w, st))
            for n, w, st, p in zip(roi_shape, patch, stride, pad, strict=True)
        )
        return cls(tuple(int(w) for w in patch), starts)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def count(self) -> int:
        return math.prod(self.counts)

    def box(self, index: Sequence[int]) -> Box:
        return Box(tuple(s[i] for s, i in zip(self.starts, index, strict=True)), self.patch)

    def indices(self, ranges: Sequence[range] | None = None) -> Iterator[tuple[int, ...]]:
        """Window indices in C order, optionally restricted to per-axis index ranges."""
        ranges = ranges if ranges is not None else [range(n) for n in self.counts]
        return itertools.product(*ranges)

    def axis_range_touching(self, axis: int, begin: int, end: int) -> range:
        """Indices of windows along ``axis`` that overlap ``[begin, end)``."""
        starts, w = self.starts[axis], self.patch[axis]
        hits = [i for i, s in enumerate(starts) if s < end and s + w > begin]
        return range(hits[0], hits[-1] + 1) if hits else range(0)

    def ranges_touching(self, box: Box) -> list[range]:
        return [
            self.axis_range_touching(a, b, e)
            for a, (b, e) in enumerate(zip(box.offset, box.end, strict=True))
        ]
