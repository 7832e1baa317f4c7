"""Synthetic EM-like volumes with ground truth, for demos, tests and benchmarks.

The picture is a crude serial-section EM stack of neuropil:

- cells are a warped Voronoi tessellation of random seeds in physical (nm) space, so membranes are
  a few voxels thick in xy and thinner (in voxels) along z, where sections are thicker;
- cytoplasm is a textured mid grey with small dark granules (vesicle-like distractors);
- mitochondria are dark, elongated and slightly bent ellipsoids with a darker rim and lighter
  cristae-like stripes across their long axis, kept well inside one cell;
- the stack is blurred, gets per-section brightness jitter and Poisson-like noise.

Everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``, so a seed fixes the
volume. Heavy geometry (the Voronoi query) runs on a grid of roughly 25 nm voxels and is upsampled;
full-resolution work is a handful of vectorised passes, so 64x512x512 takes a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from numpy.typing import NDArray
from scipy import ndimage
from scipy.spatial import cKDTree

from volumes.errors import GeometryError, VolumeFormatError
from volumes.ome import image_entry, put_image

Shape3 = tuple[int, int, int]
Float3 = tuple[float, float, float]
F32 = NDArray[np.float32]

_COARSE_NM = 25.0  # spacing of the grid on which the Voronoi tessellation is computed
# Mitochondria keep this many (local) membrane half-widths from a cell boundary, and at least two
# voxels from any membrane voxel (the distance field is not exactly Lipschitz: warps, section steps).
_MITO_MIN_GAP = 3.0
_MEMBRANE_VALUE = 55.0
_CYTOPLASM_VALUE = 165.0


@dataclass(frozen=True)
class SynthVolume:
    """A synthetic volume and its ground truth, all (z, y, x).

    ``cells`` holds instance ids 1..N and 0 on membranes; ``mito`` and ``membranes`` are 0/1.
    """

    raw: NDArray[np.uint8]
    mito: NDArray[np.uint8]
    cells: NDArray[np.uint32]
    membranes: NDArray[np.uint8]
    voxel_size_nm: Float3


def generate_em_volume(
    shape: Sequence[int] = (64, 512, 512),
    seed: int = 0,
    voxel_size_nm: Sequence[float] = (30.0, 8.0, 8.0),
    *,
    cell_size_nm: float = 900.0,
    membrane_thickness_nm: float = 40.0,
    mito_fraction: float = 0.08,
    noise_std: float = 10.0,
) -> SynthVolume:
    """Draw an EM-like volume of ``shape`` voxels, deterministic in ``seed``.

    ``cell_size_nm`` is the typical cell diameter, ``membrane_thickness_nm`` the full membrane
    width, ``mito_fraction`` the targeted share of mitochondria voxels (reached unless the cells
    are too small to hold them) and ``noise_std`` the noise level (grey values) at mid grey.
    """
    shp = _shape3(shape)
    vox = _float3(voxel_size_nm, "voxel_size_nm")
    rng = np.random.default_rng(seed)
    half_nm = membrane_thickness_nm / 2.0
    cells, gap = _tessellate(rng, shp, vox, cell_size_nm, half_nm)
    membranes = gap < 1.0
    cells[membranes] = 0
    mito, shade = _place_mitochondria(rng, cells, gap, vox, mito_fraction)
    raw = _render(rng, cells, gap, mito, shade, vox, noise_std)
    return SynthVolume(
        raw=raw,
        mito=mito.astype(np.uint8),
        cells=cells,
        membranes=membranes.astype(np.uint8),
        voxel_size_nm=vox,
    )


def write_synth(
    path: str | Path,
    synth: SynthVolume,
    chunks: Sequence[int] = (32, 256, 256),
    format: Literal["zarr3", "zarr2"] = "zarr3",
) -> None:
    """Write ``raw``, ``mito`` and ``cells`` into one zarr container at ``path`` (replacing it).

    Each is its own OME-Zarr image (0.5 on zarr v3, 0.4 on zarr v2), as outputs are: the group
    ``raw`` with its ``multiscales`` and its one level ``raw/0`` (``open_volume(path, "raw")`` opens
    it), so that every reader sees all three. Each array also records its voxel size as
    ``resolution`` (z, y, x in nm), and so does the container.
    """
    if format not in ("zarr3", "zarr2"):
        raise VolumeFormatError(f"synth: format must be 'zarr3' or 'zarr2', got {format!r} (writing {path})")
    zarr_format: Literal[2, 3] = 3 if format == "zarr3" else 2
    resolution = [float(v) for v in synth.voxel_size_nm]
    container = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    container.attrs.update({"resolution": resolution})
    chunk_shape = tuple(min(int(c), s) for c, s in zip(chunks, synth.raw.shape, strict=True))
    for name in _DATASETS:
        data = getattr(synth, name)
        image = container.create_group(name)
        put_image(image, image_entry(name, [(1, 1, 1)], resolution))
        array = image.create_array(
            "0",
            shape=data.shape,
            dtype=data.dtype,
            chunks=chunk_shape,
            fill_value=0,
            attributes={"resolution": resolution},
            dimension_names=("z", "y", "x") if zarr_format == 3 else None,
        )
        array[...] = data


_DATASETS = ("raw", "mito", "cells")


def _shape3(shape: Sequence[int]) -> Shape3:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise GeometryError(f"synth: shape must be three positive sizes (z, y, x), got {tuple(shape)}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _float3(values: Sequence[float], name: str) -> Float3:
    if len(values) != 3 or any(float(v) <= 0 for v in values):
        raise GeometryError(f"synth: {name} must be three positive sizes (z, y, x), got {tuple(values)}")
    return float(values[0]), float(values[1]), float(values[2])


# --- grids -----------------------------------------------------------------------------------------


def _coarse_factors(vox: Float3, target_nm: float) -> Shape3:
    f = [max(1, round(target_nm / v)) for v in vox]
    return f[0], f[1], f[2]


def _coarse_shape(shape: Shape3, factors: Shape3) -> Shape3:
    c = [-(-s // f) + 1 for s, f in zip(shape, factors, strict=True)]
    return c[0], c[1], c[2]


def _coarse_positions(n_fine: int, factor: int) -> NDArray[np.float64]:
    """Fine voxel centres in coarse-voxel units (coarse voxel i is centred on fine (i+0.5)f-0.5)."""
    return (np.arange(n_fine) + 0.5) / factor - 0.5


def _upsample_linear(a: F32, factors: Shape3, shape: Shape3) -> F32:
    """Separable linear interpolation of a coarse grid to ``shape`` (edges clamped)."""
    out = a
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        pos = np.clip(_coarse_positions(n, f), 0, out.shape[axis] - 1)
        i0 = np.minimum(np.floor(pos).astype(np.intp), out.shape[axis] - 2)
        w = (pos - i0).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = n
        w3 = w.reshape(view)
        lo = np.take(out, i0, axis=axis)
        out = lo + (np.take(out, i0 + 1, axis=axis) - lo) * w3
    return out.astype(np.float32, copy=False)


def _upsample_nearest(a: NDArray[np.uint32], factors: Shape3, shape: Shape3) -> NDArray[np.uint32]:
    out = a
    for axis, (n, f) in enumerate(zip(shape, factors, strict=True)):
        idx = np.clip(np.rint(_coarse_positions(n, f)).astype(np.intp), 0, out.shape[axis] - 1)
        out = np.take(out, idx, axis=axis)
    return out


def _smooth_noise(rng: np.random.Generator, shape: Shape3, vox: Float3, scale_nm: float) -> F32:
    """Zero-mean, unit-variance noise varying over about ``scale_nm``."""
    factors = _coarse_factors(vox, scale_nm / 2.0)
    white = rng.standard_normal(_coarse_shape(shape, factors), dtype=np.float32)
    # Divide by the std that smoothing gives white noise, not by the sample std, which is
    # meaningless when the grid has only a few points.
    return _upsample_linear(ndimage.gaussian_filter(white, 1.0) / _SMOOTHED_STD, factors, shape)


def _smoothed_std() -> float:
    delta = np.zeros((9, 9, 9))
    delta[4, 4, 4] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(delta, 1.0) ** 2).sum()))


_SMOOTHED_STD = _smoothed_std()


# --- cells -----------------------------------------------------------------------------------------


def _tessellate(
    rng: np.random.Generator, shape: Shape3, vox: Float3, cell_nm: float, half_nm: float
) -> tuple[NDArray[np.uint32], F32]:
    """Cell ids and the distance to the nearest cell boundary in (local) membrane half-widths."""
    factors = _coarse_factors(vox, _COARSE_NM)
    cshape = _coarse_shape(shape, factors)
    cvox = np.array([v * f for v, f in zip(vox, factors, strict=True)])
    extent = np.array(shape) * np.array(vox)
    n_seeds = max(2, round(float(np.prod(extent + cell_nm)) / cell_nm**3))
    seeds = rng.random((n_seeds, 3)) * (extent + cell_nm) - cell_nm / 2
    grids = np.meshgrid(*[(np.arange(n) + 0.5) * c for n, c in zip(cshape, cvox, strict=True)], indexing="ij")
    cvox3 = (float(cvox[0]), float(cvox[1]), float(cvox[2]))
    warp = [0.12 * cell_nm * _smooth_noise(rng, cshape, cvox3, cell_nm) for _ in range(3)]
    points = np.stack([g + w for g, w in zip(grids, warp, strict=True)], axis=-1).reshape(-1, 3)
    dist, idx = cKDTree(seeds).query(points, k=min(4, n_seeds))
    # Distance to the cell's boundary: to the nearest bisecting plane between the nearest seed and
    # the next ones (the second nearest alone overestimates it near edges where cells meet).
    span = np.linalg.norm(seeds[idx[:, :1]] - seeds[idx[:, 1:]], axis=2)
    gap_nm = ((dist[:, 1:] ** 2 - dist[:, :1] ** 2) / (2.0 * span)).min(axis=1)
    wobble = np.clip(_smooth_noise(rng, cshape, cvox3, 4 * cell_nm), -2.0, 2.0).ravel()
    gap = (gap_nm / (half_nm * (1.0 + 0.2 * wobble))).astype(np.float32).reshape(cshape)
    _, labels = np.unique(idx[:, 0], return_inverse=True)
    coarse_cells = (labels.reshape(cshape) + 1).astype(np.uint32)
    return _upsample_nearest(coarse_cells, factors, shape), _upsample_linear(gap, factors, shape)


# --- mitochondria ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mito:
    centre_nm: NDArray[np.float64]
    rotation: NDArray[np.float64]  # rows: long axis, two short axes (in z, y, x coordinates)
    semi_axes_nm: NDArray[np.float64]
    bend: float
    crista_period_nm: float
    crista_phase: float


def _draw_mito(rng: np.random.Generator, centre_nm: NDArray[np.float64]) -> _Mito:
    short = rng.uniform(110.0, 190.0)
    semi = np.array([short * rng.uniform(1.4, 3.0), short, short * rng.uniform(0.8, 1.0)])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    rotation = (q * np.sign(np.diag(r))).T
    return _Mito(
        centre_nm=centre_nm,
        rotation=rotation,
        semi_axes_nm=semi,
        bend=float(rng.uniform(-0.35, 0.35)),
        crista_period_nm=float(rng.uniform(35.0, 55.0)),
        crista_phase=float(rng.uniform(0, 2 * math.pi)),
    )


def _place_mitochondria(
    rng: np.random.Generator,
    cells: NDArray[np.uint32],
    gap: F32,
    vox: Float3,
    fraction: float,
) -> tuple[NDArray[np.bool_], F32]:
    """Add mitochondria inside cells until ``fraction`` of voxels is covered (or tries run out).

    Returns the mask and the grey value each mitochondrion voxel should get.
    """
    mito = np.zeros(cells.shape, dtype=bool)
    clear = (gap > _MITO_MIN_GAP) & ~ndimage.binary_dilation(gap < 1.0, iterations=2)
    shade = np.zeros(cells.shape, dtype=np.float32)
    target = fraction * cells.size
    covered = 0
    vox_arr = np.array(vox)
    typical_voxels = 2.8e7 / float(np.prod(vox_arr))  # volume of an average mitochondrion
    for _ in range(100 + int(20 * target / typical_voxels)):
        if covered >= target:
            break
        centre = tuple(int(rng.integers(0, s)) for s in cells.shape)
        if gap[centre] < _MITO_MIN_GAP + 3.0:
            continue
        m = _draw_mito(rng, (np.array(centre) + 0.5) * vox_arr)
        covered += _stamp(m, cells[centre], cells, clear, mito, shade, vox_arr)
    return mito, shade


def _stamp(
    m: _Mito,
    owner: np.uint32,
    cells: NDArray[np.uint32],
    clear: NDArray[np.bool_],
    mito: NDArray[np.bool_],
    shade: F32,
    vox: NDArray[np.float64],
) -> int:
    """Draw one mitochondrion into ``mito``/``shade`` in place; returns the number of new voxels."""
    bent = m.semi_axes_nm * np.array([1.0, 1.0 + abs(m.bend), 1.0])
    reach = np.sqrt(((m.rotation.T * bent) ** 2).sum(axis=1)) + vox
    lo = np.maximum(np.floor((m.centre_nm - reach) / vox).astype(int), 0)
    hi = np.minimum(np.ceil((m.centre_nm + reach) / vox).astype(int), cells.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = [(np.arange(a, b) + 0.5) * v - c for a, b, v, c in zip(lo, hi, vox, m.centre_nm, strict=True)]
    rel = np.meshgrid(*axes, indexing="ij", sparse=True)
    q = [sum(m.rotation[k, j] * rel[j] for j in range(3)) for k in range(3)]
    long_n = q[0] / m.semi_axes_nm[0]
    q1 = q[1] - m.bend * m.semi_axes_nm[1] * (long_n**2 - 0.5) * 2.0
    radius = np.sqrt(long_n**2 + (q1 / m.semi_axes_nm[1]) ** 2 + (q[2] / m.semi_axes_nm[2]) ** 2)
    if (mito[box] & (radius < 1.3)).any():  # keep mitochondria apart
        return 0
    ellipsoid = radius < 1.0
    inside = ellipsoid & (cells[box] == owner) & clear[box]
    new = int(inside.sum())
    if new < 0.7 * int(ellipsoid.sum()):  # much of it cut off by the cell boundary
        return 0
    rim_nm = 14.0 / float(m.semi_axes_nm[1])  # a dark double membrane about 14 nm wide
    cristae = np.cos(2 * math.pi * q[0] / m.crista_period_nm + m.crista_phase) > 0.3
    value = np.where(radius > 1.0 - rim_nm, 45.0, np.where(cristae, 115.0, 80.0))
    shade[box] = np.where(inside, value, shade[box])
    mito[box] |= inside
    return new


# --- rendering -------------------------------------------------------------------------------------


def _render(
    rng: np.random.Generator,
    cells: NDArray[np.uint32],
    gap: F32,
    mito: NDArray[np.bool_],
    shade: F32,
    vox: Float3,
    noise_std: float,
) -> NDArray[np.uint8]:
    shape = _shape3(cells.shape)
    cell_offset = rng.normal(0.0, 7.0, int(cells.max()) + 1).astype(np.float32)
    img = _CYTOPLASM_VALUE + cell_offset[cells]
    img += 7.0 * _smooth_noise(rng, shape, vox, 120.0) + 5.0 * _smooth_noise(rng, shape, vox, 30.0)
    img -= _granules(rng, cells, mito, vox)
    membrane = np.clip(1.25 - gap, 0.0, 1.0) * 2.0
    np.minimum(membrane, 1.0, out=membrane)
    img += (_MEMBRANE_VALUE - img) * membrane
    img = np.where(mito, shade, img)
    sigma = [max(0.3, 8.0 / v) for v in vox]
    img = ndimage.gaussian_filter(img, sigma, mode="nearest")
    gain = rng.normal(1.0, 0.04, shape[0]).astype(np.float32)[:, None, None]
    img = img * gain + rng.normal(0.0, 4.0, shape[0]).astype(np.float32)[:, None, None]
    # Poisson-like: the variance grows with the signal; noise_std is the std at mid grey.
    std = noise_std * np.sqrt(np.clip(img, 0.0, None) / 255.0 + 0.5) / math.sqrt(128 / 255 + 0.5)
    img += std * rng.standard_normal(shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _granules(
    rng: np.random.Generator, cells: NDArray[np.uint32], mito: NDArray[np.bool_], vox: Float3
) -> F32:
    """Small dark vesicle-like blobs in cytoplasm (distractors), as a darkness map."""
    per_voxel = float(np.prod(vox)) / 150.0**3  # about one granule per (150 nm)^3
    n = int(rng.poisson(per_voxel * cells.size))
    flat = rng.integers(0, cells.size, n)
    keep = (cells.ravel()[flat] > 0) & ~mito.ravel()[flat]
    impulses = np.zeros(cells.size, dtype=np.float32)
    impulses[flat[keep]] = 1.0
    sigma = [max(0.4, 14.0 / v) for v in vox]
    blobs = ndimage.gaussian_filter(impulses.reshape(cells.shape), sigma, mode="constant")
    peak = float(np.prod([1.0 / (math.sqrt(2 * math.pi) * s) for s in sigma]))
    return np.minimum(blobs * (60.0 / peak), 80.0).astype(np.float32)


def affinities_from_labels(
    labels: np.ndarray, seed: int = 0, blur: float = 1.0, noise: float = 0.1, noise_blur: float = 1.5
) -> np.ndarray:
    """Affinities (3, Z, Y, X) uint8 of a label volume: channel a at v is 1 where v and v - e_a are
    one non-zero object, blurred by ``blur`` voxels, plus Gaussian noise of std ``noise`` smoothed
    over ``noise_blur`` voxels, clipped to [0, 1] and scaled to 0..255."""
    rng = np.random.default_rng(seed)
    out = np.zeros((3, *labels.shape), np.float32)
    for a in range(3):
        same = np.zeros(labels.shape, bool)
        here = tuple(slice(1, None) if b == a else slice(None) for b in range(3))
        there = tuple(slice(0, -1) if b == a else slice(None) for b in range(3))
        same[here] = (labels[here] == labels[there]) & (labels[here] != 0)
        out[a] = same
    out = ndimage.gaussian_filter(out, (0, 0, blur, blur))  # z is anisotropic (30 nm): no blur across it
    n = ndimage.gaussian_filter(rng.normal(0, 1, out.shape).astype(np.float32), (0, *(noise_blur,) * 3))
    out += noise * n / n.std()
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)
