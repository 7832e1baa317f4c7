"""Training augmentations of a crop, in numpy: drawn once as a plan, then applied to every array.

A plan is drawn from a ``numpy.random.Generator`` in a fixed order, so one generator state fixes
the augmentation. Geometric steps (a lost section, elastic warp, flips, xy transpose, 90-degree
rotations in xy) move image, label and mask alike; intensity changes touch the image only.

- **missing section** (PyTC's ``MissingSection``): the crop is read one section taller and one
  interior section is deleted from image and label alike, as when a section is lost in the stack.
- **elastic**: one smooth in-plane displacement field (a coarse random grid, cubic-upsampled) for
  all sections, as PyTC's ``Elastic`` warps each section with the same map; linear interpolation
  for the image, nearest for labels and masks.
- **flips** of z, y, x; **transpose** of y and x and **rot90** in xy (square xy patches only).
- **ztranspose** (PyTC's ``FLIP.DO_ZTRANS``, for isotropic data): half the time z and x swap
  places after the flips and the xy transpose, as PyTC's ``Flip(do_ztrans=1)`` swaps them
  (``transpose(2, 1, 0)``); patches with as many sections as columns only.
- **intensity**: ``image * gain + offset``, both within ``± intensity`` of (1, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class AugmentSpec:
    flip: bool = True
    transpose: bool = True
    rotate90: bool = True
    intensity: float = 0.1
    missing_section: float = 0.0  # probability per crop
    elastic: float = 0.0  # probability per crop
    elastic_alpha: float = 6.0  # largest displacement, voxels
    elastic_points: int = 4  # control points per in-plane axis
    ztranspose: bool = False  # swap z and x half the time (isotropic data; patch z == x)

    @property
    def enabled(self) -> bool:
        return any(
            (
                self.flip, self.transpose, self.rotate90, self.intensity, self.missing_section,
                self.elastic, self.ztranspose,
            )
        )  # fmt: skip


NO_AUGMENT = AugmentSpec(False, False, False, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class AugmentPlan:
    flips: tuple[int, ...] = ()  # spatial axes 0 (z), 1 (y), 2 (x)
    transpose: bool = False
    rot90: int = 0
    gain: float = 1.0
    offset: float = 0.0
    drop_section: int | None = None  # index into the read stack (z), removed
    displacement: NDArray[np.float32] | None = None  # (2, y, x) in-plane shift, voxels
    ztranspose: bool = False  # z and x swapped (after flips and the xy transpose)


def plan_augment(rng: np.random.Generator, spec: AugmentSpec, read_shape: Shape3, drop: bool) -> AugmentPlan:
    """Draw one plan for a crop read with spatial ``read_shape`` (one section taller when ``drop``)."""
    square = read_shape[1] == read_shape[2]
    flips = tuple(axis for axis in range(3) if rng.random() < 0.5) if spec.flip else ()
    transpose = bool(spec.transpose and square and rng.random() < 0.5)
    rot90 = 0
    if spec.rotate90:
        rot90 = int(rng.integers(0, 4)) if square else 2 * int(rng.integers(0, 2))
    gain, offset = 1.0, 0.0
    if spec.intensity > 0:
        gain = 1.0 + float(rng.uniform(-spec.intensity, spec.intensity))
        offset = float(rng.uniform(-spec.intensity, spec.intensity))
    drop_section = int(rng.integers(1, read_shape[0] - 1)) if drop and read_shape[0] > 2 else None
    displacement = None
    if spec.elastic > 0 and rng.random() < spec.elastic:
        displacement = _displacement(rng, spec, read_shape[1:])
    # drawn last, and only when asked for, so the plans of other jobs stay what they were
    ztranspose = bool(spec.ztranspose and rng.random() < 0.5)
    return AugmentPlan(flips, transpose, rot90, gain, offset, drop_section, displacement, ztranspose)


def wants_missing_section(rng: np.random.Generator, spec: AugmentSpec) -> bool:
    """Drawn before the crop is read: whether to read one more section to delete one."""
    return spec.missing_section > 0 and bool(rng.random() < spec.missing_section)


def apply_geometry(plan: AugmentPlan, array: NDArray[np.generic], interpolate: bool) -> NDArray[np.generic]:
    """The plan's geometric steps on a (z, y, x) or (c, z, y, x) array; ``interpolate`` = linear
    (images) rather than nearest (labels, masks)."""
    lead = array.ndim - 3
    if plan.drop_section is not None:
        array = np.delete(array, plan.drop_section, axis=lead)
    if plan.displacement is not None:
        array = _warp(array, plan.displacement, interpolate)
    if plan.flips:
        array = np.flip(array, tuple(lead + a for a in plan.flips))
    if plan.transpose:
        array = np.swapaxes(array, lead + 1, lead + 2)
    if plan.ztranspose:
        if array.shape[lead] != array.shape[lead + 2]:
            raise ValueError(f"a z transpose needs as many sections as columns, got shape {array.shape}")
        array = np.swapaxes(array, lead, lead + 2)
    if plan.rot90:
        array = np.rot90(array, plan.rot90, axes=(lead + 1, lead + 2))
    return np.ascontiguousarray(array)


def apply_intensity(plan: AugmentPlan, image: NDArray[np.float32]) -> NDArray[np.float32]:
    if plan.gain == 1.0 and plan.offset == 0.0:
        return image
    return (image * np.float32(plan.gain) + np.float32(plan.offset)).astype(np.float32)


def _displacement(rng: np.random.Generator, spec: AugmentSpec, plane: tuple[int, ...]) -> NDArray[np.float32]:
    """A smooth (2, y, x) field: random shifts on a coarse grid, cubic-interpolated to every voxel."""
    from scipy import ndimage  # here: every job document's parser imports this module

    points = max(2, spec.elastic_points)
    coarse = rng.uniform(-1.0, 1.0, size=(2, points, points)) * spec.elastic_alpha
    grid = np.meshgrid(*(np.linspace(0, points - 1, s) for s in plane), indexing="ij")
    fields = [ndimage.map_coordinates(c, grid, order=3, mode="nearest") for c in coarse]
    return np.stack(fields).astype(np.float32)


def _warp(
    array: NDArray[np.generic], displacement: NDArray[np.float32], interpolate: bool
) -> NDArray[np.generic]:
    from scipy import ndimage

    *lead, depth, height, width = array.shape
    yy, xx = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    coords_y, coords_x = yy + displacement[0], xx + displacement[1]
    order = 1 if interpolate else 0
    flat = array.reshape(-1, height, width)
    out = np.empty_like(flat)
    for i, plane in enumerate(flat):
        source = plane.astype(np.float32) if interpolate else plane
        out[i] = ndimage.map_coordinates(source, [coords_y, coords_x], order=order, mode="mirror")
    return out.reshape(*lead, depth, height, width)
