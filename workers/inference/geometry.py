"""The geometry of one job, derived from the job alone and cached per process by its layout key."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from volumes.blending import blend_weights
from volumes.blocks import BlockPlan, plan_blocks
from volumes.box import Box
from volumes.open import open_volume
from volumes.windows import WindowGrid
from workers.inference.job import InferenceJob
from workers.runtime.state import worker_state


@dataclass(frozen=True)
class JobGeometry:
    """ROI in volume coordinates, the window grid and block plan in output coordinates."""

    roi: Box  # spatial, in input volume coordinates
    input_shape: tuple[int, ...]  # full input array shape, (z,y,x) or (c,z,y,x)
    plan: BlockPlan
    blending: str

    @property
    def grid(self) -> WindowGrid:
        return self.plan.grid

    @cached_property
    def weights(self) -> np.ndarray:
        return blend_weights(self.grid.patch, self.blending)  # type: ignore[arg-type]

    def weight_sum(self, box: Box) -> np.ndarray:
        """``sum(w)`` over every window of the global grid, inside ``box`` (output coordinates).

        Geometry alone: whichever block finishes a voxel computes it, no exchange is needed."""
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
                pairs.append((slice(lo - begin, hi - begin), slice(lo - start, hi - start)))
            per_axis.append(pairs)
        weights = self.weights
        for combo in itertools.product(*per_axis):
            den[tuple(d for d, _ in combo)] += weights[tuple(src for _, src in combo)]
        return den


def roi_of(job: InferenceJob, input_shape: tuple[int, ...]) -> Box:
    spatial = input_shape[-3:]
    return job.input.roi if job.input.roi is not None else Box.of_shape(spatial)


def build_geometry(job: InferenceJob, input_shape: tuple[int, ...]) -> JobGeometry:
    roi = roi_of(job, input_shape)
    w = job.window
    grid = WindowGrid.over_roi(roi.shape, w.patch_size, w.stride, w.pad_size)
    plan = plan_blocks(roi.shape, job.output.chunks, job.compute.block_shape, grid)
    return JobGeometry(roi, tuple(input_shape), plan, w.blending)


def job_geometry(job: InferenceJob, layout_key: str, attempt: str = "") -> JobGeometry:
    """The job's geometry, opening the input for its shape once per worker and run (a run after a
    failure looks at the input again)."""
    geometries = worker_state().geometries
    cached: JobGeometry | None = geometries.get((layout_key, attempt))
    if cached is None:
        job.input_node()  # still inside the data roots (workers.confine)
        cached = build_geometry(job, tuple(open_volume(job.input.path, job.input.dataset).shape))
        geometries.put((layout_key, attempt), cached)
    return cached
