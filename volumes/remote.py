"""Volumes in S3-compatible object stores (``s3://bucket/key``): telling their format, creating outputs.

The format is told from the metadata objects, as for local stores (:mod:`volumes.detect`): zarr v3
``zarr.json``, zarr v2 ``.zarray``/``.zgroup``, N5 ``attributes.json``; :func:`volumes.open.open_volume`
then opens zarr arrays through zarr's FsspecStore (s3fs) and N5 arrays through tensorstore's s3
kvstore. An output in an object store is zarr v3 or v2, with its multiscales entry on the parent
group as for a local output (:mod:`volumes.output`).
"""

from __future__ import annotations

import zarr

from volumes.detect import NodeKind
from volumes.errors import VolumeExistsError, VolumeFormatError
from volumes.ome import dataset_scale, stored_multiscales
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


def check_url_output(url: str, name: str, format: str, overwrite: bool) -> None:
    """Before an output image ``name`` is created in the container at ``url``: zarr only, the
    container a group of ``format`` (or nothing yet), and no ``name`` there unless ``overwrite``
    (which deletes it, and only it, first)."""
    if format not in ("zarr3", "zarr2"):
        raise VolumeFormatError(f"an output in an object store is zarr3 or zarr2, not {format}")
    kind = url_node_kind(url)
    if kind is not None and kind != (format, "group"):
        raise VolumeFormatError(
            f"{url} is a {kind[0]} {kind[1]}; expected a {format} group to hold the output"
        )
    target = join_url(url, name)
    if url_node_kind(target) is not None:
        if not overwrite:
            raise VolumeExistsError(f"output {url} dataset {name!r} exists; set overwrite to replace it")
        filesystem().rm(target[len("s3://") :], recursive=True)


def url_image_level0(url: str, fmt: Format) -> str | None:
    """The path (below ``url``) of the first level of the OME-Zarr image group at ``url``; None
    when it is no image."""
    if fmt == "zarr3":
        meta = read_json_url(f"{url}/zarr.json") or {}
        attrs = meta.get("attributes") if isinstance(meta.get("attributes"), dict) else {}
    else:
        attrs = read_json_url(f"{url}/.zattrs") or {}
    for ms in stored_multiscales(attrs or {}, fmt):
        datasets = ms.get("datasets")
        first = datasets[0] if isinstance(datasets, list) and datasets else None
        path = first.get("path") if isinstance(first, dict) else None
        if isinstance(path, str) and path.strip("/") and ".." not in path.split("/"):
            return path.strip("/")
    return None
