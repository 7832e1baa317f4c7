"""PNG stacks as input volumes (volumes.backends.png): a ``.png`` file or pattern read as PyTC's
readvol reads it (the sorted matches stacked into uint8; RGB pages turned to (c, z, y, x)), one
section per file, each page's header checked before it is decoded."""

from __future__ import annotations

import glob
import pickle
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from volumes.backends import png as png_backend
from volumes.box import Box
from volumes.errors import VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.open import open_volume


def _pages(folder: Path, data: np.ndarray, prefix: str = "s") -> str:
    folder.mkdir(exist_ok=True)
    for z, page in enumerate(data):
        Image.fromarray(page).save(folder / f"{prefix}_{z:02d}.png")
    return str(folder / f"{prefix}_*.png")


def _as_pytc_stacks(pattern: str) -> np.ndarray:
    """The oracle: PyTC's readvol of a .png name is its sorted glob matches, stacked as uint8."""
    return np.stack([imageio.imread(name) for name in sorted(glob.glob(pattern))]).astype(np.uint8)


def test_a_pattern_is_its_sorted_files_stacked_and_read_by_box(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, (4, 30, 20)).astype(np.uint8)
    pattern = _pages(tmp_path / "gray", data)
    volume = open_volume(pattern)
    assert volume.format == "png" and volume.shape == (4, 30, 20) and volume.chunks == (1, 30, 20)
    assert np.array_equal(volume.read(Box.of_shape(volume.shape)), _as_pytc_stacks(pattern))
    box = Box.from_bounds((1, 3, 4), (3, 20, 15))
    assert np.array_equal(pickle.loads(pickle.dumps(volume)).read(box), data[1:3, 3:20, 4:15])
    one = open_volume(str(tmp_path / "gray" / "s_02.png"))  # one file: a one-section volume, as PyTC
    assert one.shape == (1, 30, 20) and np.array_equal(one.read(Box.of_shape(one.shape))[0], data[2])


def test_rgb_pages_are_channel_first_as_pytc_turns_them(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 256, (3, 16, 12, 3)).astype(np.uint8)
    pattern = _pages(tmp_path / "rgb", data)
    volume = open_volume(pattern)
    pytc = _as_pytc_stacks(pattern).transpose(3, 0, 1, 2)
    assert volume.shape == (3, 3, 16, 12)
    assert np.array_equal(volume.read(Box.of_shape(volume.shape)), pytc)
    assert np.array_equal(
        volume.read(Box.from_bounds((1, 0, 2, 3), (3, 2, 9, 11))), pytc[1:3, 0:2, 2:9, 3:11]
    )


def test_what_is_not_an_8_bit_stack_of_one_size_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(VolumeNotFoundError, match="no PNG file matches"):
        open_volume(str(tmp_path / "none_*.png"))
    pattern = _pages(tmp_path / "mixed", np.zeros((2, 10, 10), np.uint8))
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "mixed" / "s_09.png")  # a larger page
    volume = open_volume(pattern)
    assert volume.read(Box.from_bounds((0, 0, 0), (2, 10, 10))).shape == (2, 10, 10)
    with pytest.raises(VolumeFormatError, match=r"s_09\.png: a \(\(40, 40\), 'L'\) page"):
        volume.read(Box.of_shape(volume.shape))
    Image.fromarray(np.zeros((5, 5), np.uint16)).save(tmp_path / "deep.png")
    with pytest.raises(VolumeFormatError, match=r"deep\.png: a 'I;16' page"):
        open_volume(str(tmp_path / "deep.png"))
    with pytest.raises(VolumeReadOnlyError):
        open_volume(pattern, mode="r+")
    with pytest.raises(VolumeFormatError, match="name no dataset"):
        open_volume(pattern, "raw")
    monkeypatch.setattr(png_backend, "MAX_PAGE_BYTES", 50)
    with pytest.raises(VolumeFormatError, match="a page of 100 bytes"):
        open_volume(pattern)
