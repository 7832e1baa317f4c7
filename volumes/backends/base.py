"""What every volume implementation shares: box checks, the read-only guard, and (for stored ones) a
handle opened lazily, once per process.

tensorstore aborts in a forked child once the parent has used it, and h5py handles must not cross a
fork either, so nothing opens at import time, a handle opened before a fork is reopened after it, and
a pickled volume carries only (path, dataset, mode) and reopens by path on the Dask worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from volumes.box import Box
from volumes.errors import GeometryError, VolumeReadOnlyError
from volumes.volume import Format, Mode, VoxelSize


class BaseVolume:
    """Box checks and the read-only guard; subclasses read, write and set attributes by slices."""

    format: Format
    path: str
    dataset: str | None
    mode: Mode
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def translation(self) -> VoxelSize | None:
        """Where voxel 0 lies (nm, z y x), when the store says; formats without it say None."""
        return None

    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (all dimensions, inside the array) as a C-order array."""
        self._check_box(box)
        if box.is_empty():
            return np.zeros(box.shape, self.dtype)
        return np.ascontiguousarray(self._read(box.slices()))

    def write(self, box: Box, data: np.ndarray) -> None:
        """Store ``data`` (cast to the volume's dtype) at ``box``.

        Boxes should cover whole chunks (or end at the array's edge): concurrent writers of one chunk
        lose data, so each chunk must have a single writer.
        """
        self._check_writable()
        self._check_box(box)
        if tuple(data.shape) != box.shape:
            raise GeometryError(f"data of shape {data.shape} does not fit box {box} of {self._where()}")
        if not box.is_empty():
            self._write(box.slices(), np.asarray(data).astype(self.dtype, copy=False))

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the stored attributes (top-level keys are replaced)."""
        self._check_writable()
        self._set_attrs(dict(attrs))

    def _check_box(self, box: Box) -> None:
        if box.ndim != self.ndim or not Box.of_shape(self.shape).contains(box):
            raise GeometryError(f"box {box} is not inside {self._where()} of shape {self.shape}")

    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise VolumeReadOnlyError(f"{self._where()} is open read-only; open it with mode='r+'")

    def _where(self) -> str:
        return self.path if self.dataset is None else f"{self.path} dataset {self.dataset!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where()}, shape={self.shape}, dtype={self.dtype})"

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        raise NotImplementedError

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        raise NotImplementedError


class StoredVolume(BaseVolume):
    """A volume in a store on disk, opened by (path, dataset, mode) and reopened the same way."""

    def __init__(self, path: str, dataset: str | None = None, mode: Mode = "r") -> None:
        self.path, self.dataset, self.mode = path, dataset, mode
        self._opened: tuple[int, Any] | None = None
        self._load_meta()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dataset": self.dataset, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        StoredVolume.__init__(self, state["path"], state["dataset"], state["mode"])

    @property
    def node(self) -> Path:
        """The directory (or file, for HDF5) holding the array."""
        return Path(self.path, self.dataset or "")

    def _handle(self) -> Any:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), self._open())
        return self._opened[1]

    def _load_meta(self) -> None:
        raise NotImplementedError

    def _open(self) -> Any:
        raise NotImplementedError
