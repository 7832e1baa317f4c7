"""N5 datasets: voxel sizes as N5 tools write them, and attributes without N5's own metadata."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.volumes.stores import make_n5
from volumes.errors import VolumeFormatError
from volumes.open import open_volume


def test_voxel_size_from_resolution_attributes(tmp_path: Path) -> None:
    assert open_volume(make_n5(tmp_path / "a.n5", "raw", {"resolution": [4, 5, 40]}), "raw").voxel_size == (
        40,
        5,
        4,
    )
    pixel = {
        "pixelResolution": {"dimensions": [0.004, 0.004, 0.04], "unit": "um"},
        "downsamplingFactors": [2, 2, 1],
    }
    assert open_volume(make_n5(tmp_path / "b.n5", "s1", pixel), "s1").voxel_size == pytest.approx((40, 8, 8))
    assert open_volume(make_n5(tmp_path / "c.n5", "raw"), "raw").voxel_size is None
    units = {"resolution": [0.4, 0.4, 4.0], "units": ["angstrom", "nm", "nm"]}
    assert open_volume(make_n5(tmp_path / "d.n5", "raw", units), "raw").voxel_size == pytest.approx(
        (4.0, 0.4, 0.04)
    )


def test_attrs_exclude_n5_metadata(tmp_path: Path) -> None:
    volume = open_volume(make_n5(tmp_path / "a.n5", "raw", {"note": "x"}), "raw", mode="r+")
    assert volume.attrs == {"note": "x"}
    volume.set_attrs({"other": [1, 2]})
    assert open_volume(tmp_path / "a.n5", "raw").attrs == {"note": "x", "other": [1, 2]}
    with pytest.raises(VolumeFormatError, match="dimensions"):
        volume.set_attrs({"dimensions": [1]})
