"""Volumes in S3-compatible object stores (``s3://bucket/key``): telling their format, creating outputs.

The format is told from the metadata objects, as for local stores (:mod:`volumes.detect`): zarr v3
``zarr.json``, zarr v2 ``.zarray``/``.zgroup``, N5 ``attributes.json``; :func:`volumes.open.open_volume`
then opens zarr arrays through zarr's FsspecStore (s3fs) and N5 arrays through tensorstore's s3
kvstore. An output in an object store is an image as a local output is (:mod:`volumes.output`): zarr
v3 or v2 through zarr, N5 with its metadata objects written here and its blocks through tensorstore.
"""

from __future__ import annotations

import zarr

from volumes.detect import NodeKind
from volumes.errors import VolumeExistsError, VolumeFormatError
from volumes.ome import dataset_placement, first_level_path
from volumes.urls import filesystem, join_url, read_json_url, zarr_store
from volumes.volume import Format, VoxelSize


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
    placed = url_placement(url, dataset, fmt)
    return None if placed is None else placed[0]


def url_translation(url: str, dataset: str | None, fmt: Format) -> VoxelSize | None:
    """Where voxel 0 of ``dataset`` lies (nm, z y x) by the multiscales of the nearest enclosing zarr
    group, as :func:`volumes.ome.read_translation` says for a local array; None when unlisted."""
    placed = url_placement(url, dataset, fmt)
    return None if placed is None else placed[1]


def url_placement(
    url: str, dataset: str | None, fmt: Format
) -> tuple[VoxelSize | None, VoxelSize | None] | None:
    """(scale, translation) of ``dataset`` in the multiscales of the nearest zarr group listing it."""
    parts = (dataset or "").split("/") if dataset else []
    for depth in range(len(parts) - 1, -1, -1):
        group_path, rel = "/".join(parts[:depth]), "/".join(parts[depth:])
        try:
            group = zarr.open_group(zarr_store(url, read_only=True), path=group_path, mode="r")
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None
        placed = dataset_placement(group.attrs.asdict(), fmt, rel)
        if placed is not None:
            return placed
    return None


def check_url_output(url: str, name: str, format: str, overwrite: bool) -> None:
    """Before an output image ``name`` is created in the container at ``url``: zarr or N5, the
    container a group of ``format`` (or nothing yet), and no ``name`` there unless ``overwrite``
    (which deletes it, and only it, first)."""
    if format not in ("zarr3", "zarr2", "n5", "precomputed"):
        raise VolumeFormatError(
            f"an output in an object store is zarr3, zarr2, n5 or precomputed, not {format}"
        )
    kind = url_node_kind(url)
    if kind is not None and kind != (format, "group") and format != "precomputed":
        raise VolumeFormatError(
            f"{url} is a {kind[0]} {kind[1]}; expected a {format} group to hold the output"
        )
    target = join_url(url, name)
    taken = url_node_kind(target) is not None or read_json_url(f"{target}/info") is not None
    if taken or (format == "n5" and url_image_level0(target, "n5")):
        if not overwrite:
            raise VolumeExistsError(f"output {url} dataset {name!r} exists; set overwrite to replace it")
        filesystem().rm(target[len("s3://") :], recursive=True)


def url_image_level0(url: str, fmt: Format) -> str | None:
    """The path (below ``url``) of the first level of the OME-Zarr image group at ``url`` (or of the
    N5 group of scale levels there: ``s0``); None when it is no image."""
    if fmt == "n5":
        meta = read_json_url(f"{url}/attributes.json")
        multiscale = meta is not None and ("scales" in meta or meta.get("multiScale") is True)
        return "s0" if multiscale and read_json_url(f"{url}/s0/attributes.json") is not None else None
    if fmt == "zarr3":
        meta = read_json_url(f"{url}/zarr.json") or {}
        attrs = meta.get("attributes") if isinstance(meta.get("attributes"), dict) else {}
    else:
        attrs = read_json_url(f"{url}/.zattrs") or {}
    return first_level_path(attrs or {}, fmt)
