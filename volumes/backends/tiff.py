"""TIFF stacks, read with tifffile. Read-only: outputs go to zarr or N5.

The volume is the file's first image series with its length-1 axes dropped, as PyTC's ``readvol``
reads a ``.tif`` (``imageio.volread(...).squeeze()``): a stack of 2D pages is (z, y, x); a stack
of multi-channel pages, (z, c, y, x) on disk, is (c, z, y, x) as PyTC turns it.

Reading is out of core: tifffile's zarr store reads only the strips or tiles (or, uncompressed,
the bytes) a box touches, one page's strip or tile at a time, whatever the compression. A file
whose single chunk (a strip, a tile, or a whole page when the page is one strip) would exceed
:data:`MAX_CHUNK_BYTES` is refused by name and size instead of being read whole: store it tiled,
or convert it to zarr.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.errors import VolumeFormatError, VolumeReadOnlyError
from volumes.volume import Format

TIFF_SUFFIXES = (".tif", ".tiff")
# One strip or tile read at once; a one-strip page is a chunk too (tifffile cannot read part of it
# when compressed). 1 GiB: a 32768 x 32768 uint8 page.
MAX_CHUNK_BYTES = 1 << 30


def is_tiff(path: Path) -> bool:
    """A TIFF or BigTIFF file by its signature (``II*\\0``, ``MM\\0*``, ``II+\\0``, ``MM\\0+``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class TiffVolume(StoredVolume):
    """The first image series of a TIFF file, squeezed; ``path`` is the file, ``dataset`` None."""

    format: Format = "tiff"

    def _open(self) -> Any:
        import tifffile
        import zarr

        tif = tifffile.TiffFile(self.path)
        series = tif.series[0]
        return tif, zarr.open_array(series.aszarr(), mode="r")

    def _load_meta(self) -> None:
        if self.mode != "r":
            raise VolumeReadOnlyError(f"{self._where()}: TIFF volumes are read-only here; use mode='r'")
        if self.dataset not in (None, ""):
            raise VolumeFormatError(
                f"{self.path} is a TIFF file: it holds one volume, so name no dataset (got {self.dataset!r})"
            )
        self.dataset = None
        try:
            _, array = self._handle()
        except Exception as err:  # tifffile's errors for a damaged or unsupported file are many
            raise VolumeFormatError(f"{self.path}: not a TIFF stack tifffile can read ({err})") from None
        kept = [axis for axis, n in enumerate(array.shape) if n != 1]
        if len(kept) not in (3, 4):
            raise VolumeFormatError(
                f"{self.path}: a TIFF volume is a stack of 2D pages, (z, y, x) or (z, c, y, x) once its "
                f"length-1 axes are dropped; this one is {tuple(array.shape)}"
            )
        # stored order -> ours: (z, c, y, x) on disk is (c, z, y, x) here, as PyTC's readvol turns it
        self._axes = kept if len(kept) == 3 else [kept[1], kept[0], kept[2], kept[3]]
        self._stored_ndim = array.ndim
        self.shape = tuple(int(array.shape[a]) for a in self._axes)
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(array.chunks[a]) for a in self._axes)
        chunk_bytes = math.prod(array.chunks) * self.dtype.itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise VolumeFormatError(
                f"{self.path}: one strip of this TIFF holds {chunk_bytes:,} bytes (chunk "
                f"{tuple(array.chunks)}), over the {MAX_CHUNK_BYTES:,} read at once; store it tiled "
                "(tifffile.imwrite(..., tile=(256, 256))) or convert it to zarr"
            )

    @property
    def node(self) -> Path:
        return Path(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        return {}

    @property
    def voxel_size(self) -> None:
        return None

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        _, array = self._handle()
        stored: list[slice | int] = [0] * self._stored_ndim
        for ours, axis in enumerate(self._axes):
            stored[axis] = slices[ours]
        data = np.asarray(array[tuple(stored)])  # the kept axes, in stored order
        in_data = sorted(self._axes)
        return data.transpose([in_data.index(axis) for axis in self._axes])

    def close(self) -> None:
        if self._opened is not None:
            self._opened[1][0].close()
            self._opened = None


def open_tiff(root: Path, name: str | None, mode: str) -> TiffVolume:
    """The TIFF stack at ``root``."""
    if mode != "r":
        raise VolumeReadOnlyError(f"{root}: TIFF volumes are read-only here; use mode='r'")
    return TiffVolume(str(root), name, "r")
