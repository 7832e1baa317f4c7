"""Creating the inference output: one (c, z, y, x) array, made once before any block writes to it.

All channels share a chunk (a block writes all its channels at once), chunks are zstd-compressed,
never-written chunks read as 0, dimensions are named, and the voxel size travels as OME-Zarr
``multiscales`` on the parent group (zarr: 0.4 on v2, 0.5 on v3, written by :mod:`volumes.ome`) or
``resolution``/``pixelResolution`` (N5).

N5 metadata is written here as JSON rather than through tensorstore: outputs are created by the
planner, in a process that may fork later, and tensorstore aborts in a forked child once the parent
has used it. Workers (spawned) write the N5 chunks through tensorstore.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ZstdCodec

from volumes.backends.n5 import N5_RESERVED
from volumes.detect import clean_dataset, list_datasets, node_kind
from volumes.errors import VolumeExistsError, VolumeFormatError, VolumeNotFoundError
from volumes.files import read_json_object, write_json_atomic
from volumes.ome import multiscale_entry, put_multiscale
from volumes.open import open_volume
from volumes.remote import create_url_output
from volumes.urls import is_url
from volumes.volume import Volume

OutputFormat = Literal["zarr3", "zarr2", "n5"]
AXES = ("c", "z", "y", "x")
ZSTD_LEVEL = 3
N5_VERSION = "4.0.0"
N5_DTYPES = frozenset(f"{k}{b}" for k in ("int", "uint") for b in (8, 16, 32, 64)) | {"float32", "float64"}

logger = logging.getLogger(__name__)


def create_output(
    path: str | os.PathLike[str],
    dataset: str,
    format: OutputFormat,
    shape: Sequence[int],
    dtype: npt.DTypeLike,
    chunks: Sequence[int],
    voxel_size: Sequence[float] | None = None,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    shards: Sequence[int] | None = None,
) -> Volume:
    """Create the (c, z, y, x) array ``dataset`` in the container at ``path`` and open it for writing.

    ``chunks`` are spatial (z, y, x); the stored chunk is (c, *chunks). The container may already
    hold other datasets, which are kept. An existing ``dataset`` raises VolumeExistsError (and is
    left untouched) unless ``overwrite``, which deletes that array, and only it, first. ``shards``
    (zarr v3 only, spatial, each a multiple of ``chunks``) groups the chunks into shard objects.
    """
    root, name = Path(path), clean_dataset(dataset)
    if name is None:
        raise VolumeFormatError(f"an output needs a dataset name inside {root}, got {dataset!r}")
    _check_geometry(shape, chunks, voxel_size)
    shard = _shard_shape(format, shape, chunks, shards)
    if is_url(path):  # an object store (volumes.remote)
        create_url_output(
            str(path),
            name,
            format,
            tuple(shape),
            np.dtype(dtype),
            chunks,
            voxel_size,
            attrs or {},
            overwrite,
            shard,
        )
        return open_volume(str(path), name, mode="r+")
    _check_container(root, format)
    if (root / name).exists():
        if not overwrite:
            raise VolumeExistsError(f"output {root} dataset {name!r} exists; set overwrite to replace it")
        logger.info("overwriting output %s dataset %r", root, name)
        delete_dataset(root, name)
    user_attrs = dict(attrs or {})
    if format == "n5":
        _create_n5(root, name, tuple(shape), np.dtype(dtype), tuple(chunks), voxel_size, user_attrs)
    else:
        _create_zarr(
            root, name, format, tuple(shape), np.dtype(dtype), tuple(chunks), voxel_size, user_attrs, shard
        )
    return open_volume(root, name, mode="r+")


def delete_dataset(path: str | os.PathLike[str], dataset: str) -> None:
    """Delete the array ``dataset`` (only it: groups are refused) and its OME-Zarr multiscales entry."""
    root, name = Path(path), clean_dataset(dataset)
    node = root / (name or "")
    kind = node_kind(node) if name and node.is_dir() else None
    if kind is None or kind[1] != "array":
        if not node.exists() or name is None:
            raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {list_datasets(root)}")
        raise VolumeFormatError(f"{root} dataset {name!r} is not an array ({kind}); not deleting it")
    shutil.rmtree(node)
    parent, _, base = node.relative_to(root).as_posix().rpartition("/")
    group_kind = node_kind(root / parent)
    if kind[0] != "n5" and group_kind == (kind[0], "group"):
        put_multiscale(_open_group(root, parent, kind[0]), base, None)


def _check_geometry(shape: Sequence[int], chunks: Sequence[int], voxel_size: Sequence[float] | None) -> None:
    if len(shape) != 4 or any(int(s) < 1 for s in shape):
        raise VolumeFormatError(
            f"output shape must be (c, z, y, x) with positive extents, got {tuple(shape)}"
        )
    if len(chunks) != 3 or any(int(c) < 1 for c in chunks):
        raise VolumeFormatError(f"output chunks must be spatial (z, y, x) and positive, got {tuple(chunks)}")
    if voxel_size is not None and (len(voxel_size) != 3 or any(v <= 0 for v in voxel_size)):
        raise VolumeFormatError(f"voxel size must be (z, y, x), positive, got {tuple(voxel_size)}")


def _shard_shape(
    format: OutputFormat, shape: Sequence[int], chunks: Sequence[int], shards: Sequence[int] | None
) -> tuple[int, ...] | None:
    """The stored (c, z, y, x) shard for spatial ``shards``, checked; None when unsharded."""
    if shards is None:
        return None
    if format != "zarr3":
        raise VolumeFormatError(f"shards are a zarr v3 feature; {format} output cannot be sharded")
    if len(shards) != 3 or any(int(s) < 1 or int(s) % int(c) for s, c in zip(shards, chunks, strict=False)):
        raise VolumeFormatError(
            f"shards {list(shards)} must be 3 positive multiples of chunks {list(chunks)}"
        )
    return (int(shape[0]), *(int(s) for s in shards))


def _check_container(root: Path, format: OutputFormat) -> None:
    """``root`` must be absent, an empty directory, or a group of ``format``."""
    if not root.exists():
        return
    if not root.is_dir():
        raise VolumeFormatError(f"{root} is a file; expected a {format} container directory")
    kind = node_kind(root)
    if kind == (format, "group") or (kind is None and not any(root.iterdir())):
        return
    if kind is None and format == "n5" and list_datasets(root):
        return  # N5 made by tensorstore has no root attributes.json, only its datasets
    found = f"a {kind[0]} {kind[1]}" if kind else "a directory of no known format"
    raise VolumeFormatError(f"{root} is {found}; expected a {format} group to hold the output")


def _create_zarr(
    root: Path,
    name: str,
    format: OutputFormat,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    voxel_size: Sequence[float] | None,
    attrs: dict[str, Any],
    shards: tuple[int, ...] | None = None,
) -> None:
    """The array (with intermediate groups) and its entry in the parent group's multiscales."""
    group = zarr.open_group(str(root), mode="a", zarr_format=3 if format == "zarr3" else 2)
    common: dict[str, Any] = {"shape": shape, "dtype": dtype, "chunks": (shape[0], *chunks), "fill_value": 0}
    if format == "zarr3":
        zstd: Any = ZstdCodec(level=ZSTD_LEVEL)
        group.create_array(
            name, **common, shards=shards, compressors=zstd, dimension_names=AXES, attributes=attrs
        )
    else:
        dims = {**attrs, "_ARRAY_DIMENSIONS": list(AXES)}
        group.create_array(name, **common, compressors=numcodecs.Zstd(level=ZSTD_LEVEL), attributes=dims)
    parent, _, base = name.rpartition("/")
    entry = multiscale_entry(base, voxel_size, channel_axis=True)
    put_multiscale(_open_group(root, parent, format), base, entry)


def _open_group(root: Path, parent: str, format: str) -> zarr.Group:
    return zarr.open_group(
        str(root), path=parent or None, mode="r+", zarr_format=3 if format == "zarr3" else 2
    )


def _create_n5(
    root: Path,
    name: str,
    shape: tuple[int, ...],
    dtype: np.dtype,
    chunks: tuple[int, ...],
    voxel_size: Sequence[float] | None,
    attrs: dict[str, Any],
) -> None:
    """The N5 root's version and the dataset's ``attributes.json``, everything in N5's x-first order."""
    if dtype.name not in N5_DTYPES:
        raise VolumeFormatError(f"N5 cannot store dtype {dtype.name}; expected one of {sorted(N5_DTYPES)}")
    reserved = sorted(N5_RESERVED & attrs.keys())
    if reserved:
        raise VolumeFormatError(f"attributes {reserved} for {root} dataset {name!r} are N5 metadata")
    root.mkdir(parents=True, exist_ok=True)
    root_meta = read_json_object(root / "attributes.json") or {}
    if "n5" not in root_meta:
        write_json_atomic(root / "attributes.json", {**root_meta, "n5": N5_VERSION})
    meta: dict[str, Any] = {
        **attrs,
        "dimensions": list(shape[::-1]),
        "blockSize": [*chunks[::-1], shape[0]],
        "dataType": dtype.name,
        "compression": {"type": "zstd", "level": ZSTD_LEVEL},
        "axes": list(AXES[::-1]),
    }
    if voxel_size is not None:  # absent means unknown; N5 has no required resolution
        # tensorstore wants one resolution (and unit) per dimension; N5 Viewer reads pixelResolution.
        xyz = [float(v) for v in voxel_size][::-1]
        meta |= {"resolution": [*xyz, 1.0], "units": ["nm", "nm", "nm", ""]}
        meta |= {"pixelResolution": {"dimensions": xyz, "unit": "nm"}}
    (root / name).mkdir(parents=True)
    write_json_atomic(root / name / "attributes.json", meta)
