"""Which format a store is, told from its metadata files, never from its name.

zarr v3 has ``zarr.json`` (``node_type`` array or group), zarr v2 ``.zarray`` or ``.zgroup``, N5 an
``attributes.json`` holding array metadata (``dimensions``, ``dataType``) or a group's ``n5`` version.
A neuroglancer precomputed volume is a folder with an ``info`` file listing its ``scales``.
HDF5 files and TileDataset JSON are files, not directories; :mod:`volumes.open` tells those apart.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from volumes.backends.precomputed import is_precomputed
from volumes.files import read_json_object
from volumes.volume import Format

NodeKind = tuple[Format, Literal["array", "group"]]

MAX_LISTED = 50  # datasets named in a listing (and in an error message)


def clean_dataset(dataset: str | None) -> str | None:
    """``dataset`` without surrounding slashes; None for the container itself."""
    name = (dataset or "").strip("/")
    return name or None


def is_precomputed_folder(directory: Path) -> bool:
    """Whether ``directory`` is a neuroglancer precomputed volume (its ``info`` file lists scales)."""
    return (
        directory.is_dir()
        and (directory / "info").is_file()
        and is_precomputed(read_json_object(directory / "info"))
    )


def node_kind(directory: Path) -> NodeKind | None:
    """Which format's array or group ``directory`` is, from its metadata files; None if neither."""
    meta = read_json_object(directory / "zarr.json")
    if meta is not None:
        return "zarr3", "array" if meta.get("node_type") == "array" else "group"
    if (directory / ".zarray").is_file():
        return "zarr2", "array"
    if (directory / ".zgroup").is_file():
        return "zarr2", "group"
    meta = read_json_object(directory / "attributes.json")
    if meta is not None and {"dimensions", "dataType"} <= meta.keys():
        return "n5", "array"
    if meta is not None and "n5" in meta:
        return "n5", "group"
    return None


def list_datasets(root: Path, max_depth: int = 4) -> list[str]:
    """Arrays and images (OME-Zarr groups, named by the group) under the container ``root`` (a few
    levels deep, at most ``MAX_LISTED``), sorted."""
    from volumes.ome import image_level0

    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        kind = node_kind(here)
        image = here != root and image_level0(here, kind[0] if kind else "n5") is not None
        if (kind is not None and kind[1] == "array") or image:
            found.append(here.relative_to(root).as_posix())
            dirnames.clear()
        elif depth >= max_depth or len(found) >= MAX_LISTED:
            dirnames.clear()
        dirnames.sort()
    return sorted(found)[:MAX_LISTED]
