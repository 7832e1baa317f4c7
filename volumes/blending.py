"""Blend weights of one window: MONAI's gaussian importance map, PyTC's bump, or constant.

The output is ``sum(p * w) / sum(w)`` over the windows covering a voxel; weights never reach 0,
so the quotient is always defined.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from volumes.errors import GeometryError

BlendMode = Literal["gaussian", "bump", "constant"]


def gaussian_weights(patch: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
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
    return (1e-4 + np.exp(exponent - exponent.max())).astype(np.float32)


def blend_weights(patch: Sequence[int], mode: BlendMode) -> np.ndarray:
    """The weight map of one window of shape ``patch`` (float32)."""
    if mode == "gaussian":
        return gaussian_weights(patch)
    if mode == "bump":
        return bump_weights(patch)
    if mode == "constant":
        return np.ones(tuple(patch), dtype=np.float32)
    raise GeometryError(f"unknown blending {mode!r}: expected gaussian, bump or constant")
