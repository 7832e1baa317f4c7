"""PNG stacks, read with Pillow. Read-only: outputs go to zarr or N5.

A PNG volume is a file name pattern (``images/slice_*.png``) or one ``.png`` file: the files it
matches, in sorted order, are the z sections, as PyTC's ``readvol`` reads a ``.png`` name
(``readimgs``: ``sorted(glob.glob(name))``, stacked into uint8). Gray pages are (z, y, x); RGB or
RGBA pages (z, y, x, c) on disk are (c, z, y, x), as PyTC turns them. Only 8-bit pages are read
(PyTC stores every page in a uint8 array, which wraps 16-bit values); others are refused by name.

Reading is by section: a box decodes the files of its z range only, each whole (PNG cannot be
read in part). Every file's header must declare the first file's size and mode before it is
decoded, so a page that would decode to more than its place (a decompression bomb) is refused
naming the file, and so is a page larger than :data:`MAX_PAGE_BYTES`.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.errors import VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.volume import Format

MAX_PAGE_BYTES = 1 << 30  # one decoded page: a 32768 x 32768 gray image
_CHANNELS = {"L": None, "RGB": 3, "RGBA": 4}  # 8-bit Pillow modes -> channels (None: gray)
_GLOB = ("*", "?", "[")


def is_png_stack(path: str) -> bool:
    """A ``.png`` name: one file, or a pattern of files (PyTC's ``readvol`` by suffix)."""
    return str(path).lower().endswith(".png")


def has_pattern(path: str) -> bool:
    return any(c in str(path) for c in _GLOB)


class PngStackVolume(StoredVolume):
    """The sorted files a ``.png`` name matches, stacked; ``path`` is the name, ``dataset`` None."""

    format: Format = "png"

    def _files(self) -> list[str]:
        return sorted(glob.glob(self.path)) if has_pattern(self.path) else [self.path]

    def _open(self) -> Any:
        return self._files()

    def _load_meta(self) -> None:
        if self.mode != "r":
            raise VolumeReadOnlyError(f"{self.path}: PNG stacks are read-only here; use mode='r'")
        if self.dataset not in (None, ""):
            raise VolumeFormatError(f"{self.path} is a PNG stack: name no dataset (got {self.dataset!r})")
        self.dataset = None
        files = self._handle()
        if not files or not Path(files[0]).is_file():
            raise VolumeNotFoundError(f"no PNG file matches {self.path}")
        self._page = _header(files[0])
        size, mode = self._page
        channels = _CHANNELS[mode]
        page_bytes = size[0] * size[1] * (channels or 1)
        if page_bytes > MAX_PAGE_BYTES:
            raise VolumeFormatError(
                f"{files[0]}: a page of {page_bytes:,} bytes, over the {MAX_PAGE_BYTES:,} decoded at once; "
                "convert the stack to zarr"
            )
        spatial = (len(files), size[1], size[0])
        self.shape = spatial if channels is None else (channels, *spatial)
        self.dtype = np.dtype(np.uint8)
        self.chunks = (1, size[1], size[0]) if channels is None else (channels, 1, size[1], size[0])

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
        from PIL import Image

        files = self._handle()
        channel = slices[0] if len(slices) == 4 else None
        zs, ys, xs = slices[-3:]
        pages = []
        for name in files[zs]:
            if _header(name) != self._page:
                raise VolumeFormatError(
                    f"{name}: a {_header(name)} page in a stack of {self._page} pages (size, mode); "
                    "every page of a stack has the first one's size and mode"
                )
            with Image.open(name) as image:
                page = np.asarray(image)
            pages.append(page[ys, xs] if channel is None else page[ys, xs, channel].transpose(2, 0, 1))
        if channel is None:
            return np.stack(pages)
        return np.stack(pages, axis=1)


def _header(name: str) -> tuple[tuple[int, int], str]:
    """(width, height) and mode, from the file's header only (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(name) as image:
            if image.format != "PNG":
                raise VolumeFormatError(f"{name} is not a PNG file ({image.format})")
            size, mode = (int(image.size[0]), int(image.size[1])), str(image.mode)
    except (UnidentifiedImageError, OSError) as err:
        raise VolumeFormatError(f"{name}: not a PNG file Pillow can read ({err})") from None
    if mode not in _CHANNELS:
        raise VolumeFormatError(
            f"{name}: a {mode!r} page; PNG stacks are read as 8-bit gray, RGB or RGBA pages, as PyTC "
            "stores them in uint8 (which wraps 16-bit values); convert the stack to zarr"
        )
    return size, mode


def open_png(path: str, name: str | None, mode: str) -> PngStackVolume:
    """The PNG stack ``path`` names (one file, or a pattern)."""
    if mode != "r":
        raise VolumeReadOnlyError(f"{path}: PNG stacks are read-only here; use mode='r'")
    return PngStackVolume(str(path), name, "r")
