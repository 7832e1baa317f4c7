"""read_padded equals np.pad of the whole volume, cut to the box, and reads only once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volumes.backends.memory import ArrayVolume
from volumes.box import Box
from volumes.errors import GeometryError
from volumes.padding import PadMode, read_padded

NUMPY_MODE = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


def _expected(full: np.ndarray, box: Box, pad_mode: PadMode) -> np.ndarray:
    """np.pad the whole (spatially last-three-axis) volume enough to hold ``box``, then cut it."""
    spatial = full.shape[-3:]
    before = [max(0, -o) for o in box.offset]
    after = [max(0, e - n) for e, n in zip(box.end, spatial, strict=True)]
    pads = [(0, 0)] * (full.ndim - 3) + list(zip(before, after, strict=True))
    padded = np.pad(full, pads, mode=NUMPY_MODE[pad_mode])  # type: ignore[call-overload]
    shifted = box.shift(before)
    return padded[(Ellipsis, *shifted.slices())]


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, Box]:
    """A small volume and a box anywhere around it, pads up to several times the volume."""
    shape = tuple(draw(st.integers(1, 5)) for _ in range(3))
    offset = tuple(draw(st.integers(-3 * n - 2, 2 * n + 1)) for n in shape)
    size = tuple(draw(st.integers(0, 4 * n + 3)) for n in shape)
    data = np.random.default_rng(draw(st.integers(0, 2**16))).integers(0, 1000, shape).astype(np.int32)
    return data, Box(offset, size)


@settings(max_examples=300, deadline=None)
@given(cases(), st.sampled_from(["reflect", "replicate", "constant"]))
def test_read_padded_equals_np_pad(case: tuple[np.ndarray, Box], pad_mode: PadMode) -> None:
    data, box = case
    result = read_padded(ArrayVolume(data), box, pad_mode)
    assert result.dtype == data.dtype
    np.testing.assert_array_equal(result, _expected(data, box, pad_mode))


@settings(max_examples=100, deadline=None)
@given(cases(), st.sampled_from(["reflect", "replicate", "constant"]), st.integers(1, 3))
def test_read_padded_channels(case: tuple[np.ndarray, Box], pad_mode: PadMode, channels: int) -> None:
    data, box = case
    full = np.stack([data + 1000 * c for c in range(channels)])
    volume = ArrayVolume(full)
    expected = _expected(full, box, pad_mode)
    np.testing.assert_array_equal(read_padded(volume, box, pad_mode), expected)
    np.testing.assert_array_equal(read_padded(volume, box, pad_mode, channel=channels - 1), expected[-1])


class _CountingVolume(ArrayVolume):
    """Records every box read, to show padding reads one hull and never outside the volume."""

    def __init__(self, data: np.ndarray) -> None:
        super().__init__(data)
        self.reads: list[Box] = []

    def read(self, box: Box) -> Any:
        self.reads.append(box)
        return super().read(box)


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
def test_inside_is_real_and_read_once(pad_mode: PadMode) -> None:
    data = np.arange(6 * 7 * 8).reshape(6, 7, 8)
    volume = _CountingVolume(data)
    box = Box((2, -3, 5), (3, 6, 6))  # leaves on y below and on x above
    result = read_padded(volume, box, pad_mode)
    assert len(volume.reads) == 1
    np.testing.assert_array_equal(result[:, 3:, :3], data[2:5, 0:3, 5:8])
    inner = Box((1, 1, 1), (3, 3, 3))
    np.testing.assert_array_equal(read_padded(volume, inner, pad_mode), data[1:4, 1:4, 1:4])
    assert volume.reads[-1] == inner


def test_bad_channel_and_box_rank() -> None:
    volume3 = ArrayVolume(np.zeros((2, 2, 2)))
    with pytest.raises(GeometryError, match="channel"):
        read_padded(volume3, Box((0, 0, 0), (1, 1, 1)), "reflect", channel=0)
    volume4 = ArrayVolume(np.zeros((2, 2, 2, 2)))
    with pytest.raises(GeometryError, match="channel 2"):
        read_padded(volume4, Box((0, 0, 0), (1, 1, 1)), "reflect", channel=2)
    with pytest.raises(GeometryError, match="spatial"):
        read_padded(volume4, Box((0, 0, 0, 0), (1, 1, 1, 1)), "reflect")
