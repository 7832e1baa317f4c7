"""Neuroglancer precomputed volumes: metadata from ``info``, voxels through tensorstore.

A precomputed volume is a folder holding an ``info`` file (``@type``
``neuroglancer_multiscale_volume``) that lists its scales; each scale has a ``key`` (the folder of its
chunks, or shard files), a ``size``, ``chunk_sizes``, ``resolution`` (nm) and ``voxel_offset``, all
in x, y, z order, and the array has a trailing channel axis. Here a scale is chosen by the dataset
name (its key, such as ``8_8_40``, or its index in the list; the first scale when none), its origin
is moved to 0, and the axes are turned to ours: (z, y, x) for one channel, (c, z, y, x) for more.

A precomputed volume may also be named as an output image is, a container and a dataset below it
(``out/pred``, ``out/pred/0``): the folder holding the ``info`` is found along the dataset's path and
the rest names the scale. Outputs (:func:`create_precomputed`, one scale keyed ``0``) are raw
encoded, sharded when asked; their ``info`` also holds ``axes`` (``c z y x``: the channel axis is
kept even for one channel, as every output's is) and the output's own attributes (``pytc``). The
volume's ``translation`` is its ``voxel_offset`` times its resolution, in nm.

A sharded output (``neuroglancer_uint64_sharded_v1``, identity hash) groups the chunks whose
compressed Morton codes share their high bits; with ``preshift_bits + minishard_bits = n`` a shard
is the aligned box of chunks the code's low ``n`` bits span (:func:`shard_factors`), so a block
that is a whole number of shards writes each of its shards alone.

Decoding stays bounded as for the other formats: tensorstore decodes each chunk into a buffer of
the chunk's shape and refuses a raw chunk whose length differs, a JPEG or PNG whose header states
other dimensions, and a compressed segmentation whose offsets point outside the chunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from volumes.backends.base import StoredVolume
from volumes.backends.meta import check_array_meta
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.files import read_json_object, write_json_atomic
from volumes.urls import is_url, join_url, read_json_url, tensorstore_kvstore, write_json_url
from volumes.volume import Format, VoxelSize

PRECOMPUTED_TYPE = "neuroglancer_multiscale_volume"
# The keys of an ``info`` that are the format's; the others are the volume's attributes.
INFO_KEYS = frozenset({"@type", "type", "data_type", "num_channels", "scales", "mesh", "skeletons",
                       "segment_properties", "axes"})  # fmt: skip
OUTPUT_AXES = ["c", "z", "y", "x"]
PRECOMPUTED_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float32"})
MAX_PRESHIFT_BITS = 6  # chunks per minishard: 64 at most, a small minishard index each


def read_info(folder: str) -> dict[str, Any] | None:
    """The parsed ``info`` of the folder (or ``s3://`` URL) ``folder``; None when there is none."""
    return read_json_url(f"{folder}/info") if is_url(folder) else read_json_object(f"{folder}/info")


def write_info(folder: str, info: dict[str, Any]) -> None:
    """Store ``info`` atomically (a rename; one PUT in an object store)."""
    if is_url(folder):
        write_json_url(f"{folder}/info", info)
    else:
        Path(folder).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(folder) / "info", info)


def locate(path: str, dataset: str | None) -> tuple[str, str | None] | None:
    """(the folder holding the ``info``, the scale's name) for ``dataset`` in ``path``: ``path``
    itself when it is a precomputed volume, else the first folder along ``dataset`` that is; None
    when neither is."""
    parts = dataset.split("/") if dataset else []
    for depth in range(len(parts) + 1):
        folder = join_url(path, "/".join(parts[:depth])) if is_url(path) else str(Path(path, *parts[:depth]))
        if is_precomputed(read_info(folder)):
            return folder, "/".join(parts[depth:]) or None
    return None


def is_precomputed(info: dict[str, Any] | None) -> bool:
    """Whether ``info`` (a parsed ``info`` file) is a precomputed volume's."""
    return (
        info is not None
        and isinstance(info.get("scales"), list)
        and info.get("@type", PRECOMPUTED_TYPE) == PRECOMPUTED_TYPE
    )


def scale_keys(info: dict[str, Any]) -> list[str]:
    """The keys of the scales ``info`` lists, in order."""
    return [str(s.get("key")) for s in info.get("scales", []) if isinstance(s, dict)]


class PrecomputedVolume(StoredVolume):
    """One scale of a neuroglancer precomputed volume, in our (z, y, x) / (c, z, y, x) order."""

    format: Format = "precomputed"

    def _load_meta(self) -> None:
        found = locate(self.path, self.dataset)
        where = f"{self.path}/info"
        if found is None:
            raise VolumeFormatError(f"{where} is not a neuroglancer precomputed info file")
        self.folder, scale_name = found
        where = f"{self.folder}/info"
        info = read_info(self.folder)
        assert info is not None
        self.scale_index, scale = _choose_scale(info, scale_name, where)
        try:
            self.key = _safe_key(scale["key"], where)
            size = [int(s) for s in scale["size"]]
            chunk = [int(c) for c in scale["chunk_sizes"][0]]
            self.resolution = tuple(float(r) for r in scale["resolution"])
            self.offset = tuple(int(o) for o in scale.get("voxel_offset", (0, 0, 0)))
            self.dtype = np.dtype(str(info["data_type"]))
            self.channels = int(info.get("num_channels", 1))
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise VolumeFormatError(
                f"{where} scale {self.scale_index} is not precomputed metadata: {err}"
            ) from None
        if len(size) != 3 or len(chunk) != 3 or len(self.resolution) != 3 or len(self.offset) != 3:
            raise VolumeFormatError(
                f"{where} scale {self.scale_index}: size, chunk_sizes, resolution and voxel_offset need "
                "3 values (x, y, z)"
            )
        if self.channels < 1:
            raise VolumeFormatError(f"{where}: num_channels must be at least 1, got {self.channels}")
        if self.mode != "r" and info.get("axes") != OUTPUT_AXES:
            raise VolumeReadOnlyError(f"{self.path} is a neuroglancer precomputed volume: read only here")
        self.keep_channels = self.channels > 1 or info.get("axes") == OUTPUT_AXES
        if self.folder != self.path:  # named as an output is, container/image[/scale]: the image's scale
            assert self.dataset is not None
            image = self.dataset.removesuffix(f"/{scale_name}") if scale_name else self.dataset
            self.dataset = f"{image}/{self.key}"
        lead = (self.channels,) if self.keep_channels else ()
        self.shape = lead + tuple(reversed(size))
        self.chunks = lead + tuple(reversed(shard_shape(scale) or chunk))
        check_array_meta(where, self.shape, self.chunks, self.dtype)

    def _open(self) -> Any:
        import tensorstore as ts  # only here: a parent that used tensorstore cannot fork safely

        kvstore = (
            tensorstore_kvstore(self.folder)
            if is_url(self.folder)
            else {"driver": "file", "path": self.folder}
        )
        spec = {"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": self.scale_index}
        try:
            store = ts.open(spec, read=True, write=self.mode == "r+").result()
        except ValueError as err:
            raise VolumeFormatError(f"{self._where()} cannot be opened as precomputed: {err}") from None
        store = store[ts.d[:].translate_to[0]]  # voxel_offset -> 0
        store = store.T  # (c, z, y, x)
        return store if self.keep_channels else store[0]

    @property
    def attrs(self) -> dict[str, Any]:
        info = read_info(self.folder) or {}
        own = {k: v for k, v in info.items() if k not in INFO_KEYS}
        return {**own, "neuroglancer": {k: v for k, v in info.items() if k != "scales"}, "scale": self.key}

    @property
    def voxel_size(self) -> VoxelSize | None:
        x, y, z = self.resolution
        return (z, y, x)

    @property
    def translation(self) -> VoxelSize | None:
        """``voxel_offset`` times the resolution (nm); None at the origin."""
        if not any(self.offset):
            return None
        x, y, z = (o * r for o, r in zip(self.offset, self.resolution, strict=True))
        return (z, y, x)

    def _read(self, slices: tuple[slice, ...]) -> np.ndarray:
        try:
            return np.asarray(self._handle()[slices].read().result())
        except ValueError as err:  # tensorstore's refusal of a chunk it cannot decode to its shape
            limit = math.prod(self.chunks) * self.dtype.itemsize
            raise OversizedChunkError(
                limit, f"holds a chunk tensorstore refuses: {err}", self._where()
            ) from None

    def _write(self, slices: tuple[slice, ...], data: np.ndarray) -> None:
        self._handle()[slices].write(data).result()

    def _set_attrs(self, attrs: dict[str, Any]) -> None:
        reserved = sorted(INFO_KEYS & attrs.keys())
        if reserved:
            raise VolumeFormatError(f"attributes {reserved} of {self._where()} are precomputed metadata")
        write_info(self.folder, {**(read_info(self.folder) or {}), **attrs})


def compressed_morton_bits(grid_xyz: Sequence[int]) -> list[int]:
    """The axis (0 = x, 1 = y, 2 = z) of each bit of a compressed Morton code over a chunk grid of
    ``grid_xyz`` chunks, lowest bit first (bits interleave x, y, z; an axis drops out once its
    ``ceil(log2(n))`` bits are used)."""
    bits = [max(0, int(n) - 1).bit_length() for n in grid_xyz]
    order = []
    for level in range(max(bits, default=0)):
        order += [axis for axis in range(3) if level < bits[axis]]
    return order


def shard_factors(grid_xyz: Sequence[int], low_bits: int) -> tuple[int, int, int]:
    """Chunks per shard along x, y, z when a shard spans the code's ``low_bits`` low bits."""
    counts = [0, 0, 0]
    for axis in compressed_morton_bits(grid_xyz)[:low_bits]:
        counts[axis] += 1
    return (1 << counts[0], 1 << counts[1], 1 << counts[2])


def sharding_for(grid_xyz: Sequence[int], factors_xyz: Sequence[int]) -> dict[str, Any] | None:
    """The sharding spec whose shards are boxes of ``factors_xyz`` chunks (x, y, z; clipped to the
    grid), or None when no shard of a compressed Morton code is that box."""
    order = compressed_morton_bits(grid_xyz)
    clipped = [min(int(f), 1 << order.count(a)) for a, f in enumerate(factors_xyz)]
    for low in range(len(order) + 1):
        if list(shard_factors(grid_xyz, low)) == clipped:
            preshift = min(low, MAX_PRESHIFT_BITS)
            return {
                "@type": "neuroglancer_uint64_sharded_v1",
                "hash": "identity",
                "preshift_bits": preshift,
                "minishard_bits": low - preshift,
                "shard_bits": len(order) - low,
                "minishard_index_encoding": "gzip",
                "data_encoding": "gzip",
            }
    return None


def valid_shards(grid_xyz: Sequence[int], chunk_xyz: Sequence[int]) -> list[list[int]]:
    """Every shard shape (voxels, z y x) a sharded precomputed volume over this grid can have."""
    shapes = []
    for low in range(len(compressed_morton_bits(grid_xyz)) + 1):
        f = shard_factors(grid_xyz, low)
        shapes.append([f[2] * chunk_xyz[2], f[1] * chunk_xyz[1], f[0] * chunk_xyz[0]])
    return shapes


def shard_shape(scale: dict[str, Any]) -> list[int] | None:
    """A sharded scale's shard (voxels, x y z) when its shards are boxes (identity hash), else None."""
    sharding = scale.get("sharding")
    if not isinstance(sharding, dict) or sharding.get("hash") != "identity":
        return None
    try:
        chunk = [int(c) for c in scale["chunk_sizes"][0]]
        grid = [-(-int(s) // c) for s, c in zip(scale["size"], chunk, strict=True)]
        low = int(sharding["preshift_bits"]) + int(sharding["minishard_bits"])
        if int(sharding["shard_bits"]) < len(compressed_morton_bits(grid)) - low:
            return None  # shards wrap around: not boxes
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return [f * c for f, c in zip(shard_factors(grid, low), chunk, strict=True)]


def create_precomputed(
    folder: str,
    shape: Sequence[int],
    dtype: np.dtype,
    chunks: Sequence[int],
    voxel_size: Sequence[float] | None,
    translation: Sequence[float] | None,
    attrs: dict[str, Any],
    shards: Sequence[int] | None = None,
) -> None:
    """Write the ``info`` of a one-scale (key ``0``), raw-encoded precomputed image of ``shape``
    (c, z, y, x) at ``folder`` (a folder or an ``s3://`` URL), sharded into ``shards`` (z, y, x)
    when given. ``translation`` (nm) becomes ``voxel_offset``, a whole number of voxels."""
    if dtype.name not in PRECOMPUTED_DTYPES:
        raise VolumeFormatError(
            f"precomputed cannot store dtype {dtype.name}; expected one of {sorted(PRECOMPUTED_DTYPES)}"
        )
    reserved = sorted(INFO_KEYS & attrs.keys())
    if reserved:
        raise VolumeFormatError(f"attributes {reserved} for {folder} are precomputed metadata")
    resolution = [float(v) for v in (voxel_size or (1.0, 1.0, 1.0))][::-1]
    size, chunk = (
        [int(s) for s in shape[-3:]][::-1],
        [min(int(c), int(s)) for c, s in zip(chunks, shape[-3:], strict=True)][::-1],
    )
    offset = [0, 0, 0]
    if translation is not None:
        for axis, (t, r) in enumerate(zip([float(t) for t in translation][::-1], resolution, strict=True)):
            steps = t / r
            if abs(steps - round(steps)) > 1e-6 * max(1.0, abs(steps)):
                raise VolumeFormatError(
                    f"precomputed places a volume by whole voxels: the translation {list(translation)} nm "
                    f"is not a whole number of voxels of {resolution[::-1]} nm (axis {'xyz'[axis]})"
                )
            offset[axis] = round(steps)
    scale: dict[str, Any] = {
        "key": "0", "size": size, "resolution": resolution, "voxel_offset": offset,
        "chunk_sizes": [chunk], "encoding": "raw",
    }  # fmt: skip
    if shards is not None:
        grid = [-(-s // c) for s, c in zip(size, chunk, strict=True)]
        factors = [int(s) // int(c) for s, c in zip([int(s) for s in shards][::-1], chunk, strict=True)]
        sharding = sharding_for(grid, factors)
        if sharding is None:
            raise VolumeFormatError(
                f"precomputed shards {list(shards)} are not a shard of this volume's chunk grid; "
                f"possible shards: {valid_shards(grid, chunk)}"
            )
        scale["sharding"] = sharding
    info = {
        "@type": PRECOMPUTED_TYPE, "type": "image", "data_type": dtype.name,
        "num_channels": int(shape[0]), "scales": [scale], "axes": OUTPUT_AXES, **attrs,
    }  # fmt: skip
    write_info(folder, info)


def _choose_scale(info: dict[str, Any], dataset: str | None, where: str) -> tuple[int, dict[str, Any]]:
    """(index, scale) named by ``dataset``: a scale key or an index; the first scale when None."""
    scales = [s for s in info["scales"] if isinstance(s, dict)]
    if not scales:
        raise VolumeFormatError(f"{where} lists no scales")
    if dataset is None:
        return 0, scales[0]
    keys = scale_keys(info)
    if dataset in keys:
        return keys.index(dataset), scales[keys.index(dataset)]
    if dataset.isdigit() and int(dataset) < len(scales):
        return int(dataset), scales[int(dataset)]
    raise VolumeNotFoundError(
        f"no scale {dataset!r} in {where}; scales there: {keys} (or an index 0..{len(keys) - 1})"
    )


def _safe_key(key: Any, where: str) -> str:
    """A scale's ``key``: a relative path that stays inside the volume's folder."""
    text = str(key)
    parts = PurePosixPath(text).parts
    if not text or text.startswith("/") or "://" in text or ".." in parts:
        raise VolumeFormatError(f"{where} names scale key {text!r}: expected a folder inside the volume")
    return text
