"""Opening volumes: format detection, errors, metadata conventions, pickling, the in-memory double."""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import zarr

from volumes.box import Box
from volumes.errors import GeometryError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.volume import ArrayVolume, Volume, open_volume


def _zarr(path: Path, name: str, zarr_format: int, **kw: object) -> zarr.Array:
    group = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)  # type: ignore[arg-type]
    array = group.create_array(name, shape=(4, 6, 8), dtype="uint16", chunks=(2, 3, 4), **kw)  # type: ignore[arg-type]
    array[:] = np.arange(4 * 6 * 8, dtype="uint16").reshape(4, 6, 8)
    return array


def _n5(path: Path, name: str, attrs: Mapping[str, object] | None = None) -> Path:
    """An N5 dataset's metadata as N5 writers lay it out (x first); no chunks: they read as 0."""
    (path / name).mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    meta = {
        "dimensions": [8, 6, 4],
        "blockSize": [4, 3, 2],
        "dataType": "uint8",
        "compression": {"type": "raw"},
    }
    (path / name / "attributes.json").write_text(json.dumps({**meta, **(attrs or {})}))
    return path


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


@pytest.mark.parametrize(("zarr_format", "expected"), [(2, "zarr2"), (3, "zarr3")])
def test_detects_zarr_from_its_metadata(tmp_path: Path, zarr_format: int, expected: str) -> None:
    path = tmp_path / "no_suffix"
    _zarr(path, "raw", zarr_format)
    volume = open_volume(path, "raw")
    assert (volume.format, volume.shape, volume.chunks, volume.dtype) == (
        expected,
        (4, 6, 8),
        (2, 3, 4),
        "uint16",
    )
    assert open_volume(path / "raw").format == expected  # the array itself, no dataset


def test_detects_n5_and_hdf5_from_the_store(tmp_path: Path) -> None:
    n5 = _n5(tmp_path / "data.zarr", "raw")  # misleading name: content decides
    volume = open_volume(n5, "/raw/")
    assert (volume.format, volume.shape, volume.chunks) == ("n5", (4, 6, 8), (2, 3, 4))
    h5 = tmp_path / "data.bin"
    with h5py.File(h5, "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 3, 4), np.uint8))
    assert open_volume(h5, "raw").format == "hdf5"


def test_unknown_formats_are_named(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    with pytest.raises(VolumeFormatError, match="plain"):
        open_volume(tmp_path / "plain")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(VolumeFormatError, match=r"x\.h5"):
        open_volume(tmp_path / "x.h5", "raw")


def test_missing_path_and_dataset_are_named(tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFoundError, match=r"nowhere\.zarr"):
        open_volume(tmp_path / "nowhere.zarr")
    _zarr(tmp_path / "c.zarr", "raw", 3)
    _zarr(tmp_path / "c.zarr", "labels/s0", 3)
    with pytest.raises(VolumeNotFoundError, match=r"'mask'.*c\.zarr.*\['labels/s0', 'raw'\]") as info:
        open_volume(tmp_path / "c.zarr", "mask")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(VolumeNotFoundError, match="labels/s0"):
        open_volume(tmp_path / "c.zarr")  # a group is not an array
    with h5py.File(tmp_path / "f.hdf5", "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((1, 1, 1)))
    with pytest.raises(VolumeNotFoundError, match=r"'raw'.*volumes/raw"):
        open_volume(tmp_path / "f.hdf5", "raw")


def test_read_only_volumes_refuse_writes(tmp_path: Path) -> None:
    _zarr(tmp_path / "c.zarr", "raw", 2)
    volume = open_volume(tmp_path / "c.zarr", "raw")
    with pytest.raises(VolumeReadOnlyError, match="read-only"):
        volume.write(Box((0, 0, 0), (2, 3, 4)), np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(VolumeReadOnlyError):
        volume.set_attrs({"a": 1})
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((1, 1, 1)))
    with pytest.raises(VolumeReadOnlyError, match="HDF5"):
        open_volume(tmp_path / "f.h5", "raw", mode="r+")


def test_voxel_size_from_ome_multiscales(tmp_path: Path) -> None:
    _zarr(tmp_path / "c.zarr", "img/s1", 2)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    transforms = [{"type": "scale", "scale": [0.04, 0.008, 0.008]}]
    ms: dict[str, Any] = {
        "version": "0.4",
        "axes": axes,
        "datasets": [{"path": "s1", "coordinateTransformations": transforms}],
    }
    zarr.open_group(str(tmp_path / "c.zarr"), path="img", zarr_format=2).update_attributes(
        {"multiscales": [ms]}
    )
    assert open_volume(tmp_path / "c.zarr", "img/s1").voxel_size == pytest.approx((40, 8, 8))
    _zarr(tmp_path / "d.zarr", "s0", 3)
    ms5 = {
        **ms,
        "axes": [{"name": "c", "type": "channel"}, *axes],
        "datasets": [{**ms["datasets"][0], "path": "s0"}],
    }
    ms5["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [1, 0.03, 0.004, 0.004]}]
    zarr.open_group(str(tmp_path / "d.zarr"), zarr_format=3).update_attributes(
        {"ome": {"multiscales": [ms5]}}
    )
    assert open_volume(tmp_path / "d.zarr", "s0").voxel_size == pytest.approx((30, 4, 4))


def test_voxel_size_from_resolution_attributes(tmp_path: Path) -> None:
    _zarr(tmp_path / "c.zarr", "raw", 3, attributes={"resolution": [40, 4, 4]})
    assert open_volume(tmp_path / "c.zarr", "raw").voxel_size == (40.0, 4.0, 4.0)
    assert open_volume(_n5(tmp_path / "a.n5", "raw", {"resolution": [4, 5, 40]}), "raw").voxel_size == (
        40,
        5,
        4,
    )
    pixel = {
        "pixelResolution": {"dimensions": [0.004, 0.004, 0.04], "unit": "um"},
        "downsamplingFactors": [2, 2, 1],
    }
    assert open_volume(_n5(tmp_path / "b.n5", "s1", pixel), "s1").voxel_size == pytest.approx((40, 8, 8))
    assert open_volume(_n5(tmp_path / "c.n5", "raw"), "raw").voxel_size is None


def test_attrs_exclude_n5_metadata(tmp_path: Path) -> None:
    volume = open_volume(_n5(tmp_path / "a.n5", "raw", {"note": "x"}), "raw", mode="r+")
    assert volume.attrs == {"note": "x"}
    volume.set_attrs({"other": [1, 2]})
    assert open_volume(tmp_path / "a.n5", "raw").attrs == {"note": "x", "other": [1, 2]}
    with pytest.raises(VolumeFormatError, match="dimensions"):
        volume.set_attrs({"dimensions": [1]})


def test_pickled_volume_reopens_by_path(tmp_path: Path) -> None:
    _zarr(tmp_path / "c.zarr", "raw", 3)
    volume = open_volume(tmp_path / "c.zarr", "raw")
    expected = volume.read(Box((1, 2, 3), (2, 2, 2)))
    clone = pickle.loads(pickle.dumps(volume))
    assert (clone.path, clone.dataset, clone.format, clone.shape) == (
        volume.path,
        "raw",
        "zarr3",
        volume.shape,
    )
    np.testing.assert_array_equal(clone.read(Box((1, 2, 3), (2, 2, 2))), expected)
