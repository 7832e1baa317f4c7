"""OME-Zarr multiscales: 0.5 under ``ome`` on zarr v3, 0.4 at the top on zarr v2, for every writer;
each image its own group; read back as the voxel size and translation; other images kept."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
import zarr

from tests.unit.volumes.stores import make_zarr
from volumes.ome import dataset_scale, image_levels, multiscale_entry, put_multiscale, read_voxel_size
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
    (entry,) = stored_entries(root / "seg" / "pred", fmt)
    assert paths([entry]) == ["0"] and scale(entry) == [1.0, 40.0, 4.0, 4.0]
    assert [a["name"] for a in entry["axes"]] == ["c", "z", "y", "x"]
    volume = open_volume(root, "seg/pred")
    assert volume.dataset == "seg/pred/0" and volume.voxel_size == (40.0, 4.0, 4.0)
    assert "ome" not in group_attrs(root / "seg", fmt) and "multiscales" not in group_attrs(root / "seg", fmt)


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_levels_and_translation_of_an_output(fmt: ZarrFormat, tmp_path: Path) -> None:
    """Every level is listed with its scale, and a translation that puts its voxel centres at the
    centre of the voxels it summarises, from the image's origin."""
    root = tmp_path / "o.zarr"
    levels = ((1, 1, 1), (1, 2, 2), (2, 4, 4))
    create_output(
        root, "pred", fmt, SHAPE, "float32", CHUNKS, (30, 8, 8), translation=(300, 80, 40), levels=levels
    )
    (entry,) = stored_entries(root / "pred", fmt)
    assert paths([entry]) == ["0", "1", "2"]
    transforms = [d["coordinateTransformations"] for d in entry["datasets"]]
    assert [t[0]["scale"] for t in transforms] == [[1, 30, 8, 8], [1, 30, 16, 16], [1, 60, 32, 32]]
    assert [t[1]["translation"] for t in transforms] == [[0, 300, 80, 40], [0, 300, 84, 44], [0, 315, 92, 52]]
    assert open_volume(root, "pred/1").shape == (2, 4, 3, 4) and open_volume(root, "pred/2").shape == (
        2,
        2,
        2,
        2,
    )
    assert open_volume(root, "pred").translation == (300.0, 80.0, 40.0)
    assert image_levels(root / "pred", fmt) == ["0", "1", "2"] and image_levels(root, fmt) == []
    assert open_volume(root, "pred/2").voxel_size == (60.0, 32.0, 32.0)


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_write_synth_writes_one_image_per_dataset(fmt: ZarrFormat, tmp_path: Path) -> None:
    synth = generate_em_volume((2, 16, 16), seed=0, voxel_size_nm=(30.0, 8.0, 8.0))
    write_synth(tmp_path / "s.zarr", synth, chunks=(2, 8, 8), format=fmt)
    assert "multiscales" not in group_attrs(tmp_path / "s.zarr", fmt)
    assert "ome" not in group_attrs(tmp_path / "s.zarr", fmt)
    for name in ("raw", "mito", "cells"):
        (entry,) = stored_entries(tmp_path / "s.zarr" / name, fmt)
        assert paths([entry]) == ["0"] and scale(entry) == [30.0, 8.0, 8.0] and len(entry["axes"]) == 3
        volume = open_volume(tmp_path / "s.zarr", name)
        assert volume.dataset == f"{name}/0" and volume.voxel_size == (30.0, 8.0, 8.0)


@pytest.mark.parametrize("fmt", ["zarr2", "zarr3"])
def test_an_output_beside_other_images_leaves_the_container_alone(fmt: ZarrFormat, tmp_path: Path) -> None:
    """A container whose root lists its own 0.4 images (as older tools write): an output added and
    removed leaves its attributes byte for byte."""
    root = tmp_path / "c.zarr"
    make_zarr(root, "em", 3 if fmt == "zarr3" else 2)
    legacy = [{"version": "0.4", **multiscale_entry("em", (30, 8, 8))}]
    zarr.open_group(str(root), mode="r+").update_attributes({"multiscales": legacy, "note": 1})
    before = group_attrs(root, fmt)
    create_output(root, "pred", fmt, SHAPE, "float32", CHUNKS, (30, 8, 8))
    assert group_attrs(root, fmt) == before
    delete_dataset(root, "pred")
    assert group_attrs(root, fmt) == before and not (root / "pred").exists()
    assert open_volume(root, "em").voxel_size == (30.0, 8.0, 8.0)


def test_translations_written_by_other_tools(tmp_path: Path) -> None:
    """A dataset's translation in the multiscale's units, then the multiscale's own transforms."""
    make_zarr(tmp_path / "c.zarr", "img/s0", 3)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"]
    own = [
        {"type": "scale", "scale": [0.04, 0.008, 0.008]},
        {"type": "translation", "translation": [1, 2, 3]},
    ]
    ms = {
        "axes": axes,
        "datasets": [{"path": "s0", "coordinateTransformations": own}],
        "coordinateTransformations": [
            {"type": "scale", "scale": [2, 1, 1]},
            {"type": "translation", "translation": [0.5, 0, 0]},
        ],
    }
    zarr.open_group(str(tmp_path / "c.zarr"), path="img").update_attributes(
        {"ome": {"version": "0.5", "multiscales": [ms]}}
    )
    volume = open_volume(tmp_path / "c.zarr", "img")
    assert volume.voxel_size == pytest.approx((80, 8, 8))
    assert volume.translation == pytest.approx((2500, 2000, 3000))


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
    before = group_attrs(root, fmt)
    create_output(root, "pred", fmt, SHAPE, "uint8", CHUNKS, (40, 4, 4))
    assert group_attrs(root, fmt) == before  # the output is an image of its own: the root is left alone
    assert open_volume(root, "em/s0").voxel_size == (30.0, 8.0, 8.0)
    create_output(root, "pred", fmt, SHAPE, "uint8", CHUNKS, (20, 2, 2), overwrite=True)
    assert group_attrs(root, fmt) == before
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
    """An output array of the layout before images (its entry on the parent group) is deleted with it."""
    root = tmp_path / "o.zarr"
    make_zarr(root, "pred", 3)
    put_multiscale(zarr.open_group(str(root), mode="r+"), "pred", multiscale_entry("pred", None))
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


def test_an_n5_output_is_a_group_of_scale_levels(tmp_path: Path) -> None:
    """N5's convention: levels s0, s1, ... with downsamplingFactors (x, y, z, c), scales on the group."""
    root = tmp_path / "o.n5"
    create_output(root, "pred", "n5", SHAPE, "float32", CHUNKS, (30, 8, 8), levels=((1, 1, 1), (1, 2, 2)))
    group = json.loads((root / "pred" / "attributes.json").read_text())
    assert group["scales"] == [[1, 1, 1, 1], [2, 2, 1, 1]] and group["multiScale"] is True
    level = json.loads((root / "pred" / "s1" / "attributes.json").read_text())
    assert level["downsamplingFactors"] == [2, 2, 1, 1] and level["resolution"] == [16, 16, 30, 1]
    assert image_levels(root / "pred", "n5") == ["s0", "s1"]
    assert open_volume(root, "pred").dataset == "pred/s0" and open_volume(root, "pred/s1").shape == (
        2,
        4,
        3,
        4,
    )
    delete_dataset(root, "pred")
    assert not (root / "pred").exists()
