"""OME-Zarr multiscales: 0.5 under ``ome`` on zarr v3, 0.4 at the top on zarr v2, for every writer;
read back as the voxel size; other images' entries kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import zarr

from tests.unit.volumes.stores import make_zarr
from volumes.ome import dataset_scale, multiscale_entry, put_multiscale, read_voxel_size
from volumes.open import open_volume
from volumes.output import create_output, delete_dataset
from volumes.synth import generate_em_volume, write_synth

ZarrFormat = Literal["zarr2", "zarr3"]
SHAPE, CHUNKS = (2, 4, 6, 8), (2, 3, 4)


def group_attrs(group: Path, fmt: ZarrFormat) -> dict[str, Any]:
    """A group's attributes as stored on disk."""
    if fmt == "zarr3":
        return dict(json.loads((group / "zarr.json").read_text())["attributes"])
    return dict(json.loads((group / ".zattrs").read_text()))


def stored_entries(group: Path, fmt: ZarrFormat) -> list[dict[str, Any]]:
    """The multiscales where the spec puts them, checking that the version is there and nowhere else."""
    attrs = group_attrs(group, fmt)
    if fmt == "zarr3":
        assert "multiscales" not in attrs
        assert attrs["ome"]["version"] == "0.5"
        entries: list[dict[str, Any]] = attrs["ome"]["multiscales"]
        assert all("version" not in m for m in entries)
    else:
        assert "ome" not in attrs
        entries = attrs["multiscales"]
        assert all(m["version"] == "0.4" for m in entries)
    return entries


def paths(entries: list[dict[str, Any]]) -> list[str]:
    return [d["path"] for m in entries for d in m["datasets"]]


def scale(entry: dict[str, Any]) -> list[float]:
    return list(entry["datasets"][0]["coordinateTransformations"][0]["scale"])


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_create_output_writes_the_version_and_place_of_the_format(fmt: ZarrFormat, tmp_path: Path) -> None:
    root = tmp_path / "o.zarr"
    create_output(root, "seg/pred", fmt, SHAPE, "uint8", CHUNKS, (40, 4, 4))
    (entry,) = stored_entries(root / "seg", fmt)
    assert paths([entry]) == ["pred"] and scale(entry) == [1.0, 40.0, 4.0, 4.0]
    assert [a["name"] for a in entry["axes"]] == ["c", "z", "y", "x"]
    assert open_volume(root, "seg/pred").voxel_size == (40.0, 4.0, 4.0)


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_write_synth_writes_the_version_and_place_of_the_format(fmt: ZarrFormat, tmp_path: Path) -> None:
    synth = generate_em_volume((2, 16, 16), seed=0, voxel_size_nm=(30.0, 8.0, 8.0))
    write_synth(tmp_path / "s.zarr", synth, chunks=(2, 8, 8), format=fmt)
    entries = stored_entries(tmp_path / "s.zarr", fmt)
    assert paths(entries) == ["raw", "mito", "cells"]
    assert all(scale(m) == [30.0, 8.0, 8.0] and len(m["axes"]) == 3 for m in entries)
    for name in ("raw", "mito", "cells"):
        assert open_volume(tmp_path / "s.zarr", name).voxel_size == (30.0, 8.0, 8.0)


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_other_images_entries_are_kept_when_one_is_added_or_removed(fmt: ZarrFormat, tmp_path: Path) -> None:
    root = tmp_path / "o.zarr"
    make_zarr(root, "em/s0", 3 if fmt == "zarr3" else 2)
    other = multiscale_entry("em/s0", (30, 8, 8))
    group = zarr.open_group(str(root), mode="r+")
    put_multiscale(group, "em/s0", other)
    if fmt == "zarr3":  # whatever else "ome" holds stays too
        ome = group.attrs["ome"]
        assert isinstance(ome, dict)
        group.update_attributes({"ome": {**ome, "omero": {"channels": []}}})
    create_output(root, "pred", fmt, SHAPE, "uint8", CHUNKS, (40, 4, 4))
    assert paths(stored_entries(root, fmt)) == ["em/s0", "pred"]
    assert open_volume(root, "em/s0").voxel_size == (30.0, 8.0, 8.0)
    create_output(root, "pred", fmt, SHAPE, "uint8", CHUNKS, (20, 2, 2), overwrite=True)
    assert paths(stored_entries(root, fmt)) == ["em/s0", "pred"]
    assert open_volume(root, "pred").voxel_size == (20.0, 2.0, 2.0)
    delete_dataset(root, "pred")
    (kept,) = stored_entries(root, fmt)
    assert kept == ({**other, "version": "0.4"} if fmt == "zarr2" else other)
    if fmt == "zarr3":
        assert group_attrs(root, fmt)["ome"]["omero"] == {"channels": []}
    put_multiscale(zarr.open_group(str(root), mode="r+"), "em/s0", None)
    assert "multiscales" not in group_attrs(root, fmt)
    assert ("ome" in group_attrs(root, fmt)) == (fmt == "zarr3")  # omero is still there


def test_the_last_entry_removed_takes_the_ome_key_with_it(tmp_path: Path) -> None:
    root = tmp_path / "o.zarr"
    create_output(root, "pred", "zarr3", SHAPE, "uint8", CHUNKS, None)
    delete_dataset(root, "pred")
    assert "ome" not in group_attrs(root, "zarr3")


def test_0_4_on_a_zarr_v3_group_is_still_read_and_is_replaced_by_0_5(tmp_path: Path) -> None:
    """What write_synth wrote before it went through this module, and what validators reject."""
    root = tmp_path / "old.zarr"
    make_zarr(root, "raw", 3)
    make_zarr(root, "mito", 3)
    legacy = [{"version": "0.4", **multiscale_entry(n, (30, 8, 8))} for n in ("raw", "mito")]
    zarr.open_group(str(root), mode="r+").update_attributes({"multiscales": legacy})
    assert open_volume(root, "raw").voxel_size == (30.0, 8.0, 8.0)
    put_multiscale(zarr.open_group(str(root), mode="r+"), "raw", multiscale_entry("raw", (40, 4, 4)))
    attrs = group_attrs(root, "zarr3")
    assert paths(attrs["multiscales"]) == ["mito"] and paths(attrs["ome"]["multiscales"]) == ["raw"]
    assert open_volume(root, "raw").voxel_size == (40.0, 4.0, 4.0)


def test_voxel_size_from_multiscales_written_by_other_tools(tmp_path: Path) -> None:
    """Units converted to nm, non-space axes dropped, a multiscale-wide scale applied."""
    make_zarr(tmp_path / "c.zarr", "img/s1", 2)
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
    make_zarr(tmp_path / "d.zarr", "s0", 3)
    ms5 = {
        "axes": [{"name": "c", "type": "channel"}, *axes],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3, 4, 4]}]}],
        "coordinateTransformations": [{"type": "scale", "scale": [1, 0.01, 0.001, 0.001]}],
    }
    zarr.open_group(str(tmp_path / "d.zarr"), zarr_format=3).update_attributes(
        {"ome": {"version": "0.5", "multiscales": [ms5]}}
    )
    assert open_volume(tmp_path / "d.zarr", "s0").voxel_size == pytest.approx((30, 4, 4))


def test_unlisted_datasets_and_plain_folders_have_no_ome_voxel_size(tmp_path: Path) -> None:
    assert dataset_scale({"multiscales": [multiscale_entry("a", (1, 2, 3))]}, "zarr2", "b") is None
    assert dataset_scale({"multiscales": "not a list", "ome": [1]}, "zarr3", "a") is None
    (tmp_path / "plain" / "arr").mkdir(parents=True)
    assert read_voxel_size(tmp_path / "plain" / "arr", "zarr3") is None


def test_an_unknown_voxel_size_is_scale_one_without_unit() -> None:
    entry = multiscale_entry("pred", None, channel_axis=True)
    assert scale(entry) == [1.0, 1.0, 1.0, 1.0] and all("unit" not in a for a in entry["axes"])
