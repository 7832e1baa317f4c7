"""Opening volumes: the format told from the store, errors that name what exists, read-only modes."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.unit.volumes.stores import make_n5, make_zarr
from volumes.box import Box
from volumes.detect import clean_dataset, list_datasets, node_kind
from volumes.errors import VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.open import open_volume


@pytest.mark.parametrize(("zarr_format", "expected"), [(2, "zarr2"), (3, "zarr3")])
def test_detects_zarr_from_its_metadata(tmp_path: Path, zarr_format: int, expected: str) -> None:
    path = tmp_path / "no_suffix"
    make_zarr(path, "raw", zarr_format)
    volume = open_volume(path, "raw")
    assert (volume.format, volume.shape, volume.chunks, volume.dtype) == (
        expected,
        (4, 6, 8),
        (2, 3, 4),
        "uint16",
    )
    assert open_volume(path / "raw").format == expected  # the array itself, no dataset
    assert node_kind(path) == (expected, "group") and node_kind(path / "raw") == (expected, "array")


def test_detects_n5_and_hdf5_from_the_store(tmp_path: Path) -> None:
    n5 = make_n5(tmp_path / "data.zarr", "raw")  # misleading name: content decides
    volume = open_volume(n5, "/raw/")
    assert (volume.format, volume.shape, volume.chunks) == ("n5", (4, 6, 8), (2, 3, 4))
    assert node_kind(n5) == ("n5", "group")
    h5 = tmp_path / "data.bin"
    with h5py.File(h5, "w") as f:
        f.create_dataset("raw", data=np.zeros((2, 3, 4), np.uint8))
    assert open_volume(h5, "raw").format == "hdf5"


def test_unknown_formats_are_named(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    assert node_kind(tmp_path / "plain") is None
    with pytest.raises(VolumeFormatError, match="plain"):
        open_volume(tmp_path / "plain")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(VolumeFormatError, match=r"x\.h5"):
        open_volume(tmp_path / "x.h5", "raw")


def test_broken_metadata_is_a_format_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.zarr").mkdir()
    (tmp_path / "c.zarr" / "zarr.json").write_text('["a list"]')
    with pytest.raises(VolumeFormatError, match=r"c\.zarr/zarr\.json.*expected an object"):
        open_volume(tmp_path / "c.zarr")


def test_missing_path_and_dataset_are_named(tmp_path: Path) -> None:
    with pytest.raises(VolumeNotFoundError, match=r"nowhere\.zarr"):
        open_volume(tmp_path / "nowhere.zarr")
    make_zarr(tmp_path / "c.zarr", "raw", 3)
    make_zarr(tmp_path / "c.zarr", "labels/s0", 3)
    assert list_datasets(tmp_path / "c.zarr") == ["labels/s0", "raw"]
    with pytest.raises(VolumeNotFoundError, match=r"'mask'.*c\.zarr.*\['labels/s0', 'raw'\]") as info:
        open_volume(tmp_path / "c.zarr", "mask")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(VolumeNotFoundError, match="labels/s0"):
        open_volume(tmp_path / "c.zarr")  # a group is not an array
    with h5py.File(tmp_path / "f.hdf5", "w") as f:
        f.create_dataset("volumes/raw", data=np.zeros((1, 1, 1)))
    with pytest.raises(VolumeNotFoundError, match=r"'raw'.*volumes/raw"):
        open_volume(tmp_path / "f.hdf5", "raw")


def test_dataset_names_are_cleaned() -> None:
    assert [clean_dataset(d) for d in (None, "", "/", "/a/b/", "a")] == [None, None, None, "a/b", "a"]


def test_read_only_volumes_refuse_writes(tmp_path: Path) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", 2)
    volume = open_volume(tmp_path / "c.zarr", "raw")
    with pytest.raises(VolumeReadOnlyError, match="read-only"):
        volume.write(Box((0, 0, 0), (2, 3, 4)), np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(VolumeReadOnlyError):
        volume.set_attrs({"a": 1})
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("raw", data=np.zeros((1, 1, 1)))
    with pytest.raises(VolumeReadOnlyError, match="HDF5"):
        open_volume(tmp_path / "f.h5", "raw", mode="r+")


def test_pickled_volume_reopens_by_path(tmp_path: Path) -> None:
    make_zarr(tmp_path / "c.zarr", "raw", 3)
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
