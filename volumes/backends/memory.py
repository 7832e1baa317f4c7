"""The in-memory double of the stored volumes, over a numpy array: for tests and small tools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from volumes.backends.base import BaseVolume
from volumes.volume import Format, Mode, VoxelSize


class ArrayVolume(BaseVolume):
    """A volume over a numpy array, which it reads and writes in place."""

    format: Format = "memory"

    def __init__(
        self,
        data: np.ndarray,
        chunks: Sequence[int] | None = None,
        voxel_size: VoxelSize | None = None,
        attrs: Mapping[str, Any] | None = None,
        mode: Mode = "r+",
    ) -> None:
        self.data, self.path, self.dataset, self.mode = data, "<memory>", None, mode
        self.shape, self.dtype = tuple(data.shape), data.dtype
        self.chunks = tuple(chunks) if chunks is not None else self.shape
        self.voxel_size = voxel_size
        self.attrs = dict(attrs or {})

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return self.data[slices].copy()

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self.data[slices] = data

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)
