"""zarr arrays: the voxel size from an array's own ``resolution`` when no multiscales lists it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.volumes.stores import make_zarr
from volumes.open import open_volume


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_voxel_size_from_resolution_attribute(tmp_path: Path, zarr_format: int) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", zarr_format, attributes={"resolution": [40, 4, 4]})
    assert open_volume(tmp_path / "c.zarr", "raw").voxel_size == (40.0, 4.0, 4.0)
    make_zarr(tmp_path / "c.zarr", "plain", zarr_format)
    assert open_volume(tmp_path / "c.zarr", "plain").voxel_size is None
