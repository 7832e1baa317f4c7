"""Volumes in S3-compatible object stores (``s3://bucket/key``): telling their format, creating outputs.

The format is told from the metadata objects, as for local stores (:mod:`volumes.detect`): zarr v3
``zarr.json``, zarr v2 ``.zarray``/``.zgroup``, N5 ``attributes.json``; :func:`volumes.open.open_volume`
then opens zarr arrays through zarr's FsspecStore (s3fs) and N5 arrays through tensorstore's s3
kvstore. An output in an object store is zarr v3 or v2, with its multiscales entry on the parent
group as for a local output (:mod:`volumes.output`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numcodecs
import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from volumes.detect import NodeKind
from volumes.errors import VolumeExistsError, VolumeFormatError
from volumes.ome import dataset_scale, multiscale_entry, put_multiscale
from volumes.urls import join_url, normalise_url, read_json_url, zarr_store
from volumes.volume import Format, VoxelSize

AXES = ("c", "z", "y", "x")
ZSTD_LEVEL = 3


def url_node_kind(url: str) -> NodeKind | None:
    """Which format's array or group the objects at ``url`` are, from their metadata; None if none."""
    meta = read_json_url(f"{url}/zarr.json")
    if meta is not None:
        return "zarr3", "array" if meta.get("node_type") == "array" else "group"
    if read_json_url(f"{url}/.zarray") is not None:
        return "zarr2", "array"
    if read_json_url(f"{url}/.zgroup") is not None:
        return "zarr2", "group"
    meta = read_json_url(f"{url}/attributes.json")
    if meta is not None and {"dimensions", "dataType"} <= meta.keys():
        return "n5", "array"
    if meta is not None and "n5" in meta:
        return "n5", "group"
    return None


def url_voxel_size(url: str, dataset: str | None, fmt: Format) -> VoxelSize | None:
    """The scale (nm) of ``dataset`` in the multiscales of the nearest enclosing zarr group."""
    parts = (dataset or "").split("/") if dataset else []
    for depth in range(len(parts) - 1, -1, -1):
        group_path, rel = "/".join(parts[:depth]), "/".join(parts[depth:])
        try:
            group = zarr.open_group(zarr_store(url, read_only=True), path=group_path, mode="r")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        scale = dataset_scale(group.attrs.asdict(), fmt, rel)
        if scale is not None:
            return scale
    return None


def create_url_output(
    url: str,
    name: str,
    format: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: Sequence[int],
    voxel_size: Sequence[float] | None,
    attrs: Mapping[str, Any],
    overwrite: bool,
    shards: tuple[int, ...] | None = None,
) -> None:
    """The (c, z, y, x) output array ``name`` in the zarr container at ``url``."""
    if format not in ("zarr3", "zarr2"):
        raise VolumeFormatError(f"an output in an object store is zarr3 or zarr2, not {format}")
    root = normalise_url(url)
    zarr_format: Literal[2, 3] = 3 if format == "zarr3" else 2
    kind = url_node_kind(root)
    if kind is not None and kind != (format, "group"):
        raise VolumeFormatError(
            f"{root} is a {kind[0]} {kind[1]}; expected a {format} group to hold the output"
        )
    if url_node_kind(join_url(root, name)) is not None and not overwrite:
        raise VolumeExistsError(f"output {root} dataset {name!r} exists; set overwrite to replace it")
    group = zarr.open_group(zarr_store(root, read_only=False), mode="a", zarr_format=zarr_format)
    common: dict[str, Any] = {
        "shape": shape,
        "dtype": dtype,
        "chunks": (shape[0], *chunks),
        "fill_value": 0,
        "overwrite": overwrite,
    }
    if zarr_format == 3:
        zstd: Any = ZstdCodec(level=ZSTD_LEVEL)
        group.create_array(
            name, **common, shards=shards, compressors=zstd, dimension_names=AXES, attributes=dict(attrs)
        )
    else:
        dims = {**attrs, "_ARRAY_DIMENSIONS": list(AXES)}
        group.create_array(name, **common, compressors=numcodecs.Zstd(level=ZSTD_LEVEL), attributes=dims)
    parent, _, base = name.rpartition("/")
    holder = zarr.open_group(zarr_store(root, read_only=False), path=parent or None, mode="r+")
    put_multiscale(holder, base, multiscale_entry(base, voxel_size, channel_axis=True))
