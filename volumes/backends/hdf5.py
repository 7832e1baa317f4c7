"""HDF5 datasets, read with h5py. Read-only: outputs go to zarr or N5."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.detect import MAX_LISTED
from volumes.errors import VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.volume import Format, Mode, VoxelSize
from volumes.voxel_size import spatial


class HDF5Volume(StoredVolume):
    """An HDF5 dataset; ``path`` is the file, ``dataset`` the dataset's name inside it."""

    format: Format = "hdf5"

    def _open(self) -> Any:
        import h5py

        return h5py.File(self.path, "r")[self.dataset]

    def _load_meta(self) -> None:
        if self.mode != "r":
            raise VolumeReadOnlyError(f"{self._where()}: HDF5 volumes are read-only here; use mode='r'")
        ds = self._handle()
        self.shape, self.dtype = tuple(ds.shape), np.dtype(ds.dtype)
        self.chunks = tuple(ds.chunks or ds.shape)

    @property
    def node(self) -> Path:
        return Path(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        return {
            k: v.tolist() if isinstance(v, np.ndarray | np.generic) else v
            for k, v in self._handle().attrs.items()
        }

    @property
    def voxel_size(self) -> VoxelSize | None:
        return spatial(self.attrs.get("resolution"))

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._handle()[slices])


def open_hdf5(root: Path, name: str | None, mode: Mode) -> HDF5Volume:
    """The dataset ``name`` of the HDF5 file ``root``; a missing one is named with those that exist."""
    import h5py

    if not h5py.is_hdf5(root):
        raise VolumeFormatError(f"{root} is a file but not HDF5; zarr and N5 stores are directories")
    with h5py.File(root, "r") as f:
        found = name is not None and isinstance(f.get(name), h5py.Dataset)
        if not found:
            names: list[str] = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {names[:MAX_LISTED]}")
    return HDF5Volume(str(root), name, mode)
