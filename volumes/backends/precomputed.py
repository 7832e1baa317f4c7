"""Neuroglancer precomputed volumes (read only): metadata from ``info``, voxels through tensorstore.

A precomputed volume is a folder holding an ``info`` file (``@type``
``neuroglancer_multiscale_volume``) that lists its scales; each scale has a ``key`` (the folder of its
chunks, or shard files), a ``size``, ``chunk_sizes``, ``resolution`` (nm) and ``voxel_offset``, all
in x, y, z order, and the array has a trailing channel axis. Here a scale is chosen by the dataset
name (its key, such as ``8_8_40``, or its index in the list; the first scale when none), its origin
is moved to 0, and the axes are turned to ours: (z, y, x) for one channel, (c, z, y, x) for more.

Decoding stays bounded as for the other formats: tensorstore decodes each chunk into a buffer of
the chunk's shape and refuses a raw chunk whose length differs, a JPEG or PNG whose header states
other dimensions, and a compressed segmentation whose offsets point outside the chunk.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.backends.meta import check_array_meta
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.files import read_json_object
from volumes.volume import Format, VoxelSize

PRECOMPUTED_TYPE = "neuroglancer_multiscale_volume"


def is_precomputed(info: dict[str, Any] | None) -> bool:
    """Whether ``info`` (a parsed ``info`` file) is a precomputed volume's."""
    return (
        info is not None
        and isinstance(info.get("scales"), list)
        and info.get("@type", PRECOMPUTED_TYPE) == PRECOMPUTED_TYPE
    )


def scale_keys(info: dict[str, Any]) -> list[str]:
    """The keys of the scales ``info`` lists, in order."""
    return [str(s.get("key")) for s in info.get("scales", []) if isinstance(s, dict)]


class PrecomputedVolume(StoredVolume):
    """One scale of a neuroglancer precomputed volume, in our (z, y, x) / (c, z, y, x) order."""

    format: Format = "precomputed"

    def _load_meta(self) -> None:
        if self.mode != "r":
            raise VolumeReadOnlyError(f"{self.path} is a neuroglancer precomputed volume: read only here")
        where = f"{self.path}/info"
        info = read_json_object(f"{self.path}/info")
        if not is_precomputed(info):
            raise VolumeFormatError(f"{where} is not a neuroglancer precomputed info file")
        assert info is not None
        self.scale_index, scale = _choose_scale(info, self.dataset, where)
        try:
            self.key = _safe_key(scale["key"], where)
            size = [int(s) for s in scale["size"]]
            chunk = [int(c) for c in scale["chunk_sizes"][0]]
            self.resolution = tuple(float(r) for r in scale["resolution"])
            self.dtype = np.dtype(str(info["data_type"]))
            self.channels = int(info.get("num_channels", 1))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise VolumeFormatError(
                f"{where} scale {self.scale_index} is not precomputed metadata: {err}"
            ) from None
        if len(size) != 3 or len(chunk) != 3 or len(self.resolution) != 3 or self.channels < 1:
            raise VolumeFormatError(
                f"{where} scale {self.scale_index}: size, chunk_sizes and resolution need 3 values (x, y, z)"
            )
        lead = (self.channels,) if self.channels > 1 else ()
        self.shape = lead + tuple(reversed(size))
        self.chunks = lead + tuple(reversed(chunk))
        check_array_meta(where, self.shape, self.chunks, self.dtype)

    def _open(self) -> Any:
        import tensorstore as ts  # only here: a parent that used tensorstore cannot fork safely

        spec = {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": self.path},
            "scale_index": self.scale_index,
        }
        try:
            store = ts.open(spec, read=True).result()
        except ValueError as err:
            raise VolumeFormatError(f"{self._where()} cannot be opened as precomputed: {err}") from None
        store = store[ts.d[:].translate_to[0]]  # voxel_offset -> 0
        store = store.T  # (c, z, y, x)
        return store if self.channels > 1 else store[0]

    @property
    def attrs(self) -> dict[str, Any]:
        info = read_json_object(f"{self.path}/info") or {}
        return {"neuroglancer": {k: v for k, v in info.items() if k != "scales"}, "scale": self.key}

    @property
    def voxel_size(self) -> VoxelSize | None:
        x, y, z = self.resolution
        return (z, y, x)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._handle()[slices].read().result())
        except ValueError as err:  # tensorstore's refusal of a chunk it cannot decode to its shape
            limit = math.prod(self.chunks) * self.dtype.itemsize
            raise OversizedChunkError(
                limit, f"holds a chunk tensorstore refuses: {err}", self._where()
            ) from None

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        raise VolumeReadOnlyError(f"{self._where()} is a neuroglancer precomputed volume: read only here")

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        raise VolumeReadOnlyError(f"{self._where()} is a neuroglancer precomputed volume: read only here")


def _choose_scale(info: dict[str, Any], dataset: str | None, where: str) -> tuple[int, dict[str, Any]]:
    """(index, scale) named by ``dataset``: a scale key or an index; the first scale when None."""
    scales = [s for s in info["scales"] if isinstance(s, dict)]
    if not scales:
        raise VolumeFormatError(f"{where} lists no scales")
    if dataset is None:
        return 0, scales[0]
    keys = scale_keys(info)
    if dataset in keys:
        return keys.index(dataset), scales[keys.index(dataset)]
    if dataset.isdigit() and int(dataset) < len(scales):
        return int(dataset), scales[int(dataset)]
    raise VolumeNotFoundError(
        f"no scale {dataset!r} in {where}; scales there: {keys} (or an index 0..{len(keys) - 1})"
    )


def _safe_key(key: Any, where: str) -> str:
    """A scale's ``key``: a relative path that stays inside the volume's folder."""
    text = str(key)
    parts = PurePosixPath(text).parts
    if not text or text.startswith("/") or "://" in text or ".." in parts:
        raise VolumeFormatError(f"{where} names scale key {text!r}: expected a folder inside the volume")
    return text
