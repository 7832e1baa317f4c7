"""The labels array and its table of objects.

Labels are one (z, y, x) array of unsigned integers, chunked and zstd-compressed, never-written
chunks reading 0. On zarr its parent group lists it in OME-Zarr ``multiscales`` (as every output of
this project) and says it is a label image: ``image-label`` beside ``multiscales`` (at the top of the
attributes on zarr v2, OME-Zarr 0.4; under ``ome`` on zarr v3, 0.5), so viewers colour it as
labels. N5 keeps the voxel size as ``resolution`` / ``pixelResolution``.

The table of objects is a CSV file beside the array, ``<dataset>.objects.csv`` in the container: a
row per object (id, voxels, bounding box with exclusive ends, centroid), written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from volumes.detect import clean_dataset
from volumes.errors import VolumeFormatError
from volumes.files import atomic_write, read_json_object, write_json_atomic
from volumes.labels.merge import TABLE_FORMAT, TABLE_HEADER
from volumes.ome import OME_ZARR_V2, OME_ZARR_V3, multiscale_entry, put_multiscale
from volumes.open import open_volume
from volumes.output import N5_VERSION, ZSTD_LEVEL, OutputFormat
from volumes.volume import Volume

AXES = ("z", "y", "x")


def create_labels(
    path: str | os.PathLike[str],
    dataset: str,
    format: OutputFormat,
    shape: Sequence[int],
    dtype: np.dtype,
    chunks: Sequence[int],
    voxel_size: Sequence[float] | None,
    attrs: Mapping[str, Any],
) -> Volume:
    """Create the (z, y, x) labels array ``dataset`` in the container at ``path`` (which may hold
    other datasets; an existing ``dataset`` must have been deleted first) and open it for writing."""
    root, name = Path(path), clean_dataset(dataset)
    if name is None:
        raise VolumeFormatError(f"labels need a dataset name inside {root}, got {dataset!r}")
    if format == "n5":
        _create_n5(root, name, tuple(shape), dtype, tuple(chunks), voxel_size, dict(attrs))
    else:
        group = zarr.open_group(str(root), mode="a", zarr_format=3 if format == "zarr3" else 2)
        common: dict[str, Any] = {
            "shape": tuple(shape),
            "dtype": dtype,
            "chunks": tuple(chunks),
            "fill_value": 0,
        }
        if format == "zarr3":
            codec: Any = ZstdCodec(level=ZSTD_LEVEL)
            group.create_array(
                name, **common, compressors=codec, dimension_names=AXES, attributes=dict(attrs)
            )
        else:
            extra = {**attrs, "_ARRAY_DIMENSIONS": list(AXES)}
            group.create_array(name, **common, compressors=numcodecs.Zstd(level=ZSTD_LEVEL), attributes=extra)
        describe(root, name, format, voxel_size)
    return open_volume(root, name, mode="r+")


def describe(root: Path, name: str, format: OutputFormat, voxel_size: Sequence[float] | None) -> None:
    """The parent group's ``multiscales`` entry and ``image-label`` (zarr; N5 has neither). Written
    again by a run that resumes over labels it created, in case it was killed in between."""
    if format == "n5":
        return
    parent, _, base = name.rpartition("/")
    parent_group = zarr.open_group(
        str(root), path=parent or None, mode="r+", zarr_format=3 if format == "zarr3" else 2
    )
    put_multiscale(parent_group, base, multiscale_entry(base, voxel_size))
    _mark_label_image(parent_group)


def _mark_label_image(group: zarr.Group) -> None:
    attrs = dict(group.attrs.asdict())
    if group.metadata.zarr_format == 3:
        found = attrs.get("ome")
        ome: dict[str, Any] = dict(found) if isinstance(found, dict) else {}
        ome["image-label"] = {"source": {}}
        ome.setdefault("version", OME_ZARR_V3)
        group.update_attributes({"ome": ome})
    else:
        group.update_attributes({"image-label": {"version": OME_ZARR_V2, "source": {}}})


def _create_n5(
    root: Path,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    voxel_size: Sequence[float] | None,
    attrs: dict[str, Any],
) -> None:
    root.mkdir(parents=True, exist_ok=True)
    root_meta = read_json_object(root / "attributes.json") or {}
    if "n5" not in root_meta:
        write_json_atomic(root / "attributes.json", {**root_meta, "n5": N5_VERSION})
    meta: dict[str, Any] = {
        **attrs,
        "dimensions": list(shape[::-1]),
        "blockSize": list(chunks[::-1]),
        "dataType": dtype.name,
        "compression": {"type": "zstd", "level": ZSTD_LEVEL},
        "axes": list(AXES[::-1]),
    }
    if voxel_size is not None:
        xyz = [float(v) for v in voxel_size][::-1]
        meta |= {
            "resolution": xyz,
            "units": ["nm", "nm", "nm"],
            "pixelResolution": {"dimensions": xyz, "unit": "nm"},
        }
    (root / name).mkdir(parents=True)
    write_json_atomic(root / name / "attributes.json", meta)


def table_path(path: str | os.PathLike[str], dataset: str) -> Path:
    """``<dataset>.objects.csv`` beside the array in its container."""
    return Path(path) / f"{clean_dataset(dataset)}.objects.csv"


def write_table(target: Path, rows: np.ndarray) -> None:
    """The table of objects (rows from :func:`volumes.labels.merge.table_rows`), atomically."""
    buffer = io.StringIO()
    np.savetxt(buffer, rows, fmt=TABLE_FORMAT, delimiter=",", header=TABLE_HEADER, comments="")
    data = buffer.getvalue().encode()
    atomic_write(target, lambda h: h.write(data))


def read_table(target: Path) -> np.ndarray:
    """The table as a (n, 11) float array (ids and counts exact below 2**53)."""
    return np.loadtxt(target, delimiter=",", skiprows=1, ndmin=2)
