"""The chunk cache serves exactly the voxels of the volume, bounded in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from volumes.box import Box
from volumes.chunk_cache import ChunkCachedVolume, cached
from volumes.errors import VolumeError
from volumes.open import open_volume


@pytest.mark.parametrize("shape", [(19, 45, 41), (2, 13, 30, 17)])
def test_cached_reads_equal_direct_reads(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    chunks = (8, 16, 16) if len(shape) == 3 else (1, 8, 16, 8)
    zarr.open_group(tmp_path / "v.zarr", mode="w").create_array("raw", data=data, chunks=chunks)
    volume = open_volume(str(tmp_path / "v.zarr"), "raw")
    view = ChunkCachedVolume(volume, max_bytes=4 * int(np.prod(chunks)))  # room for 4 chunks
    rng = np.random.default_rng(1)
    for _ in range(200):
        size = [int(rng.integers(1, n + 1)) for n in shape]
        offset = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, size, strict=True)]
        box = Box(tuple(offset), tuple(size))
        got = view.read(box)
        assert got.dtype == data.dtype and got.flags.c_contiguous
        np.testing.assert_array_equal(got, data[box.slices()])
    assert view.hits > 0 and view.misses > 0
    assert view.cache.size <= view.max_bytes
    assert view.shape == volume.shape and view.chunks == volume.chunks


def test_boxes_outside_fail_as_the_volume_does_and_writes_are_refused(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "v.zarr", mode="w").create_array("raw", data=np.zeros((8, 8, 8), np.uint8))
    volume = open_volume(str(tmp_path / "v.zarr"), "raw")
    view = cached(volume, 1 << 20)
    with pytest.raises(VolumeError):
        view.read(Box((4, 0, 0), (8, 8, 8)))
    with pytest.raises(VolumeError, match="cached reading only"):
        view.write(Box((0, 0, 0), (1, 1, 1)), np.zeros((1, 1, 1), np.uint8))
    assert cached(volume, 0) is volume
