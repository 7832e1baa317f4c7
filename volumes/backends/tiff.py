"""TIFF stacks, read with tifffile. Read-only: outputs go to zarr or N5.

The volume is the file's first image series with its length-1 axes dropped, as PyTC's ``readvol``
reads a ``.tif`` (``imageio.volread(...).squeeze()``): a stack of 2D pages is (z, y, x); a stack
of multi-channel pages, (z, c, y, x) on disk, is (c, z, y, x) as PyTC turns it.

Reading is out of core: tifffile's zarr store reads only the strips or tiles a box touches. A file
whose single chunk (a strip, a tile, or a whole page when the page is one strip) would exceed
:data:`MAX_CHUNK_BYTES` is refused by name and size instead of being read whole: store it tiled,
or convert it to zarr.

Pages are read uncompressed or deflated (zlib, TIFF's ``DEFLATE`` and ``ADOBE_DEFLATE``), the
compressions whose output can be bounded: each deflated strip or tile a box touches is first
decompressed here into at most its nominal size (strip or tile shape x itemsize), once per process,
as HDF5's deflated chunks are (a decompression bomb is refused naming the page and segment; tifffile
would grow its buffer until the stream ends). Other compressions (LZW, PackBits, JPEG, ...) are
refused naming the compression: store the stack uncompressed or with zlib, or convert it to zarr.
"""

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
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeReadOnlyError
from volumes.volume import Format

TIFF_SUFFIXES = (".tif", ".tiff")
# One strip or tile read at once; a one-strip page is a chunk too (tifffile cannot read part of it
# when compressed). 1 GiB: a 32768 x 32768 uint8 page.
MAX_CHUNK_BYTES = 1 << 30
_NONE, _DEFLATE = 1, (8, 32946)  # TIFF compression codes: none; ADOBE_DEFLATE and DEFLATE (zlib streams)
_ZLIB = numcodecs.Zlib()


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
        tif, array = self._handle()
        stored: list[slice | int] = [0] * self._stored_ndim
        for ours, axis in enumerate(self._axes):
            stored[axis] = slices[ours]
        self._check_segments(tif, stored)
        data = np.asarray(array[tuple(stored)])  # the kept axes, in stored order
        in_data = sorted(self._axes)
        return data.transpose([in_data.index(axis) for axis in self._axes])

    def _check_segments(self, tif: Any, stored: list[slice | int]) -> None:
        """Refuse a page of a compression we cannot bound; decompress each deflated strip or tile
        the box touches into at most its nominal size first (once per process)."""
        series = tif.series[0]
        page_ndim = len(series.pages[0].shape) if series.pages[0] is not None else 2
        lead = series.shape[: len(series.shape) - page_ndim]
        ranges = [_indices(stored[a], n) for a, n in enumerate(lead)]
        ys, xs = stored[len(lead)], stored[len(lead) + 1] if page_ndim > 1 else slice(None)
        pid, checked = self.__dict__.get("_checked", (None, set()))
        if pid != os.getpid():
            checked = set()
            self._checked: tuple[int, set[tuple[int, int]]] = (os.getpid(), checked)
        for index in itertools.product(*ranges):
            number = int(np.ravel_multi_index(index, lead)) if lead else 0
            page = series.pages[number]  # a TiffPage, or a TiffFrame: its own offsets, its keyframe's layout
            compression = page.keyframe.compression
            if int(compression) == _NONE:
                continue
            if int(compression) not in _DEFLATE:
                raise VolumeFormatError(
                    f"{self.path}: page {number} is compressed with {compression.name}, whose output "
                    "cannot be bounded before it is decoded; store the stack uncompressed or with zlib "
                    "(tifffile.imwrite(..., compression='zlib')), or convert it to zarr"
                )
            for segment in _segments(page, ys, xs):
                if (number, segment) in checked:
                    continue
                self._check_segment(tif, page, number, segment)
                checked.add((number, segment))

    def _check_segment(self, tif: Any, page: Any, number: int, segment: int) -> None:
        offset, count = page.dataoffsets[segment], page.databytecounts[segment]
        if not count:
            return  # never written: reads as zeros
        layout = page.keyframe
        nominal = (
            math.prod(layout.chunks) * np.dtype(layout.dtype).itemsize
        )  # samples included when contiguous
        tif.filehandle.seek(offset)
        data = tif.filehandle.read(count)
        try:
            decode_bounded(_ZLIB, data, nominal)
        except OversizedChunkError as err:
            raise err.located(where=f"{self.path} page {number}", chunk=str(segment)) from None

    def close(self) -> None:
        if self._opened is not None:
            self._opened[1][0].close()
            self._opened = None


def _indices(index: slice | int, n: int) -> range:
    if isinstance(index, int):
        return range(index, index + 1)
    return range(*index.indices(n))


def _segments(page: Any, ys: slice | int, xs: slice | int) -> list[int]:
    """The strips or tiles of ``page`` that rows ``ys`` and columns ``xs`` touch (all of them for
    separately stored samples)."""
    count, layout = len(page.dataoffsets), page.keyframe
    chunked = tuple(layout.chunked)
    if len(chunked) != 2 or layout.chunks[0] < 1 or count != chunked[0] * chunked[1]:
        return list(range(count))
    height, width = layout.chunks[0], layout.chunks[1]
    rows = _indices(ys, layout.imagelength)
    cols = _indices(xs, layout.imagewidth)
    if not rows or not cols:
        return []
    ty = range(rows[0] // height, rows[-1] // height + 1)
    tx = range(cols[0] // width, cols[-1] // width + 1)
    return [y * chunked[1] + x for y in ty for x in tx]


def open_tiff(root: Path, name: str | None, mode: str) -> TiffVolume:
    """The TIFF stack at ``root``."""
    if mode != "r":
        raise VolumeReadOnlyError(f"{root}: TIFF volumes are read-only here; use mode='r'")
    return TiffVolume(str(root), name, "r")
