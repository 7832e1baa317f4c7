"""The synthetic EM generator: determinism, ground-truth consistency, zarr output."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import zarr
from scipy import ndimage

from volumes.errors import GeometryError, VolumeFormatError
from volumes.synth import SynthVolume, generate_em_volume, write_synth

SHAPE = (16, 128, 128)


@pytest.fixture(scope="module")
def synth() -> SynthVolume:
    return generate_em_volume(SHAPE, seed=7)


def test_same_seed_same_volume(synth: SynthVolume) -> None:
    again = generate_em_volume(SHAPE, seed=7)
    for name in ("raw", "mito", "cells", "membranes"):
        np.testing.assert_array_equal(getattr(again, name), getattr(synth, name), err_msg=name)


def test_other_seed_other_volume(synth: SynthVolume) -> None:
    other = generate_em_volume(SHAPE, seed=8)
    assert not np.array_equal(other.raw, synth.raw)
    assert not np.array_equal(other.mito, synth.mito)


def test_shapes_and_dtypes(synth: SynthVolume) -> None:
    assert synth.raw.shape == synth.mito.shape == synth.cells.shape == synth.membranes.shape == SHAPE
    assert synth.raw.dtype == np.uint8
    assert synth.mito.dtype == np.uint8 and set(np.unique(synth.mito)) <= {0, 1}
    assert synth.membranes.dtype == np.uint8 and set(np.unique(synth.membranes)) <= {0, 1}
    assert synth.cells.dtype == np.uint32
    assert synth.voxel_size_nm == (30.0, 8.0, 8.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_foreground_fraction(seed: int) -> None:
    v = generate_em_volume((16, 96, 96), seed=seed)
    assert 0.05 <= v.mito.mean() <= 0.15
    assert 0.01 <= v.membranes.mean() <= 0.25


def test_mito_kept_apart_from_membranes(synth: SynthVolume) -> None:
    near_mito = ndimage.binary_dilation(synth.mito > 0, iterations=2)
    assert not (near_mito & (synth.membranes > 0)).any()


def test_each_mito_lies_in_one_cell(synth: SynthVolume) -> None:
    blobs, n = ndimage.label(synth.mito)
    assert n >= 1
    for i in range(1, n + 1):
        assert len(np.unique(synth.cells[blobs == i])) == 1


def test_cells_are_zero_exactly_on_membranes(synth: SynthVolume) -> None:
    np.testing.assert_array_equal(synth.cells == 0, synth.membranes > 0)
    assert len(np.unique(synth.cells)) > 3


def test_membranes_thinner_in_z_voxels(synth: SynthVolume) -> None:
    # 30 nm sections vs 8 nm pixels: a membrane spans more pixels in y than sections in z.
    def runs(axis: int) -> float:
        edges = np.diff(synth.membranes.astype(np.int8), axis=axis)
        return float((synth.membranes > 0).sum() / max(int((edges == 1).sum()), 1))

    assert runs(1) > runs(0)


def test_contrast_tells_mito_from_cytoplasm(synth: SynthVolume) -> None:
    cytoplasm = (synth.mito == 0) & (synth.membranes == 0)
    raw = synth.raw.astype(float)
    assert raw[cytoplasm].mean() - raw[synth.mito > 0].mean() > 40
    # Cristae: mitochondria are textured, not flat.
    assert raw[synth.mito > 0].std() > 10


def test_tiny_volume() -> None:
    assert generate_em_volume((2, 3, 4), seed=0).raw.shape == (2, 3, 4)


@pytest.mark.parametrize("shape", [(64, 64), (0, 8, 8), (1, 2, 3, 4)])
def test_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(GeometryError, match="shape"):
        generate_em_volume(shape, seed=0)


def test_rejects_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(VolumeFormatError, match="n5"):
        write_synth(tmp_path / "x", generate_em_volume((2, 8, 8), seed=0), format="n5")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["zarr3", "zarr2"])
def test_write_synth_round_trip(tmp_path: Path, synth: SynthVolume, fmt: str) -> None:
    path = tmp_path / "synth.zarr"
    write_synth(path, synth, chunks=(8, 64, 64), format=fmt)  # type: ignore[arg-type]
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == (3 if fmt == "zarr3" else 2)
    for name in ("raw", "mito", "cells"):
        array = group[f"{name}/0"]  # each dataset an image: its group, its level 0
        assert isinstance(array, zarr.Array)
        assert array.chunks == (8, 64, 64)
        assert array.attrs["resolution"] == [30.0, 8.0, 8.0]
        np.testing.assert_array_equal(array[...], getattr(synth, name))
        image = group[name]
        ome = cast(dict[str, Any], image.attrs["ome"]) if fmt == "zarr3" else image.attrs.asdict()
        (multiscale,) = cast(list[dict[str, Any]], ome["multiscales"])  # OME-Zarr 0.5 on v3, 0.4 on v2
        (level,) = multiscale["datasets"]
        assert level["path"] == "0" and level["coordinateTransformations"][0]["scale"] == [30.0, 8.0, 8.0]
    assert group.attrs["resolution"] == [30.0, 8.0, 8.0]


def test_write_synth_clips_chunks_to_shape(tmp_path: Path) -> None:
    small = generate_em_volume((4, 32, 32), seed=1)
    write_synth(tmp_path / "s.zarr", small)
    assert zarr.open_array(str(tmp_path / "s.zarr" / "raw" / "0"), mode="r").chunks == (4, 32, 32)
