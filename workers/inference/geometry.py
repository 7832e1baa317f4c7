"""The geometry of one job, derived from the job alone and cached per process by its layout key."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from volumes.blending import blend_weights
from volumes.blocks import BlockPlan, plan_blocks
from volumes.box import Box
from volumes.open import open_volume
from volumes.volume import Volume
from volumes.windows import WindowGrid
from workers.inference.job import InferenceJob
from workers.inference.mask import MaskWindows
from workers.runtime.state import worker_state


@dataclass(frozen=True)
class JobGeometry:
    """ROI in volume coordinates, the window grid and block plan in output coordinates."""

    roi: Box  # spatial, in input volume coordinates
    input_shape: tuple[int, ...]  # full input array shape, (z,y,x) or (c,z,y,x)
    plan: BlockPlan
    blending: str
    # which windows are computed, asked a block's worth at a time (workers.inference.mask); None = all
    mask: MaskWindows | None = field(default=None, compare=False, repr=False)

    @property
    def grid(self) -> WindowGrid:
        return self.plan.grid

    @cached_property
    def weights(self) -> np.ndarray:
        return blend_weights(self.grid.patch, self.blending)  # type: ignore[arg-type]

    @cached_property
    def mask_blocks(self) -> tuple[np.ndarray, np.ndarray] | None:
        """With a mask, per block: may own a kept window, and a kept window may touch its write box
        (the driver's schedule; true wherever the exact answer is)."""
        return None if self.mask is None else self.mask.block_flags(self.plan)

    def kept_windows(self, ranges: Sequence[Sequence[int]]) -> np.ndarray | None:
        """With a mask, whether each window of the product of ``ranges`` (per-axis window indices)
        is computed; None without one (all are)."""
        return None if self.mask is None else self.mask.keep(ranges)

    def readers(self, box: Box) -> set[tuple[int, ...]] | None:
        """With a mask, the blocks owning a kept window over ``box`` (whose partial sums a chunk
        there gathers); None without one."""
        if self.mask is None:
            return None
        touching = [list(r) for r in self.grid.ranges_touching(box)]
        kept = self.mask.keep(touching)
        owners = [layout.owner for layout in self.plan.axes]
        return {tuple(owners[a][touching[a][i]] for a, i in enumerate(index)) for index in np.argwhere(kept)}

    def weight_sum(self, box: Box) -> np.ndarray:
        """``sum(w)`` over every window of the global grid, inside ``box`` (output coordinates).

        Geometry alone: whichever block finishes a voxel computes it, no exchange is needed. With a
        mask, only the kept windows count (a pure function of the window's index and the mask)."""
        den = np.zeros(box.shape, dtype=np.float32)
        # Per axis, each touching window's (destination, source) slices, computed once; the adds
        # run over their product in the grid's C order, as window by window (the same float32 sums).
        per_axis = []
        for axis, touching in enumerate(self.grid.ranges_touching(box)):
            begin, end, w = box.offset[axis], box.end[axis], self.grid.patch[axis]
            pairs = []
            for i in touching:
                start = self.grid.starts[axis][i]
                lo, hi = max(start, begin), min(start + w, end)
                pairs.append((i, slice(lo - begin, hi - begin), slice(lo - start, hi - start)))
            per_axis.append(pairs)
        weights = self.weights
        kept = self.kept_windows([[i for i, _, _ in pairs] for pairs in per_axis])
        for combo, where in zip(itertools.product(*per_axis), np.ndindex(*map(len, per_axis)), strict=True):
            if kept is not None and not kept[where]:
                continue
            den[tuple(d for _, d, _ in combo)] += weights[tuple(src for _, _, src in combo)]
        return den

    def divide(self, num: np.ndarray, box: Box) -> np.ndarray:
        """``num / den`` over ``box``; with a mask, 0 (the output's fill value) where no kept
        window covers a voxel."""
        den = self.weight_sum(box)
        if self.mask is None:
            return num / den
        return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float32), where=den > 0)


def roi_of(job: InferenceJob, input_shape: tuple[int, ...]) -> Box:
    spatial = input_shape[-3:]
    return job.input.roi if job.input.roi is not None else Box.of_shape(spatial)


def build_geometry(
    job: InferenceJob, input_shape: tuple[int, ...], source: Volume | None = None
) -> JobGeometry:
    """The job's geometry; with ``input.mask``, ``source`` (the opened input) gives the mask's scale."""
    roi = roi_of(job, input_shape)
    w = job.window
    grid = WindowGrid.over_roi(roi.shape, w.patch_size, w.stride, w.pad_size)
    plan = plan_blocks(roi.shape, job.output.write_unit, job.compute.block_shape, grid)
    mask = None
    if job.input.mask is not None:
        if source is None:
            source = open_volume(job.input.path, job.input.dataset)
        mask = MaskWindows(job, roi, grid, source)
    return JobGeometry(roi, tuple(input_shape), plan, w.blending, mask)


def job_geometry(job: InferenceJob, layout_key: str, attempt: str = "") -> JobGeometry:
    """The job's geometry, opening the input for its shape once per worker and run (a run after a
    failure looks at the input again)."""
    geometries = worker_state().geometries
    cached: JobGeometry | None = geometries.get((layout_key, attempt))
    if cached is None:
        job.input_node()  # still inside the data roots (workers.confine)
        source = open_volume(job.input.path, job.input.dataset)
        cached = build_geometry(job, tuple(source.shape), source)
        geometries.put((layout_key, attempt), cached)
    return cached
