"""Real stores: round trips per format, N5 axis order against tensorstore, outputs and overwrite."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import pytest
import tensorstore as ts
import zarr

from volumes.backends.memory import ArrayVolume
from volumes.box import Box
from volumes.errors import GeometryError, VolumeExistsError, VolumeFormatError, VolumeNotFoundError
from volumes.open import open_volume
from volumes.output import OutputFormat, create_output, delete_dataset
from volumes.padding import read_padded
from volumes.volume import Volume

SHAPE = (2, 6, 8, 10)  # (c, z, y, x)
CHUNKS = (3, 4, 5)


def _data(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 60000, shape).astype(np.uint16)


def _make(kind: OutputFormat | Literal["memory"], tmp_path: Path) -> Volume:
    if kind == "memory":
        return ArrayVolume(np.zeros(SHAPE, np.uint16), chunks=(2, *CHUNKS))
    return create_output(tmp_path / f"out.{kind}", "pred", kind, SHAPE, "uint16", CHUNKS, (40, 4, 4), {})


@pytest.mark.parametrize("kind", ["memory", "zarr2", "zarr3", "n5"])
def test_volume_conformance(kind: OutputFormat | Literal["memory"], tmp_path: Path) -> None:
    """Every writable implementation behaves alike: round trip, box checks, attrs, fill value 0."""
    volume, data = _make(kind, tmp_path), _data()
    assert (volume.shape, volume.chunks, volume.dtype, volume.ndim) == (SHAPE, (2, *CHUNKS), np.uint16, 4)
    assert np.all(volume.read(Box.of_shape(SHAPE)) == 0)
    volume.write(Box((0, 3, 4, 5), (2, 3, 4, 5)), data[:, 3:, 4:, 5:])  # one chunk, at the array's edge
    volume.write(Box((0, 0, 0, 0), (2, 3, 4, 5)), data[:, :3, :4, :5])
    got = volume.read(Box.of_shape(SHAPE))
    np.testing.assert_array_equal(got[:, 3:, 4:, 5:], data[:, 3:, 4:, 5:])
    np.testing.assert_array_equal(got[:, :3, :4, :5], data[:, :3, :4, :5])
    assert got[:, :3, 4:].sum() == 0 and got.flags.c_contiguous
    np.testing.assert_array_equal(volume.read(Box((1, 2, 1, 3), (1, 2, 5, 4))), got[1:2, 2:4, 1:6, 3:7])
    with pytest.raises(GeometryError, match="not inside"):
        volume.read(Box((0, 0, 0, 8), (2, 1, 1, 3)))
    with pytest.raises(GeometryError):
        volume.write(Box((0, 0, 0, 0), (1, 1, 1, 1)), data[:, :1, :1, :1])
    volume.set_attrs({"a": 1})
    volume.set_attrs({"b": {"c": [1, 2]}})
    assert {"a": 1, "b": {"c": [1, 2]}}.items() <= volume.attrs.items()
    if kind != "memory":
        reopened = pickle.loads(pickle.dumps(open_volume(volume.path, volume.dataset)))
        np.testing.assert_array_equal(reopened.read(Box.of_shape(SHAPE)), got)
        assert reopened.attrs["b"] == {"c": [1, 2]} and reopened.voxel_size == (40.0, 4.0, 4.0)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_zarr_round_trip_3d_with_nested_dataset(zarr_format: Literal[2, 3], tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=zarr_format)
    data = _data((5, 7, 9)).astype(np.float32)
    group.create_array("volumes/raw", data=data, chunks=(2, 3, 4))
    volume = open_volume(tmp_path / "in.zarr", "volumes/raw")
    assert volume.format == f"zarr{zarr_format}" and volume.dtype == np.float32
    np.testing.assert_array_equal(volume.read(Box((1, 2, 3), (4, 5, 6))), data[1:5, 2:7, 3:9])
    np.testing.assert_array_equal(
        read_padded(volume, Box((-2, 0, 5), (3, 7, 6)), "reflect"), _pad(data, "reflect")
    )


def _pad(data: np.ndarray, mode: str) -> np.ndarray:
    return np.pad(data, [(2, 0), (0, 0), (0, 2)], mode=mode)[0:3, 0:7, 5:11]  # type: ignore[call-overload]


def test_sharded_zarr3_reads(tmp_path: Path) -> None:
    data = _data((8, 8, 8))
    zarr.create_array(
        str(tmp_path / "s.zarr"), shape=data.shape, dtype=data.dtype, chunks=(2, 2, 2), shards=(4, 4, 4)
    )
    zarr.open_array(str(tmp_path / "s.zarr"), mode="r+")[:] = data
    volume = open_volume(tmp_path / "s.zarr")
    assert (volume.format, volume.chunks) == ("zarr3", (4, 4, 4))  # the shard is the unit of writing
    np.testing.assert_array_equal(volume.read(Box((1, 3, 5), (5, 4, 3))), data[1:6, 3:7, 5:8])


def test_n5_written_by_us_reads_reversed_in_tensorstore(tmp_path: Path) -> None:
    data = _data()
    volume = create_output(tmp_path / "o.n5", "pred", "n5", SHAPE, "uint16", CHUNKS, (40, 4, 4), {})
    volume.write(Box.of_shape(SHAPE), data)
    store = ts.open(
        {"driver": "n5", "kvstore": {"driver": "file", "path": str(tmp_path / "o.n5" / "pred" / "s0")}}
    ).result()
    assert tuple(store.shape) == SHAPE[::-1] and store.domain.labels == ("x", "y", "z", "c")
    raw = store.read().result()
    np.testing.assert_array_equal(raw, data.transpose(3, 2, 1, 0))
    assert raw[9, 7, 5, 1] == data[1, 5, 7, 9]
    assert [str(u) for u in store.dimension_units] == ["4 nm", "4 nm", "40 nm", "1"]
    meta = json.loads((tmp_path / "o.n5" / "pred" / "s0" / "attributes.json").read_text())
    assert meta["blockSize"] == [5, 4, 3, 2] and meta["compression"]["type"] == "zstd"
    assert meta["axes"] == ["x", "y", "z", "c"] and meta["pixelResolution"]["dimensions"] == [4, 4, 40]
    assert json.loads((tmp_path / "o.n5" / "attributes.json").read_text())["n5"].startswith("4.")


def test_n5_written_by_tensorstore_reads_in_zyx(tmp_path: Path) -> None:
    xyz = _data((10, 8, 6))  # tensorstore's (x, y, z) view of a (z, y, x) = (6, 8, 10) volume
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(tmp_path / "t.n5")},
        "path": "em/raw",
        "metadata": {"dimensions": [10, 8, 6], "blockSize": [4, 4, 4], "dataType": "uint16",
                     "compression": {"type": "gzip"}, "resolution": [4, 4, 40]},
        "create": True,
    }  # fmt: skip
    ts.open(spec).result().write(xyz).result()
    volume = open_volume(tmp_path / "t.n5", "em/raw")  # no root attributes.json: tensorstore writes none
    assert (volume.format, volume.shape, volume.chunks, volume.voxel_size) == (
        "n5",
        (6, 8, 10),
        (4, 4, 4),
        (40, 4, 4),
    )
    np.testing.assert_array_equal(volume.read(Box.of_shape((6, 8, 10))), xyz.transpose())
    np.testing.assert_array_equal(volume.read(Box((1, 2, 3), (2, 2, 2))), xyz[3:5, 2:4, 1:3].transpose())
    with pytest.raises(VolumeNotFoundError, match="em/raw"):
        open_volume(tmp_path / "t.n5", "em/labels")


def test_hdf5_reads_with_attrs(tmp_path: Path) -> None:
    data = _data((2, 5, 6, 7))
    with h5py.File(tmp_path / "v.hdf5", "w") as f:
        ds = f.create_dataset("volumes/raw", data=data, chunks=(1, 2, 3, 7))
        ds.attrs["resolution"] = np.array([40.0, 4.0, 4.0])
        ds.attrs["name"] = "raw"
    volume = open_volume(tmp_path / "v.hdf5", "volumes/raw")
    assert (volume.format, volume.chunks, volume.voxel_size) == ("hdf5", (1, 2, 3, 7), (40.0, 4.0, 4.0))
    assert volume.attrs == {"resolution": [40.0, 4.0, 4.0], "name": "raw"}
    np.testing.assert_array_equal(volume.read(Box((1, 1, 2, 3), (1, 3, 3, 3))), data[1:, 1:4, 2:5, 3:6])
    clone = pickle.loads(pickle.dumps(volume))
    np.testing.assert_array_equal(
        read_padded(clone, Box((-1, 0, 0), (2, 2, 2)), "replicate", 0)[0], data[0, 0, :2, :2]
    )


def _zarr_meta(root: Path, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(level 0's metadata, the image group's attributes) as stored on disk."""
    if fmt == "zarr3":
        return json.loads((root / "pred" / "0" / "zarr.json").read_text()), json.loads(
            (root / "pred" / "zarr.json").read_text()
        )["attributes"]
    array = json.loads((root / "pred" / "0" / ".zarray").read_text())
    array["attributes"] = json.loads((root / "pred" / "0" / ".zattrs").read_text())
    return array, json.loads((root / "pred" / ".zattrs").read_text())


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_zarr_output_metadata(fmt: OutputFormat, tmp_path: Path) -> None:
    root = tmp_path / "o.zarr"
    create_output(root, "pred", fmt, SHAPE, "uint8", CHUNKS, (40, 4, 4), {"job": {"id": "j1"}})
    array, group = _zarr_meta(root, fmt)
    if fmt == "zarr3":
        assert (
            array["chunk_grid"]["configuration"]["chunk_shape"] == [2, 3, 4, 5] and array["fill_value"] == 0
        )
        assert array["dimension_names"] == ["c", "z", "y", "x"]
        assert [c["name"] for c in array["codecs"]] == ["bytes", "zstd"]
        assert group["ome"]["version"] == "0.5"
        multiscales = group["ome"]["multiscales"]
    else:
        assert (
            array["chunks"] == [2, 3, 4, 5]
            and array["fill_value"] == 0
            and array["compressor"]["id"] == "zstd"
        )
        assert array["attributes"]["_ARRAY_DIMENSIONS"] == ["c", "z", "y", "x"]
        multiscales = group["multiscales"]
        assert multiscales[0]["version"] == "0.4"
    assert array["attributes"]["job"] == {"id": "j1"}
    (entry,) = multiscales
    nm = "nanometer"
    axes = [(a["name"], a["type"], a.get("unit")) for a in entry["axes"]]
    assert axes == [("c", "channel", None), ("z", "space", nm), ("y", "space", nm), ("x", "space", nm)]
    origin = {"type": "translation", "translation": [0, 0, 0, 0]}
    assert entry["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 40, 4, 4]}, origin]}
    ]
    assert open_volume(root, "pred").voxel_size == (40.0, 4.0, 4.0)


def test_unknown_voxel_size_defaults_to_one(tmp_path: Path) -> None:
    create_output(tmp_path / "o.zarr", "a/pred", "zarr3", SHAPE, "float32", CHUNKS, None, {})
    entry = json.loads((tmp_path / "o.zarr" / "a" / "pred" / "zarr.json").read_text())["attributes"]["ome"][
        "multiscales"
    ][0]
    assert entry["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 1.0, 1.0, 1.0]
    assert all("unit" not in a for a in entry["axes"])
    assert create_output(tmp_path / "o.n5", "pred", "n5", SHAPE, "uint8", CHUNKS, None, {}).voxel_size is None


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3", "n5"])
def test_overwrite_semantics(fmt: OutputFormat, tmp_path: Path) -> None:
    root = tmp_path / f"o.{fmt}"
    other = create_output(root, "keep", fmt, SHAPE, "uint16", CHUNKS, None, {})
    other.write(Box.of_shape(SHAPE), _data())
    first = create_output(root, "pred", fmt, SHAPE, "uint16", CHUNKS, (40, 4, 4), {"run": 1})
    first.write(Box.of_shape(SHAPE), _data())
    with pytest.raises(VolumeExistsError, match=r"pred.*overwrite"):
        create_output(root, "pred", fmt, (1, 2, 2, 2), "uint8", (2, 2, 2), None, {}, overwrite=False)
    untouched = open_volume(root, "pred")
    assert untouched.shape == SHAPE and untouched.attrs["run"] == 1
    np.testing.assert_array_equal(untouched.read(Box.of_shape(SHAPE)), _data())
    fresh = create_output(
        root, "pred", fmt, (1, 2, 2, 2), "uint8", (2, 2, 2), None, {"run": 2}, overwrite=True
    )
    assert (fresh.shape, fresh.attrs["run"]) == ((1, 2, 2, 2), 2)
    assert np.all(fresh.read(Box.of_shape((1, 2, 2, 2))) == 0)
    np.testing.assert_array_equal(open_volume(root, "keep").read(Box.of_shape(SHAPE)), _data())


def test_delete_dataset_removes_only_that_array(tmp_path: Path) -> None:
    root = tmp_path / "o.zarr"
    create_output(root, "keep", "zarr2", SHAPE, "uint8", CHUNKS, None, {})
    create_output(root, "pred", "zarr2", SHAPE, "uint8", CHUNKS, None, {})
    delete_dataset(root, "pred")
    with pytest.raises(VolumeNotFoundError, match=r"\['keep'\]"):
        open_volume(root, "pred")
    assert json.loads((root / ".zattrs").read_text()) == {}  # the container's attributes untouched
    assert open_volume(root, "keep").shape == SHAPE
    with pytest.raises(VolumeNotFoundError):
        delete_dataset(root, "pred")
    zarr.open_group(str(root), mode="a", zarr_format=2).create_group("sub")
    with pytest.raises(VolumeFormatError, match="not an array or an image"):
        delete_dataset(root, "sub")


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda p: zarr.open_group(str(p), mode="w", zarr_format=2), "zarr3"),
        (lambda p: zarr.open_group(str(p), mode="w", zarr_format=3), "n5"),
        (lambda p: p.write_text("a file"), "zarr3"),
    ],
)
def test_container_of_another_format_is_refused(
    make: Callable[[Path], object], fmt: OutputFormat, tmp_path: Path
) -> None:
    make(tmp_path / "c")
    with pytest.raises(VolumeFormatError, match="expected"):
        create_output(tmp_path / "c", "pred", fmt, SHAPE, "uint8", CHUNKS, None, {})


def test_volume_used_here_reads_in_a_spawned_worker(tmp_path: Path) -> None:
    """As on a Dask worker: the pickled volume reopens there, tensorstore included, after our use."""
    volume = create_output(tmp_path / "o.n5", "pred", "n5", SHAPE, "uint16", CHUNKS, None, {})
    volume.write(Box.of_shape(SHAPE), _data())  # tensorstore is now running in this process
    box = Box((0, 1, 2, 3), (2, 3, 4, 5))
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        remote = pool.apply(volume.read, (box,))
    np.testing.assert_array_equal(remote, _data()[box.slices()])
