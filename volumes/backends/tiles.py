"""Volumes stored as 2D image tiles, described by PyTorch Connectomics' TileDataset JSON. Read-only.

The JSON is what PyTC's ``create_tile_metadata`` writes and its ``TileDataset`` reads::

    {"image": ["z0000/{row}_{column}.png", "z0001/{row}_{column}.png", ...],  # one per z slice
     "depth": 5, "height": 70, "width": 90,
     "tile_size": 32,            # or [tile_height, tile_width]
     "tile_st": [1, 1],          # row and column index of the first tile in the file names (default [0, 0])
     "tile_ratio": 1,            # each tile image is zoomed by this factor before it is placed (default 1)
     "dtype": "uint8"}

As in PyTC's ``reconstruct_volume_from_tiles`` (connectomics/data/io/tiles.py), tile (r, c) of slice
z is ``image[z]`` with ``{row}`` = r + tile_st[0] and ``{column}`` = c + tile_st[1]; after the zoom
(linear for images, nearest-neighbour for a volume opened as labels: PyTC's ``resize_order``) its
top-left voxel lands at (r * tile_height, c * tile_width)::

          c=0          c=1          c=2
        +------------+------------+-------+ <- width
   r=0  | {1}_{1}    | {1}_{2}    | {1}_{3} (the last column may be narrower, or padded past width)
        +------------+------------+-------+
   r=1  | {2}_{1}    |  missing: reads 0  |
        +------------+------------+-------+ <- height

Unlike PyTC: a missing tile reads 0, not 128; a pattern without ``{row}``/``{column}`` is one image
for the whole slice (PyTC would repeat its top-left tile); tiles must be one channel (PyTC takes the
first band of an image, or decodes VAST's RGB ids for labels, and we cannot tell which is meant);
and a tile larger than its place, or of a type the volume's dtype cannot hold, is an error.

Tile paths are relative to the JSON's folder and must stay inside it, symlinks followed: the service
confines the JSON's own path to the data roots, and this keeps the tiles there too.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np

from volumes.backends.base import BaseVolume
from volumes.errors import VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.files import read_json_object
from volumes.lru import LRU
from volumes.volume import Format, Mode, VoxelSize

MAX_CACHED_TILES = 64
MAX_CACHED_BYTES = 512 * 2**20
_FIELDS = frozenset({"row", "column"})
# What the tile cache holds for a tile file that does not exist (it reads 0): compared by identity.
_ABSENT = np.zeros((0, 0), np.uint8)


@dataclass(frozen=True)
class TilePattern:
    """One ``image`` entry: literal text with ``{row}`` and ``{column}`` fields (format specs allowed).

    Rendered field by field with ``format(int, spec)``, never ``str.format``: a pattern comes from a
    file a user wrote, and ``str.format`` would let it reach attributes of the arguments.
    """

    key: str  # "image[3]", for messages
    text: str
    parts: tuple[tuple[str, str | None, str], ...]  # (literal, field or None, format spec)

    @property
    def whole_slice(self) -> bool:
        return all(field is None for _, field, _ in self.parts)

    def render(self, row: int, column: int) -> str:
        values = {"row": row, "column": column}
        return "".join(
            literal + (format(values[field], spec) if field else "") for literal, field, spec in self.parts
        )


class TileVolume(BaseVolume):
    """A (z, y, x) volume of image tiles named by a TileDataset JSON; chunks are (1, tile_h, tile_w)."""

    format: Format = "tiles"

    def __init__(self, path: str, mode: Mode = "r", *, labels: bool = False) -> None:
        if mode != "r":
            raise VolumeReadOnlyError(f"{path}: TileDataset volumes are read-only here; use mode='r'")
        self.path, self.dataset, self.mode = path, None, mode
        self.labels = labels  # ids or masks: tile_ratio zooms nearest-neighbour, as PyTC's labels
        self.folder = Path(path).resolve().parent
        meta = read_json_object(path)
        if meta is None:
            raise VolumeNotFoundError(f"no volume at {path}: the file does not exist")
        depth, height, width = (_positive_int(meta, key, path) for key in ("depth", "height", "width"))
        self.shape = (depth, height, width)
        self.dtype = _dtype(meta, path)
        tile_h, tile_w = _tile_size(meta, path)
        self.chunks = (1, tile_h, tile_w)
        self.tile_st = _tile_st(meta, path)
        self.tile_ratio = _tile_ratio(meta, path)
        self.patterns = _patterns(meta, depth, path, self.folder)
        self._cache = tile_cache()  # decoded tiles by file

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "labels": self.labels}

    def __setstate__(self, state: dict[str, Any]) -> None:
        TileVolume.__init__(self, state["path"], labels=state.get("labels", False))

    @property
    def voxel_size(self) -> VoxelSize | None:
        return None  # TileDataset JSON records no resolution

    @property
    def attrs(self) -> dict[str, Any]:
        return {}

    def write(self, box: Any, data: np.ndarray) -> None:
        raise VolumeReadOnlyError(f"{self.path} is a TileDataset JSON volume, which is read-only")

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        raise VolumeReadOnlyError(f"{self.path} is a TileDataset JSON volume, which is read-only")

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        """Paste every tile the box touches; what no tile covers stays 0."""
        zs, ys, xs = slices
        out = np.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), self.dtype)
        _, tile_h, tile_w = self.chunks
        for z in range(zs.start, zs.stop):
            plane = out[z - zs.start]
            for row in range(ys.start // tile_h, math.ceil(ys.stop / tile_h)):
                for column in range(xs.start // tile_w, math.ceil(xs.stop / tile_w)):
                    tile = self._tile(z, row, column)
                    if tile is not None:
                        _paste(plane, (ys.start, xs.start), tile, (row * tile_h, column * tile_w))
        return out

    def _tile(self, z: int, row: int, column: int) -> np.ndarray | None:
        """Tile (row, column) of slice z, zoomed and cast; None when its file does not exist."""
        pattern, (_, tile_h, tile_w) = self.patterns[z], self.chunks
        if not pattern.whole_slice:
            name = pattern.render(row + self.tile_st[0], column + self.tile_st[1])
            return self._image(pattern, name, (tile_h, tile_w))
        grid = (math.ceil(self.shape[1] / tile_h) * tile_h, math.ceil(self.shape[2] / tile_w) * tile_w)
        image = self._image(pattern, pattern.render(0, 0), grid)
        if image is None:
            return None
        return image[row * tile_h : (row + 1) * tile_h, column * tile_w : (column + 1) * tile_w]

    def _image(self, pattern: TilePattern, name: str, limit: tuple[int, int]) -> np.ndarray | None:
        path = self._confined(pattern, name)
        image = self._cache.get(str(path))
        if image is None:  # decoded without the lock: reader threads decode tiles side by side
            raw = _decode(path, lambda height, width: self._check_fits(path, (height, width), limit))
            image = _ABSENT if raw is None else self._prepare(raw, path, limit)
            self._cache.put(str(path), image)
        return None if image is _ABSENT else image

    def _confined(self, pattern: TilePattern, name: str) -> Path:
        """The tile file, symlinks resolved, refused unless inside the JSON's folder."""
        resolved = Path(os.path.realpath(self.folder / name))
        if not resolved.is_relative_to(self.folder):
            raise VolumeFormatError(
                f"{self.path}: {pattern.key} {pattern.text!r} names {name!r}, which resolves to "
                f"{resolved}, outside the JSON's folder {self.folder}"
            )
        return resolved

    def _prepare(self, raw: np.ndarray, path: Path, limit: tuple[int, int]) -> np.ndarray:
        """A decoded tile, checked, zoomed by ``tile_ratio`` and cast to the volume's dtype."""
        if raw.ndim != 2:
            raise VolumeFormatError(
                f"tile {path} has shape {raw.shape}; expected one channel (height, width) for {self.path}"
            )
        if not np.can_cast(raw.dtype, self.dtype):
            raise VolumeFormatError(
                f"tile {path} holds {raw.dtype}, which {self.path}'s dtype {self.dtype} cannot"
            )
        self._check_fits(path, (raw.shape[0], raw.shape[1]), limit)
        tile = raw.astype(np.uint8) if raw.dtype == bool else raw
        if self.tile_ratio != 1:
            from scipy.ndimage import zoom

            # PyTC's resize_order: linear for images, nearest for labels (no blended ids)
            tile = zoom(tile, self.tile_ratio, order=0 if self.labels else 1)
        tile = tile.astype(self.dtype)
        tile.setflags(write=False)
        return tile

    def _check_fits(self, path: Path, size: tuple[int, int], limit: tuple[int, int]) -> None:
        """A tile of ``size`` (from its file's header, before decoding it: a small PNG may declare
        gigapixels) fits its place once zoomed by ``tile_ratio`` (scipy's rounding)."""
        zoomed = tuple(round(n * self.tile_ratio) for n in size)
        if zoomed[0] > limit[0] or zoomed[1] > limit[1]:
            ratio = f" after tile_ratio {self.tile_ratio}" if self.tile_ratio != 1 else ""
            raise VolumeFormatError(
                f"tile {path} is {zoomed[0]}x{zoomed[1]}{ratio}, larger than its place of "
                f"{limit[0]}x{limit[1]} in {self.path}"
            )


def tile_cache(max_entries: int = MAX_CACHED_TILES, max_bytes: int = MAX_CACHED_BYTES) -> LRU[np.ndarray]:
    """An LRU of decoded tiles (or ``_ABSENT``) by file path, bounded by count and by bytes."""
    return LRU(max_entries, max_size=max_bytes, size_of=attrgetter("nbytes"))


def open_tiles(path: Path, dataset: str | None, mode: Mode, *, labels: bool = False) -> TileVolume:
    """The TileDataset JSON at ``path``; it is one volume, so no ``dataset`` may be named."""
    if dataset:
        raise VolumeNotFoundError(
            f"no dataset {dataset!r} in {path}: a TileDataset JSON is a single volume; omit the dataset"
        )
    return TileVolume(str(path), mode, labels=labels)


def _paste(plane: np.ndarray, origin: tuple[int, int], tile: np.ndarray, at: tuple[int, int]) -> None:
    """Copy the part of ``tile`` (top-left at ``at``) that falls inside ``plane`` (top-left at ``origin``)."""
    y0, x0 = (max(o, a) for o, a in zip(origin, at, strict=True))
    y1 = min(origin[0] + plane.shape[0], at[0] + tile.shape[0])
    x1 = min(origin[1] + plane.shape[1], at[1] + tile.shape[1])
    if y0 < y1 and x0 < x1:
        plane[y0 - origin[0] : y1 - origin[0], x0 - origin[1] : x1 - origin[1]] = tile[
            y0 - at[0] : y1 - at[0], x0 - at[1] : x1 - at[1]
        ]


def _decode(path: Path, fits: Callable[[int, int], None]) -> np.ndarray | None:
    """The pixels of a tile file (``.npy`` or anything Pillow reads); None when it does not exist.
    ``fits(height, width)`` is called with the size its header declares before any pixel is read."""
    from PIL import Image

    try:
        if path.suffix.lower() == ".npy":
            mapped = np.load(path, allow_pickle=False, mmap_mode="r")
            if mapped.ndim != 2:
                return mapped  # refused by the caller, unread
            fits(mapped.shape[0], mapped.shape[1])
            return np.array(mapped)
        with Image.open(path) as image:
            fits(image.height, image.width)
            return np.asarray(image)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise VolumeFormatError(f"tile {path} cannot be decoded: {err}") from err


# --- the JSON, checked key by key -----------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _required(meta: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in meta:
        raise VolumeFormatError(f"{where}: TileDataset JSON has no {key!r} key")
    return meta[key]


def _positive_int(meta: Mapping[str, Any], key: str, where: str) -> int:
    value = _required(meta, key, where)
    if not _is_int(value) or value < 1:
        raise VolumeFormatError(f"{where}: {key!r} must be a positive integer, got {value!r}")
    return int(value)


def _dtype(meta: Mapping[str, Any], where: str) -> np.dtype:
    value = _required(meta, "dtype", where)
    try:
        dtype = np.dtype(value) if isinstance(value, str) else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in "buif":
        raise VolumeFormatError(f"{where}: 'dtype' must name a numeric type such as 'uint8', got {value!r}")
    return dtype


def _tile_size(meta: Mapping[str, Any], where: str) -> tuple[int, int]:
    value = _required(meta, "tile_size", where)
    sizes = [value, value] if _is_int(value) else value
    if not isinstance(sizes, list) or len(sizes) != 2 or not all(_is_int(s) and s > 0 for s in sizes):
        raise VolumeFormatError(
            f"{where}: 'tile_size' must be a positive integer or [height, width], got {value!r}"
        )
    return int(sizes[0]), int(sizes[1])


def _tile_st(meta: Mapping[str, Any], where: str) -> tuple[int, int]:
    value = meta.get("tile_st", [0, 0])
    if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
        raise VolumeFormatError(f"{where}: 'tile_st' must be [first row, first column], got {value!r}")
    return int(value[0]), int(value[1])


def _tile_ratio(meta: Mapping[str, Any], where: str) -> float:
    value = meta.get("tile_ratio", 1)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise VolumeFormatError(f"{where}: 'tile_ratio' must be a positive number, got {value!r}")
    return float(value)


def _patterns(meta: Mapping[str, Any], depth: int, where: str, folder: Path) -> tuple[TilePattern, ...]:
    entries = _required(meta, "image", where)
    if not isinstance(entries, list) or len(entries) != depth:
        got = f"{len(entries)} entries" if isinstance(entries, list) else type(entries).__name__
        raise VolumeFormatError(
            f"{where}: 'image' must list one path pattern per slice (depth {depth}), got {got}"
        )
    return tuple(_pattern(entry, f"image[{z}]", where, folder) for z, entry in enumerate(entries))


def _pattern(entry: Any, key: str, where: str, folder: Path) -> TilePattern:
    """``entry`` parsed, with its fields checked and its folder part confined (before any symlink)."""
    if not isinstance(entry, str) or not entry or "\0" in entry:
        raise VolumeFormatError(f"{where}: {key} must be a non-empty path string, got {entry!r}")
    try:
        parsed = list(string.Formatter().parse(entry))
    except ValueError as err:
        raise VolumeFormatError(f"{where}: {key} {entry!r} is not a valid pattern: {err}") from err
    fields = {field for _, field, _, _ in parsed if field is not None}
    if fields and (fields != _FIELDS or any(conv for _, _, _, conv in parsed)):
        raise VolumeFormatError(
            f"{where}: {key} {entry!r} may hold {{row}} and {{column}} (both, or neither), nothing else"
        )
    pattern = TilePattern(key, entry, tuple((lit, field, spec or "") for lit, field, spec, _ in parsed))
    try:
        sample = pattern.render(0, 0)
    except ValueError as err:
        raise VolumeFormatError(f"{where}: {key} {entry!r} has a bad format spec: {err}") from err
    # Absolute paths are fine inside the folder (PyTC's create_tile_metadata writes them).
    if not Path(os.path.normpath(folder / sample)).is_relative_to(folder):
        raise VolumeFormatError(f"{where}: {key} {entry!r} leads out of the JSON's folder {folder}")
    return pattern
