"""HDF5 datasets, read with h5py. Read-only: outputs go to zarr or N5."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np

from volumes.backends.base import StoredVolume
from volumes.decoding import decode_bounded
from volumes.detect import MAX_LISTED
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.volume import Format, Mode, VoxelSize
from volumes.voxel_size import spatial

_ZLIB = numcodecs.Zlib()  # HDF5's deflate filter writes zlib streams


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
        ds = self._handle()
        try:
            check_deflated_chunks(ds, slices, self._checked_chunks())
        except OversizedChunkError as err:
            raise err.located(where=self._where()) from None
        return np.asarray(ds[slices])

    def _checked_chunks(self) -> set[tuple[int, ...]]:
        """Chunks of this handle already found within their size (a block's halo reads them again)."""
        pid, checked = self.__dict__.get("_checked", (None, set()))
        if pid != os.getpid():
            checked = set()
            self._checked: tuple[int, set[tuple[int, ...]]] = (os.getpid(), checked)
        return checked


def check_deflated_chunks(ds: Any, slices: tuple[slice, ...], checked: set[tuple[int, ...]]) -> None:
    """Each deflate-compressed chunk that ``slices`` touches decompresses within its nominal size
    (chunk shape x itemsize), else OversizedChunkError naming its offset.

    HDF5's deflate filter grows its output buffer until the stream ends, and h5py then keeps the
    chunk's first bytes: a 500 KB chunk of zeros took 512 MiB and read as zeros, silently. So a
    chunk is decompressed here first, into at most its nominal size + 1 bytes, once per handle;
    the other filters of HDF5 (shuffle, fletcher32, lzf, szip) never grow past the chunk."""
    if ds.chunks is None or ds.compression != "gzip":
        return
    plist = ds.id.get_create_plist()
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    nominal = math.prod(ds.chunks) * ds.dtype.itemsize
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(slices, ds.chunks, strict=True)]
    for index in itertools.product(*ranges):
        offset = tuple(i * c for i, c in zip(index, ds.chunks, strict=True))
        if offset not in checked:
            _check_chunk(ds, offset, filters, nominal)
            checked.add(offset)


def _check_chunk(ds: Any, offset: tuple[int, ...], filters: list[int], nominal: int) -> None:
    import h5py

    info = ds.id.get_chunk_info_by_coord(offset)
    if info.byte_offset is None:
        return  # never written: reads as the fill value
    chunk = "/".join(map(str, offset))
    if info.size > nominal + nominal // 64 + 2**12:  # deflate's worst case is 5 bytes per 16 KiB block
        raise OversizedChunkError(nominal, f"stores {info.size:,} bytes", chunk=chunk)
    mask, data = ds.id.read_direct_chunk(offset)
    for i, code in reversed(list(enumerate(filters))):
        if mask & (1 << i):
            continue  # this filter was skipped for this chunk
        if code == h5py.h5z.FILTER_FLETCHER32:
            data = data[:-4]
        elif code == h5py.h5z.FILTER_DEFLATE:
            try:
                decode_bounded(_ZLIB, data, nominal)
            except OversizedChunkError as err:
                raise err.located(chunk=chunk) from None
            return


def open_hdf5(root: Path, name: str | None, mode: Mode) -> HDF5Volume:
    """The dataset ``name`` of the HDF5 file ``root``; a missing one is named with those that exist."""
    import h5py

    if not h5py.is_hdf5(root):
        raise VolumeFormatError(
            f"{root} is a file but neither HDF5 nor TIFF; zarr and N5 stores are directories"
        )
    with h5py.File(root, "r") as f:
        found = name is not None and isinstance(f.get(name), h5py.Dataset)
        if not found:
            names: list[str] = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {names[:MAX_LISTED]}")
    return HDF5Volume(str(root), name, mode)
