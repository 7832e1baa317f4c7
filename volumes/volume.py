"""Chunked volumes behind one interface: zarr v2/v3 (zarr-python), N5 (tensorstore), HDF5 (h5py),
and TileDataset JSON image tiles (read-only, in :mod:`volumes.tiles`).

``open_volume`` tells the format from the store itself (its metadata files, or HDF5's signature),
never from the name alone; only a TileDataset, a plain JSON file, is known by its ``.json`` suffix.
Every volume speaks C-order (z, y, x) or (c, z, y, x); N5 keeps its axes reversed on disk, and that
is undone here and nowhere else.

Handles open lazily, once per process. tensorstore aborts in a forked child once the parent has used
it, and h5py handles must not cross a fork either, so nothing opens at import time, a handle opened
before a fork is reopened after it, and a pickled volume carries only (path, dataset, mode) and
reopens by path on the Dask worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import zarr

from volumes.box import Box
from volumes.errors import (
    GeometryError,
    VolumeFormatError,
    VolumeNotFoundError,
    VolumeReadOnlyError,
)

Format = Literal["zarr2", "zarr3", "n5", "hdf5", "tiles", "memory"]
Mode = Literal["r", "r+"]
NodeKind = tuple[Format, Literal["array", "group"]]
VoxelSize = tuple[float, float, float]

N5_RESERVED = frozenset({"dimensions", "blockSize", "dataType", "compression", "n5"})
# Lengths in metadata are converted to nanometres; an absent unit is taken as given.
_NM_PER_UNIT = {"nanometer": 1.0, "nm": 1.0, "angstrom": 0.1, "micrometer": 1e3, "um": 1e3, "µm": 1e3}
_NM_PER_UNIT |= {"millimeter": 1e6, "mm": 1e6}
_MAX_LISTED = 50


@runtime_checkable
class Volume(Protocol):
    """A chunked array on disk (or in memory) read and written by boxes over all its dimensions."""

    @property
    def path(self) -> str: ...
    @property
    def dataset(self) -> str | None: ...
    @property
    def format(self) -> Format: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype: ...
    @property
    def chunks(self) -> tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def voxel_size(self) -> VoxelSize | None: ...
    @property
    def attrs(self) -> dict[str, Any]: ...
    def read(self, box: Box) -> np.ndarray: ...
    def write(self, box: Box, data: np.ndarray) -> None: ...
    def set_attrs(self, attrs: Mapping[str, Any]) -> None: ...


class _BaseVolume:
    """Box checks and the read-only guard, shared by every implementation."""

    format: Format
    path: str
    dataset: str | None
    mode: Mode
    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: tuple[int, ...]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self, box: Box) -> np.ndarray:
        """The voxels of ``box`` (all dimensions, inside the array) as a C-order array."""
        self._check_box(box)
        if box.is_empty():
            return np.zeros(box.shape, self.dtype)
        return np.ascontiguousarray(self._read(box.slices()))

    def write(self, box: Box, data: np.ndarray) -> None:
        """Store ``data`` (cast to the volume's dtype) at ``box``.

        Boxes should cover whole chunks (or end at the array's edge): concurrent writers of one chunk
        lose data, so each chunk must have a single writer.
        """
        self._check_writable()
        self._check_box(box)
        if tuple(data.shape) != box.shape:
            raise GeometryError(f"data of shape {data.shape} does not fit box {box} of {self._where()}")
        if not box.is_empty():
            self._write(box.slices(), np.asarray(data).astype(self.dtype, copy=False))

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        """Merge ``attrs`` into the stored attributes (top-level keys are replaced)."""
        self._check_writable()
        self._set_attrs(dict(attrs))

    def _check_box(self, box: Box) -> None:
        if box.ndim != self.ndim or not Box.of_shape(self.shape).contains(box):
            raise GeometryError(f"box {box} is not inside {self._where()} of shape {self.shape}")

    def _check_writable(self) -> None:
        if self.mode != "r+":
            raise VolumeReadOnlyError(f"{self._where()} is open read-only; open it with mode='r+'")

    def _where(self) -> str:
        return self.path if self.dataset is None else f"{self.path} dataset {self.dataset!r}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._where()}, shape={self.shape}, dtype={self.dtype})"

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        raise NotImplementedError

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        raise NotImplementedError

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        raise NotImplementedError


class ArrayVolume(_BaseVolume):
    """A volume over a numpy array: the in-memory double of the stored ones, for tests."""

    format: Format = "memory"

    def __init__(
        self,
        data: np.ndarray,
        chunks: Sequence[int] | None = None,
        voxel_size: VoxelSize | None = None,
        attrs: Mapping[str, Any] | None = None,
        mode: Mode = "r+",
    ) -> None:
        self.data, self.path, self.dataset, self.mode = data, "<memory>", None, mode
        self.shape, self.dtype = tuple(data.shape), data.dtype
        self.chunks = tuple(chunks) if chunks is not None else self.shape
        self.voxel_size = voxel_size
        self.attrs = dict(attrs or {})

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return self.data[slices].copy()

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self.data[slices] = data

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        self.attrs.update(attrs)


class _StoredVolume(_BaseVolume):
    """A volume in a store on disk, opened by (path, dataset, mode) and reopened the same way."""

    def __init__(self, path: str, dataset: str | None = None, mode: Mode = "r") -> None:
        self.path, self.dataset, self.mode = path, dataset, mode
        self._opened: tuple[int, Any] | None = None
        self._load_meta()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "dataset": self.dataset, "mode": self.mode}

    def __setstate__(self, state: dict[str, Any]) -> None:
        _StoredVolume.__init__(self, state["path"], state["dataset"], state["mode"])

    @property
    def node(self) -> Path:
        """The directory (or file, for HDF5) holding the array."""
        return Path(self.path, self.dataset or "")

    def _handle(self) -> Any:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), self._open())
        return self._opened[1]

    def _load_meta(self) -> None:
        raise NotImplementedError

    def _open(self) -> Any:
        raise NotImplementedError


class ZarrVolume(_StoredVolume):
    """A zarr array, read and written with zarr-python. ``chunks`` are the shards when sharded."""

    format: Format = "zarr3"

    def _open(self) -> Any:
        zarr_format: Literal[2, 3] = 3 if self.format == "zarr3" else 2
        return zarr.open_array(self.path, path=self.dataset or "", mode=self.mode, zarr_format=zarr_format)

    def _load_meta(self) -> None:
        array = self._handle()
        self.shape, self.dtype = tuple(array.shape), np.dtype(array.dtype)
        # A shard is the smallest unit that one writer must own, so it is our "chunk".
        self.chunks = tuple(array.shards or array.chunks)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._handle().attrs.asdict())

    @property
    def voxel_size(self) -> VoxelSize | None:
        return _ome_voxel_size(self.node, self.format) or _spatial(self.attrs.get("resolution"))

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._handle()[slices])

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self._handle()[slices] = data

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        self._handle().update_attributes(attrs)


class Zarr2Volume(ZarrVolume):
    format: Format = "zarr2"


class N5Volume(_StoredVolume):
    """An N5 dataset: metadata from ``attributes.json``, voxels through tensorstore's n5 driver."""

    format: Format = "n5"

    def _load_meta(self) -> None:
        meta = self._meta()
        try:
            self.shape = tuple(int(d) for d in reversed(meta["dimensions"]))
            self.chunks = tuple(int(b) for b in reversed(meta["blockSize"]))
            self.dtype = np.dtype(meta["dataType"])
        except (KeyError, TypeError) as err:
            raise VolumeFormatError(f"{self.node}/attributes.json is not N5 array metadata") from err

    def _meta(self) -> dict[str, Any]:
        return read_json(self.node / "attributes.json") or {}

    def _open(self) -> Any:
        import tensorstore as ts  # only here: a parent that used tensorstore cannot fork safely

        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": self.path}, "path": self.dataset or ""}
        store = ts.open(spec, read=True, write=self.mode == "r+").result()
        return store.T  # N5 order (x, y, z[, c]) -> ours (z, y, x) / (c, z, y, x)

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: v for k, v in self._meta().items() if k not in N5_RESERVED}

    @property
    def voxel_size(self) -> VoxelSize | None:
        """From ``resolution`` or ``pixelResolution`` (here, else on the parent group), times
        ``downsamplingFactors``, as N5 Viewer and BigDataViewer write them (in N5 axis order)."""
        own = self._meta()
        res = _n5_resolution(own)
        if res is None and self.dataset:
            res = _n5_resolution(read_json(self.node.parent / "attributes.json") or {})
        factors = own.get("downsamplingFactors")
        if res is not None and isinstance(factors, list) and len(factors) == len(res):
            res = [r * float(f) for r, f in zip(res, factors, strict=True)]
        return _spatial(res[::-1] if res is not None else None)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._handle()[slices].read().result())

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self._handle()[slices].write(data).result()

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        reserved = sorted(N5_RESERVED & attrs.keys())
        if reserved:
            raise VolumeFormatError(f"attributes {reserved} of {self._where()} are N5 metadata, not ours")
        write_json_atomic(self.node / "attributes.json", {**self._meta(), **attrs})


class HDF5Volume(_StoredVolume):
    """An HDF5 dataset, read with h5py. Read-only: outputs go to zarr or N5."""

    format: Format = "hdf5"

    def _open(self) -> Any:
        import h5py

        return h5py.File(self.path, "r")[self.dataset]

    def _load_meta(self) -> None:
        if self.mode != "r":
            raise VolumeReadOnlyError(f"{self._where()}: HDF5 volumes are read-only here; use mode='r'")
        ds = self._handle()
        self.shape, self.dtype = tuple(ds.shape), np.dtype(ds.dtype)
        self.chunks = tuple(ds.chunks or ds.shape)

    @property
    def node(self) -> Path:
        return Path(self.path)

    @property
    def attrs(self) -> dict[str, Any]:
        return {
            k: v.tolist() if isinstance(v, np.ndarray | np.generic) else v
            for k, v in self._handle().attrs.items()
        }

    @property
    def voxel_size(self) -> VoxelSize | None:
        return _spatial(self.attrs.get("resolution"))

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self._handle()[slices])


_CLASSES: dict[Format, Callable[[str, str | None, Mode], Volume]] = {
    "zarr2": Zarr2Volume,
    "zarr3": ZarrVolume,
    "n5": N5Volume,
    "hdf5": HDF5Volume,
}


def open_volume(
    path: str | os.PathLike[str], dataset: str | None = None, mode: Mode = "r", *, labels: bool = False
) -> Volume:
    """Open the array ``dataset`` inside the container at ``path`` (or ``path`` itself when None).

    ``labels``: the volume holds ids or masks, so whatever it resamples on read (a TileDataset's
    ``tile_ratio``) is nearest-neighbour, never interpolated.

    Raises VolumeNotFoundError for a missing path or dataset (listing the datasets that exist) and
    VolumeFormatError for a store that is neither zarr v2/v3, N5, HDF5 nor a TileDataset ``.json``.
    """
    root, name = Path(path), clean_dataset(dataset)
    if not root.exists():
        raise VolumeNotFoundError(f"no volume at {root}: the path does not exist")
    if root.is_file() and root.suffix.lower() == ".json":
        from volumes.tiles import open_tiles  # here: volumes.tiles builds on this module

        return open_tiles(root, name, mode, labels=labels)
    if root.is_file():
        return _open_hdf5(root, name, mode)
    node = root / name if name else root
    kind = node_kind(node) if node.is_dir() else None
    if kind is not None and kind[1] == "array":
        return _CLASSES[kind[0]](str(root), name, mode)
    datasets = list_datasets(root)
    if node_kind(root) is None and not datasets:
        raise VolumeFormatError(
            f"{root} is not a volume store: no zarr.json, .zarray/.zgroup or N5 attributes.json there"
        )
    raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {datasets}")


def _open_hdf5(root: Path, name: str | None, mode: Mode) -> Volume:
    import h5py

    if not h5py.is_hdf5(root):
        raise VolumeFormatError(f"{root} is a file but not HDF5; zarr and N5 stores are directories")
    with h5py.File(root, "r") as f:
        found = name is not None and isinstance(f.get(name), h5py.Dataset)
        if not found:
            names: list[str] = []
            f.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
            raise VolumeNotFoundError(f"no dataset {name!r} in {root}; datasets there: {names[:_MAX_LISTED]}")
    return HDF5Volume(str(root), name, mode)


def clean_dataset(dataset: str | None) -> str | None:
    """``dataset`` without surrounding slashes; None for the container itself."""
    name = (dataset or "").strip("/")
    return name or None


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file."""
    try:
        text = path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise VolumeFormatError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(value, dict):
        raise VolumeFormatError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def write_json_atomic(path: Path, value: Mapping[str, Any]) -> None:
    """Write ``value`` to ``path`` through a temporary file, so readers never see half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def node_kind(directory: Path) -> NodeKind | None:
    """Which format's array or group ``directory`` is, from its metadata files; None if neither."""
    meta = read_json(directory / "zarr.json")
    if meta is not None:
        return "zarr3", "array" if meta.get("node_type") == "array" else "group"
    if (directory / ".zarray").is_file():
        return "zarr2", "array"
    if (directory / ".zgroup").is_file():
        return "zarr2", "group"
    meta = read_json(directory / "attributes.json")
    if meta is not None and {"dimensions", "dataType"} <= meta.keys():
        return "n5", "array"
    if meta is not None and "n5" in meta:
        return "n5", "group"
    return None


def list_datasets(root: Path, max_depth: int = 4) -> list[str]:
    """Arrays under the container ``root`` (a few levels deep, at most ``_MAX_LISTED``), sorted."""
    found: list[str] = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        kind = node_kind(here)
        if kind is not None and kind[1] == "array":
            found.append(here.relative_to(root).as_posix())
            dirnames.clear()
        elif depth >= max_depth or len(found) >= _MAX_LISTED:
            dirnames.clear()
        dirnames.sort()
    return sorted(found)[:_MAX_LISTED]


def _spatial(values: Sequence[Any] | None) -> VoxelSize | None:
    """The last three (spatial z, y, x) of ``values`` as floats, or None when there are fewer."""
    if not isinstance(values, list | tuple) or len(values) < 3:
        return None
    z, y, x = (float(v) for v in values[-3:])
    return z, y, x


def _n5_resolution(attrs: Mapping[str, Any]) -> list[float] | None:
    """``resolution`` (with tensorstore's ``units``) or ``pixelResolution`` (N5 Viewer's list or
    {dimensions, unit}), in nm and N5 order."""
    res, units = attrs.get("resolution"), attrs.get("units")
    if isinstance(res, list) and isinstance(units, list) and len(units) == len(res):
        return [float(r) * _NM_PER_UNIT.get(str(u), 1.0) for r, u in zip(res, units, strict=True)]
    if isinstance(res, list):
        return [float(r) for r in res]
    pixel = attrs.get("pixelResolution")
    if isinstance(pixel, dict) and isinstance(pixel.get("dimensions"), list):
        factor = _NM_PER_UNIT.get(str(pixel.get("unit", "nm")), 1.0)
        return [float(r) * factor for r in pixel["dimensions"]]
    return [float(r) for r in pixel] if isinstance(pixel, list) else None


def _zarr_group_attrs(directory: Path, fmt: Format) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``directory``, or None when it is not one."""
    if fmt == "zarr3":
        meta = read_json(directory / "zarr.json")
        return meta.get("attributes", {}) if meta and meta.get("node_type") == "group" else None
    return (read_json(directory / ".zattrs") or {}) if (directory / ".zgroup").is_file() else None


def _ome_voxel_size(array_dir: Path, fmt: Format) -> VoxelSize | None:
    """The scale of ``array_dir`` in the OME-Zarr multiscales of the nearest group that lists it."""
    for parent in array_dir.parents:
        attrs = _zarr_group_attrs(parent, fmt)
        if attrs is None:
            return None
        scale = _multiscales_scale(attrs, array_dir.relative_to(parent).as_posix())
        if scale is not None:
            return scale
    return None


def _multiscales_scale(attrs: Mapping[str, Any], rel_path: str) -> VoxelSize | None:
    """Spatial scale (nm) of dataset ``rel_path`` in OME-Zarr 0.4 (``multiscales``) or 0.5 (``ome``)."""
    ome = attrs.get("ome")
    entries = attrs.get("multiscales") or (ome.get("multiscales") if isinstance(ome, dict) else None) or []
    for ms in entries:
        for ds in ms.get("datasets", []):
            if ds.get("path") != rel_path:
                continue
            scale = np.asarray(_scale_of(ds) or [1.0], float) * np.asarray(_scale_of(ms) or [1.0], float)
            axes = ms.get("axes") or []
            if axes and all(isinstance(a, dict) for a in axes) and len(axes) == len(scale):
                keep = [i for i, a in enumerate(axes) if a.get("type", "space") == "space"]
                factors = [_NM_PER_UNIT.get(str(axes[i].get("unit")), 1.0) for i in keep]
                scale = scale[keep] * np.asarray(factors)
            return _spatial(scale.tolist())
    return None


def _scale_of(node: Mapping[str, Any]) -> list[float] | None:
    for transform in node.get("coordinateTransformations") or []:
        if transform.get("type") == "scale":
            return [float(s) for s in transform["scale"]]
    return None
