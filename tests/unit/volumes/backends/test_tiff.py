"""TIFF stacks as input volumes (volumes.backends.tiff): read as PyTC's readvol reads them (the first
series, length-1 axes dropped, (z, c, y, x) turned to (c, z, y, x)), out of core by strip or tile."""

from __future__ import annotations

import pickle
import zlib
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import tifffile
from PIL import Image

from volumes.backends import tiff as tiff_backend
from volumes.box import Box
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeReadOnlyError
from volumes.open import open_volume


def _stack(shape: tuple[int, ...], dtype: str = "uint8") -> np.ndarray:
    return (np.random.default_rng(0).integers(0, 250, size=shape)).astype(dtype)


@pytest.mark.parametrize(
    "layout",
    [{}, {"tile": (32, 32), "compression": "zlib"}, {"rowsperstrip": 16, "compression": "zlib"}],
    ids=["plain", "tiled-zlib", "strips-zlib"],
)
def test_a_stack_reads_as_pytcs_readvol_by_box(tmp_path: Path, layout: dict[str, object]) -> None:
    data = _stack((5, 70, 90))
    path = tmp_path / "test-input.tif"
    tifffile.imwrite(path, data, **layout)
    volume = open_volume(path)
    assert volume.format == "tiff" and volume.shape == (5, 70, 90) and volume.dtype == np.uint8
    assert np.array_equal(volume.read(Box.of_shape(volume.shape)), imageio.volread(path).squeeze())
    box = Box.from_bounds((1, 5, 7), (4, 41, 66))
    assert np.array_equal(volume.read(box), data[1:4, 5:41, 7:66])
    again = pickle.loads(pickle.dumps(volume))  # a Dask worker reopens it by path
    assert np.array_equal(again.read(box), data[1:4, 5:41, 7:66])


def test_tiles_are_chunks_so_a_box_reads_only_its_tiles(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, _stack((4, 64, 96)), photometric="minisblack", tile=(32, 32), compression="zlib")
    assert open_volume(path).chunks == (1, 32, 32)


def test_multichannel_pages_are_channel_first_as_pytc_turns_them(tmp_path: Path) -> None:
    data = _stack((5, 3, 40, 30), "uint16")  # (z, c, y, x) as a stack of 3-sample pages is stored
    path = tmp_path / "zc.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    volume = open_volume(path)
    assert volume.shape == (3, 5, 40, 30)
    pytc = imageio.volread(path).squeeze().transpose(1, 0, 2, 3)  # PyTC's readvol
    assert np.array_equal(volume.read(Box.of_shape(volume.shape)), pytc)
    assert np.array_equal(
        volume.read(Box.from_bounds((1, 2, 3, 4), (3, 5, 20, 25))), pytc[1:3, 2:5, 3:20, 4:25]
    )


def test_what_is_not_a_tiff_stack_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    single = tmp_path / "page.tif"
    tifffile.imwrite(single, _stack((1, 40, 30)))
    with pytest.raises(VolumeFormatError, match=r"page\.tif.*stack of 2D pages.*\(1, 40, 30\)"):
        open_volume(single)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, _stack((3, 40, 30)), photometric="minisblack")
    with pytest.raises(VolumeFormatError, match="name no dataset"):
        open_volume(stack, "main")
    with pytest.raises(VolumeReadOnlyError):
        open_volume(stack, mode="r+")
    monkeypatch.setattr(tiff_backend, "MAX_CHUNK_BYTES", 1000)  # a page of 1,200 bytes in one strip
    with pytest.raises(VolumeFormatError, match=r"1,200 bytes.*store it tiled"):
        open_volume(stack)
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(stack.read_bytes()[:8])
    with pytest.raises(VolumeFormatError, match=r"damaged\.tif"):
        open_volume(damaged)


def _bomb(path: Path) -> None:
    """A deflated TIFF whose last tile of page 1 is a zlib stream of 50 MiB of zeros (a 256-byte tile)."""
    tifffile.imwrite(
        path, np.zeros((3, 40, 30), np.uint8), photometric="minisblack", compression="zlib", tile=(16, 16)
    )
    bomb = zlib.compress(b"\0" * (50 << 20), 9)
    with open(path, "ab") as f:
        offset = f.seek(0, 2)
        f.write(bomb)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[1].tags
        offsets, counts = list(tags["TileOffsets"].value), list(tags["TileByteCounts"].value)
        offsets[-1], counts[-1] = offset, len(bomb)
        tags["TileOffsets"].overwrite(offsets)
        tags["TileByteCounts"].overwrite(counts)


def test_a_deflate_bomb_is_refused_naming_page_and_tile_and_unbounded_compressions_by_name(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bomb.tif"
    _bomb(path)
    volume = open_volume(path)
    assert volume.read(Box.from_bounds((0, 0, 0), (3, 16, 16))).sum() == 0  # tiles the box touches only
    with pytest.raises(OversizedChunkError, match=r"bomb\.tif page 1 chunk '5'.*decompression bomb"):
        volume.read(Box.of_shape(volume.shape))
    lzw = tmp_path / "lzw.tif"
    pages = [Image.fromarray(page) for page in _stack((3, 20, 20))]
    pages[0].save(lzw, save_all=True, append_images=pages[1:], compression="tiff_lzw")
    with pytest.raises(VolumeFormatError, match=r"lzw\.tif: page 0 is compressed with LZW.*zlib"):
        open_volume(lzw).read(Box.from_bounds((0, 0, 0), (1, 20, 20)))
