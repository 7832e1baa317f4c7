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
from collections.abc import Mapping
from operator import attrgetter
from typing import Any

import numpy as np

from volumes.blocks import Index
from volumes.box import Box
from volumes.errors import GeometryError
from volumes.lru import LRU
from volumes.volume import Volume


class ChunkCachedVolume:
    """A read-only view of ``volume`` whose reads go through a cache of decoded chunks."""

    def __init__(self, volume: Volume, max_bytes: int) -> None:
        self.volume = volume
        self.max_bytes = max_bytes
        self.cache: LRU[np.ndarray] = LRU(max_size=max_bytes, size_of=attrgetter("nbytes"))
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
        data = self.cache.get(index)
        if data is not None:
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
