"""Creating an output: one image of (c, z, y, x) levels (or (z, y, x), for labels), made once before any
block writes to it.

Layout (``output.path`` = ``out.zarr``, ``output.dataset`` = ``pred``)::

    out.zarr/pred/          the image: a group with its own OME-Zarr ``multiscales`` (one entry)
    out.zarr/pred/0         level 0, full resolution, (c, z, y, x): what the engine writes
    out.zarr/pred/1 ...     coarser levels (volumes.pyramid), filled after level 0 is complete

N5 names its levels ``s0``, ``s1``, ... with ``downsamplingFactors`` and the group's ``scales``
(the N5 viewers' and neuroglancer's convention). ``open_volume(path, "pred")`` opens level 0.
Each level's ``scale`` and ``translation`` place it where it lies in the input (an ROI's offset
times the voxel size, plus the input's own translation). Nothing outside the image's group is
written: the container's other images, and its own attributes, stay as readers saw them.

Labels (a segmentation's) are the same image without the channel axis, and their group also says it
is a label image: ``image-label`` beside ``multiscales`` (under ``ome`` on zarr v3, at the top on v2),
so viewers colour it as labels.

All channels share a chunk (a block writes all its channels at once), chunks are zstd-compressed,
never-written chunks read as 0, dimensions are named, and the voxel size travels as OME-Zarr
``multiscales`` on the image group (zarr: 0.4 on v2, 0.5 on v3, written by :mod:`volumes.ome`) or
``resolution``/``pixelResolution`` (N5).

A neuroglancer precomputed output (``format="precomputed"``) is the folder ``out/pred`` with its
``info`` (:func:`volumes.backends.precomputed.create_precomputed`): one scale, keyed ``0``, so that
``pred/0`` is its level 0 as for the other formats; it has no coarser levels.

N5 and precomputed metadata is written here as JSON rather than through tensorstore: outputs are
created by the planner, in a process that may fork later, and tensorstore aborts in a forked child
once the parent has used it. Workers (spawned) write the N5 and precomputed chunks through tensorstore.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numcodecs
import numpy as np
import numpy.typing as npt
import zarr
from zarr.codecs import ZstdCodec

from volumes.backends.n5 import N5_RESERVED
from volumes.backends.precomputed import create_precomputed
from volumes.detect import clean_dataset, is_precomputed_folder, list_datasets, node_kind
from volumes.errors import VolumeExistsError, VolumeFormatError, VolumeNotFoundError
from volumes.files import read_json_object, write_json_atomic
from volumes.ome import image_entry, image_level0, put_image, put_multiscale
from volumes.open import open_volume
from volumes.pyramid import Factors, level_shape
from volumes.remote import check_url_output
from volumes.urls import is_url, join_url, normalise_url, read_json_url, write_json_url, zarr_store
from volumes.volume import Volume

OutputFormat = Literal["zarr3", "zarr2", "n5", "precomputed"]
AXES = ("c", "z", "y", "x")
LABEL_AXES = ("z", "y", "x")
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
    *,
    translation: Sequence[float] | None = None,
    levels: Sequence[Factors] = ((1, 1, 1),),
    shards: Sequence[int] | None = None,
    label: bool = False,
) -> Volume:
    """Create the image ``dataset`` in the container at ``path`` and open its level 0 for writing.

    ``shape`` is level 0's (c, z, y, x), or (z, y, x) for a ``label`` image (which is also marked
    ``image-label``); ``chunks`` are spatial (z, y, x), the stored chunk is (c, *chunks) (cut to a
    coarse level's shape). ``levels`` are the cumulative factors of every
    level (:func:`volumes.pyramid.pyramid_factors`), ``translation`` where voxel 0 lies (nm, z y x).
    The container may already hold other datasets, which are kept. An existing ``dataset`` raises
    VolumeExistsError (and is left untouched) unless ``overwrite``, which deletes it, and only it,
    first. ``attrs`` go on level 0. ``shards`` (zarr v3, spatial, each a multiple of ``chunks``)
    groups level 0's chunks into shard objects. ``path`` may be an ``s3://`` URL.
    """
    root, name = Path(path), clean_dataset(dataset)
    if name is None:
        raise VolumeFormatError(f"an output needs a dataset name inside {root}, got {dataset!r}")
    _check_geometry(shape, chunks, voxel_size, label)
    if not levels or tuple(levels[0]) != (1, 1, 1):
        raise VolumeFormatError(f"an output's levels start at full resolution (1, 1, 1), got {levels}")
    shard = _shard_shape(format, shape, chunks, shards)
    image = _Image(
        name, tuple(shape), np.dtype(dtype), tuple(chunks), voxel_size, translation, tuple(levels), shard,
        label,
    )  # fmt: skip
    if format == "precomputed" and (len(image.levels) > 1 or label):
        raise VolumeFormatError("a precomputed output is one scale of predictions (no pyramid, no labels)")
    if is_url(path):  # an object store: zarr through FsspecStore, N5 metadata objects (volumes.remote)
        url = normalise_url(str(path))
        check_url_output(url, name, format, overwrite)
        if format == "precomputed":
            _create_precomputed(join_url(url, name), image, dict(attrs or {}))
        elif format == "n5":
            _create_n5(url, image, dict(attrs or {}))
        else:
            _create_zarr(zarr_store(url, read_only=False), format, image, dict(attrs or {}))
        return open_volume(url, name, mode="r+")
    _check_container(root, format)
    if (root / name).exists():
        if not overwrite:
            raise VolumeExistsError(f"output {root} dataset {name!r} exists; set overwrite to replace it")
        logger.info("overwriting output %s dataset %r", root, name)
        delete_dataset(root, name)
    if format == "precomputed":
        _create_precomputed(str(root / name), image, dict(attrs or {}))
    elif format == "n5":
        _create_n5(root, image, dict(attrs or {}))
    else:
        _create_zarr(str(root), format, image, dict(attrs or {}))
    return open_volume(root, name, mode="r+")


def level_path(format: str, dataset: str, level: int) -> str:
    """The path (in the container) of level ``level`` of the output image ``dataset``."""
    return f"{clean_dataset(dataset)}/{'s' if format == 'n5' else ''}{level}"


def delete_dataset(path: str | os.PathLike[str], dataset: str) -> None:
    """Delete the output ``dataset``: an image (a group of levels with its multiscales) or an array
    (with its entry in its parent's multiscales, written by older versions); other groups are
    refused."""
    root, name = Path(path), clean_dataset(dataset)
    node = root / (name or "")
    if name is not None and is_precomputed_folder(node):
        shutil.rmtree(node)
        return
    kind = node_kind(node) if name and node.is_dir() else None
    if name is not None and node.is_dir() and image_level0(node, kind[0] if kind else "n5") is not None:
        shutil.rmtree(node)
        return
    if kind is None or kind[1] != "array":
        if not node.exists() or name is None:
            raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {list_datasets(root)}")
        raise VolumeFormatError(
            f"{root} dataset {name!r} is not an array or an image ({kind}); not deleting it"
        )
    shutil.rmtree(node)
    parent, _, base = node.relative_to(root).as_posix().rpartition("/")
    group_kind = node_kind(root / parent)
    if kind[0] != "n5" and group_kind == (kind[0], "group"):
        put_multiscale(_open_group(root, parent, kind[0]), base, None)


def _check_geometry(
    shape: Sequence[int], chunks: Sequence[int], voxel_size: Sequence[float] | None, label: bool
) -> None:
    if len(shape) != (3 if label else 4) or any(int(s) < 1 for s in shape):
        axes = "(z, y, x)" if label else "(c, z, y, x)"
        raise VolumeFormatError(f"output shape must be {axes} with positive extents, got {tuple(shape)}")
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
    if format not in ("zarr3", "precomputed"):
        raise VolumeFormatError(
            f"shards are a zarr v3 or precomputed feature; {format} output cannot be sharded"
        )
    if len(shards) != 3 or any(int(s) < 1 or int(s) % int(c) for s, c in zip(shards, chunks, strict=False)):
        raise VolumeFormatError(
            f"shards {list(shards)} must be 3 positive multiples of chunks {list(chunks)}"
        )
    return (*(int(c) for c in shape[:-3]), *(int(s) for s in shards))


def _check_container(root: Path, format: OutputFormat) -> None:
    """``root`` must be absent, an empty directory (hidden entries aside: a job's run folder
    ``.pytc-run`` may be made first), or a group of ``format``."""
    if not root.exists():
        return
    if not root.is_dir():
        raise VolumeFormatError(f"{root} is a file; expected a {format} container directory")
    kind = node_kind(root)
    empty = not any(not p.name.startswith(".") for p in root.iterdir())
    if kind == (format, "group") or (kind is None and empty):
        return
    if format == "precomputed" and kind is None and not is_precomputed_folder(root):
        return  # a folder of precomputed images (each its own folder with an info)
    if kind is None and format == "n5" and list_datasets(root):
        return  # N5 made by tensorstore has no root attributes.json, only its datasets
    found = f"a {kind[0]} {kind[1]}" if kind else "a directory of no known format"
    raise VolumeFormatError(f"{root} is {found}; expected a {format} group to hold the output")


@dataclass(frozen=True)
class _Image:
    name: str
    shape: tuple[int, ...]  # level 0, (c, z, y, x), or (z, y, x) for labels
    dtype: np.dtype
    chunks: tuple[int, ...]  # spatial
    voxel_size: Sequence[float] | None
    translation: Sequence[float] | None
    levels: tuple[Factors, ...]
    shards: tuple[int, ...] | None = None  # level 0's stored shard, (c, z, y, x)
    label: bool = False  # (z, y, x) labels, marked image-label; else (c, z, y, x)

    @property
    def axes(self) -> tuple[str, ...]:
        return LABEL_AXES if self.label else AXES

    def level(self, index: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Level ``index``'s shape and stored chunk (channels whole, cut to the level's shape)."""
        shape = level_shape(self.shape, self.levels[index])
        lead = shape[:-3]
        return shape, (*lead, *(min(c, s) for c, s in zip(self.chunks, shape[-3:], strict=True)))


def _create_precomputed(folder: str, image: _Image, attrs: dict[str, Any]) -> None:
    create_precomputed(
        folder, image.shape, image.dtype, image.chunks, image.voxel_size, image.translation, attrs,
        image.shards[-3:] if image.shards else None,
    )  # fmt: skip


def _create_zarr(location: Any, format: OutputFormat, image: _Image, attrs: dict[str, Any]) -> None:
    """The image group (with intermediate groups), its levels and its multiscales; ``location`` is
    the container's path or a zarr store."""
    container = zarr.open_group(location, mode="a", zarr_format=3 if format == "zarr3" else 2)
    group = container.create_group(image.name)
    for index in range(len(image.levels)):
        shape, chunks = image.level(index)
        extra = attrs if index == 0 else {}
        common: dict[str, Any] = {"shape": shape, "dtype": image.dtype, "chunks": chunks, "fill_value": 0}
        if format == "zarr3":
            zstd: Any = ZstdCodec(level=ZSTD_LEVEL)
            shards = image.shards if index == 0 else None
            group.create_array(
                str(index),
                **common,
                shards=shards,
                compressors=zstd,
                dimension_names=image.axes,
                attributes=extra,
            )
        else:
            dims = {**extra, "_ARRAY_DIMENSIONS": list(image.axes)}
            group.create_array(
                str(index), **common, compressors=numcodecs.Zstd(level=ZSTD_LEVEL), attributes=dims
            )
    base = image.name.rpartition("/")[2]
    channel_axis = not image.label
    entry = image_entry(base, image.levels, image.voxel_size, image.translation, channel_axis=channel_axis)
    put_image(group, entry, label=image.label)


def _open_group(root: Path, parent: str, format: str) -> zarr.Group:
    return zarr.open_group(
        str(root), path=parent or None, mode="r+", zarr_format=3 if format == "zarr3" else 2
    )


def _create_n5(root: Path | str, image: _Image, attrs: dict[str, Any]) -> None:
    """The N5 root's version, the image group's ``scales`` and each level's ``attributes.json``
    (``s0``, ``s1``, ...), everything in N5's x-first order. ``root`` is a folder or an ``s3://``
    URL (each metadata file one object there)."""
    if image.dtype.name not in N5_DTYPES:
        raise VolumeFormatError(
            f"N5 cannot store dtype {image.dtype.name}; expected one of {sorted(N5_DTYPES)}"
        )
    reserved = sorted(N5_RESERVED & attrs.keys())
    if reserved:
        raise VolumeFormatError(f"attributes {reserved} for {root} dataset {image.name!r} are N5 metadata")
    root_meta = _n5_read(root, "") or {}
    if "n5" not in root_meta:
        _n5_write(root, "", {**root_meta, "n5": N5_VERSION})
    lead = [] if image.label else [1]
    scales = [[*(int(f) for f in factors[::-1]), *lead] for factors in image.levels]
    group_meta: dict[str, Any] = {"multiScale": True, "scales": scales, "axes": list(image.axes[::-1])}
    group_meta |= _n5_resolution(image.voxel_size, (1, 1, 1), image.label)
    if isinstance(root, Path):
        (root / image.name).mkdir(parents=True)
    _n5_write(root, image.name, group_meta)
    for index, factors in enumerate(image.levels):
        shape, chunks = image.level(index)
        meta: dict[str, Any] = {
            **(attrs if index == 0 else {}),
            "dimensions": list(shape[::-1]),
            "blockSize": list(chunks[::-1]),
            "dataType": image.dtype.name,
            "compression": {"type": "zstd", "level": ZSTD_LEVEL},
            "axes": list(image.axes[::-1]),
            "downsamplingFactors": scales[index],
        }
        meta |= _n5_resolution(image.voxel_size, factors, image.label)
        if isinstance(root, Path):
            (root / image.name / f"s{index}").mkdir()
        _n5_write(root, f"{image.name}/s{index}", meta)


def _n5_read(root: Path | str, node: str) -> dict[str, Any] | None:
    if isinstance(root, Path):
        return read_json_object(root / node / "attributes.json")
    return read_json_url(f"{join_url(root, node)}/attributes.json")


def _n5_write(root: Path | str, node: str, meta: dict[str, Any]) -> None:
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
        write_json_atomic(root / node / "attributes.json", meta)
    else:
        write_json_url(f"{join_url(root, node)}/attributes.json", meta)


def _n5_resolution(
    voxel_size: Sequence[float] | None, factors: Sequence[int], label: bool = False
) -> dict[str, Any]:
    """tensorstore wants one resolution (and unit) per dimension; N5 Viewer reads pixelResolution.
    Absent means unknown: N5 has no required resolution."""
    if voxel_size is None:
        return {}
    xyz = [float(v) * f for v, f in zip(voxel_size, factors, strict=True)][::-1]
    lead: tuple[list[float], list[str]] = ([], []) if label else ([1.0], [""])
    return {
        "resolution": [*xyz, *lead[0]],
        "units": ["nm", "nm", "nm", *lead[1]],
        "pixelResolution": {"dimensions": xyz, "unit": "nm"},
    }
