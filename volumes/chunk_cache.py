"""Decoded chunks kept in memory for many small reads of one volume (training crops).

A training run reads two or three small boxes per crop (image, label, mask), thousands of times,
at random places. zarr decodes whole chunks for any read, and zarr-python 3 adds about 2 ms of
event-loop and thread hand-off per call, so a crop of 9x65x65 cost 5 ms of a loader thread per
sample with plain reads. :class:`ChunkCachedVolume` reads whole chunks once, keeps them decoded in
an LRU bounded by bytes, and serves every box from them: the same voxels, one numpy copy per
chunk touched. Read-only; safe to share between loader threads (a chunk two threads miss at once
is read twice, never torn).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from volumes.box import Box
from volumes.errors import GeometryError
from volumes.volume import Volume

Index = tuple[int, ...]


class ArrayLRU:
    """Arrays by key (None for "known absent"), least recently used dropped first, bounded by bytes
    and optionally by count. Thread-safe: a key two threads miss at once is loaded by both and kept
    once, never torn, and nobody loads while holding the lock."""

    def __init__(self, max_bytes: int, max_entries: int | None = None) -> None:
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self._entries: OrderedDict[Any, np.ndarray | None] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Any) -> tuple[bool, np.ndarray | None]:
        with self._lock:
            if key not in self._entries:
                return False, None
            self._entries.move_to_end(key)
            return True, self._entries[key]

    def put(self, key: Any, value: np.ndarray | None) -> None:
        """Keep ``value`` unless it alone exceeds ``max_bytes`` or ``key`` is there already."""
        size = 0 if value is None else value.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = value
            self.nbytes += size
            limit = self.max_entries
            while self.nbytes > self.max_bytes or (limit is not None and len(self._entries) > limit):
                _, dropped = self._entries.popitem(last=False)
                self.nbytes -= 0 if dropped is None else dropped.nbytes


class ChunkCachedVolume:
    """A read-only view of ``volume`` whose reads go through a cache of decoded chunks."""

    def __init__(self, volume: Volume, max_bytes: int) -> None:
        self.volume = volume
        self.max_bytes = max_bytes
        self.cache = ArrayLRU(max_bytes)
        self.hits = self.misses = 0  # counted without a lock: figures, not control

    # --- the Volume protocol, delegated ------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.volume.path

    @property
    def dataset(self) -> str | None:
        return self.volume.dataset

    @property
    def format(self) -> Any:
        return self.volume.format

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.volume.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.volume.dtype

    @property
    def chunks(self) -> tuple[int, ...]:
        return tuple(self.volume.chunks)

    @property
    def ndim(self) -> int:
        return self.volume.ndim

    @property
    def voxel_size(self) -> Any:
        return self.volume.voxel_size

    @property
    def attrs(self) -> dict[str, Any]:
        return self.volume.attrs

    def write(self, box: Box, data: np.ndarray) -> None:
        raise GeometryError(f"{self.volume.path} is opened for cached reading only")

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        raise GeometryError(f"{self.volume.path} is opened for cached reading only")

    # --- reads ---------------------------------------------------------------------------------------
    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (all dimensions, inside the array), as ``volume.read`` gives them."""
        if len(box.shape) != self.ndim or any(
            o < 0 or o + s > n for o, s, n in zip(box.offset, box.shape, self.shape, strict=True)
        ):
            return self.volume.read(box)  # the volume's own error, naming the box and the array
        out = np.empty(box.shape, self.dtype)
        if box.is_empty():
            return out
        ranges = [
            range(o // c, (o + s - 1) // c + 1)
            for o, s, c in zip(box.offset, box.shape, self.chunks, strict=True)
        ]
        for index in itertools.product(*ranges):
            chunk_box = self._chunk_box(index)
            part = chunk_box.intersect(box)
            data = self._chunk(index, chunk_box)
            out[part.relative_to(box).slices()] = data[part.relative_to(chunk_box).slices()]
        return out

    def _chunk_box(self, index: Index) -> Box:
        offset = tuple(i * c for i, c in zip(index, self.chunks, strict=True))
        shape = tuple(min(c, n - o) for o, c, n in zip(offset, self.chunks, self.shape, strict=True))
        return Box(offset, shape)

    def _chunk(self, index: Index, chunk_box: Box) -> np.ndarray:
        found, data = self.cache.get(index)
        if found and data is not None:
            self.hits += 1
            return data
        self.misses += 1
        data = self.volume.read(chunk_box)
        data.setflags(write=False)
        self.cache.put(index, data)
        return data


def cached(volume: Volume, max_bytes: int) -> Volume:
    """``volume`` behind a chunk cache of ``max_bytes``; the volume itself when that is 0."""
    if max_bytes <= 0:
        return volume
    return ChunkCachedVolume(volume, max_bytes)  # type: ignore[return-value]
