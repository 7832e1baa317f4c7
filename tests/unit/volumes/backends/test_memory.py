"""The in-memory double: reads, writes and box checks as every stored volume does them."""

from __future__ import annotations

import numpy as np
import pytest

from volumes.backends.memory import ArrayVolume
from volumes.box import Box
from volumes.errors import GeometryError, VolumeReadOnlyError
from volumes.volume import Volume


def test_array_volume_reads_writes_and_checks_boxes() -> None:
    volume = ArrayVolume(np.zeros((3, 4, 5), np.float32))
    assert isinstance(volume, Volume)
    volume.write(Box((1, 0, 0), (1, 4, 5)), np.ones((1, 4, 5)))
    assert volume.read(Box((0, 0, 0), (3, 4, 5))).sum() == 20
    with pytest.raises(GeometryError, match="not inside"):
        volume.read(Box((2, 0, 0), (2, 4, 5)))
    with pytest.raises(GeometryError, match="does not fit"):
        volume.write(Box((0, 0, 0), (1, 1, 1)), np.ones((2, 1, 1)))
    with pytest.raises(GeometryError):
        volume.read(Box((0, 0), (1, 1)))


def test_read_only_array_volume_refuses_writes_and_attrs() -> None:
    volume = ArrayVolume(np.zeros((2, 2, 2), np.uint8), mode="r")
    with pytest.raises(VolumeReadOnlyError, match="<memory>"):
        volume.write(Box.of_shape((2, 2, 2)), np.ones((2, 2, 2)))
    with pytest.raises(VolumeReadOnlyError):
        volume.set_attrs({"a": 1})
