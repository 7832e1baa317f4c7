"""Blend weights of one window: PyTC's gaussian (the default), MONAI's gaussian importance map,
PyTC's bump, or constant.

The output is ``sum(p * w) / sum(w)`` over the windows covering a voxel; weights never reach 0,
so the quotient is always defined. ``gaussian`` and ``bump`` are PyTorch Connectomics v1's
``blend_gaussian`` and ``blend_bump`` (``connectomics/data/utils/data_blending.py``);
``monai_gaussian`` is MONAI's ``compute_importance_map(mode="gaussian", sigma_scale=0.125)``. The two
gaussians are not the same map: per axis PyTC's sigma is ``0.1 * (n - 1)`` voxels with a floor of
1e-4 added, MONAI's ``0.125 * n`` voxels clamped from below at 1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from volumes.errors import GeometryError

BlendMode = Literal["gaussian", "monai_gaussian", "bump", "constant"]
BLEND_MODES: tuple[BlendMode, ...] = ("gaussian", "monai_gaussian", "bump", "constant")

PYTC_GAUSSIAN_SIGMA = 0.2  # on the linspace(-1, 1, n) grid: 0.1 * (n - 1) voxels
PYTC_WEIGHT_FLOOR = 1e-4


def gaussian_weights(patch: Sequence[int], sigma: float = PYTC_GAUSSIAN_SIGMA) -> np.ndarray:
    """PyTC v1's ``blend_gaussian``: on a ``linspace(-1, 1, n)`` grid per axis (float32),
    ``d = sqrt(uz^2 + uy^2 + ux^2)`` and ``w = 1e-4 + exp(-d^2 / (2 sigma^2))``.

    Computed in float32 in PyTC's order of operations (the distance, then its square), so the map is
    the same to the last bit, not only to rounding. An axis of one voxel sits at -1, as
    ``linspace(-1, 1, 1)`` puts it."""
    axes = [np.linspace(-1.0, 1.0, p, dtype=np.float32) for p in patch]
    grids = np.meshgrid(*axes, indexing="ij")
    squared = np.zeros(grids[0].shape, dtype=np.float32)
    for g in grids:
        squared += g * g
    distance = np.sqrt(squared)
    exponent = -(distance**2 / np.float32(2.0 * sigma**2))
    return (np.float32(PYTC_WEIGHT_FLOOR) + np.exp(exponent)).astype(np.float32)


def monai_gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's ``compute_importance_map(mode="gaussian")``: the outer product of per-axis gaussians with
    ``sigma = sigma_scale * p`` on ``arange(-(p-1)/2, (p-1)/2 + 1)``, not rescaled, clamped from below at
    ``max(min(map), 1e-3)``. Computed in float32 as MONAI does."""
    weights: np.ndarray | None = None
    for p in patch:
        x = np.arange(-(p - 1) / 2.0, (p - 1) / 2.0 + 1, dtype=np.float32)
        denominator = np.float32(-2.0 * (p * sigma_scale) ** 2)
        g = np.exp(x**2 / denominator).astype(np.float32)
        weights = g if weights is None else weights[..., None] * g
    assert weights is not None  # patch has at least one axis
    floor = max(float(weights.min()), 1e-3)
    return np.maximum(weights, np.float32(floor)).astype(np.float32)


def bump_weights(patch: Sequence[int]) -> np.ndarray:
    """PyTC's ``blend_bump`` (after Lee et al. 2017): per axis ``x = linspace(0, 1, n + 2)[1:-1]``,
    ``D = -sum((x (1 - x)) ** -1.5)``, ``w = 1e-4 + exp(D - max D)``."""
    grids = np.meshgrid(*[np.linspace(0.0, 1.0, p + 2)[1:-1] for p in patch], indexing="ij")
    exponent = np.zeros(grids[0].shape, dtype=np.float64)
    for g in grids:
        exponent -= (g * (1.0 - g)) ** -1.5
    return (PYTC_WEIGHT_FLOOR + np.exp(exponent - exponent.max())).astype(np.float32)


def blend_weights(patch: Sequence[int], mode: BlendMode) -> np.ndarray:
    """The weight map of one window of shape ``patch`` (float32)."""
    if mode == "gaussian":
        return gaussian_weights(patch)
    if mode == "monai_gaussian":
        return monai_gaussian_weights(patch)
    if mode == "bump":
        return bump_weights(patch)
    if mode == "constant":
        return np.ones(tuple(patch), dtype=np.float32)
    raise GeometryError(f"unknown blending {mode!r}: expected one of {', '.join(BLEND_MODES)}")
