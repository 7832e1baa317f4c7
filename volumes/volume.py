"""The one interface of every chunked volume: the :class:`Volume` protocol and the types it speaks.

Implementations live in :mod:`volumes.backends` (zarr v2/v3, N5, HDF5, TIFF, PNG, TileDataset JSON tiles,
neuroglancer precomputed, and an in-memory double for tests); :func:`volumes.open.open_volume` picks
one from the store itself.
Every volume speaks C-order (z, y, x) or (c, z, y, x), whatever its format keeps on disk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from volumes.box import Box

Format = Literal["zarr2", "zarr3", "n5", "hdf5", "tiff", "png", "tiles", "memory", "precomputed"]
Mode = Literal["r", "r+"]
VoxelSize = tuple[float, float, float]  # (z, y, x) in nm


@runtime_checkable
class Volume(Protocol):
    """A chunked array on disk (or in memory) read and written by boxes over all its dimensions."""

    @property
    def path(self) -> str: ...
    @property
    def dataset(self) -> str | None: ...
    @property
    def format(self) -> Format: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def chunks(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def voxel_size(self) -> VoxelSize | None: ...
    @property
    def translation(self) -> VoxelSize | None: ...  # where voxel 0 lies, nm (z, y, x); None: unknown
    @property
    def attrs(self) -> dict[str, Any]: ...
    def read(self, box: Box) -> np.ndarray: ...
    def write(self, box: Box, data: np.ndarray) -> None: ...
    def set_attrs(self, attrs: Mapping[str, Any]) -> None: ...
