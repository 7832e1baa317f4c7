"""Whole chunks of a local zarr v2/v3 array written straight to their files, without zarr-python.

zarr-python 3.1's ``array[slices] = data`` costs about 9 ms per call beyond the work itself: a
64x256x256 uint32 label block (two 32x256x256 zstd chunks) takes 13-14 ms through zarr (best of 10),
while numcodecs' Zstd encodes both chunks in 4.2 ms and writing the two ~85 KB files takes 0.4 ms;
here the same write takes 5.2 ms. The rest is zarr's machinery (the event loop and its
thread hand-offs, the indexer, buffer wrappers and a chunk spec per chunk), and a segmentation job's
write step spent a third of its time in it. When a write is one zarr would do chunk file by chunk
file anyway, :func:`write_chunks` does it here instead, if all of these hold:

- the store is a local folder (zarr's ``LocalStore``; no URL) that zarr may write;
- the array is not sharded;
- zarr v3: the codecs are exactly ``bytes`` (little-endian, or no endian for 1-byte types) and at
  most one ``zstd`` or ``gzip`` after it (no transpose, crc32c, blosc or sharding); zarr v2: no
  filters, C order, and no compressor or a numcodecs one;
- the machine is little-endian and the dtype a plain bool, integer or float one, stored
  little-endian (or single-byte);
- the box covers whole chunks: every start on a chunk boundary, every stop on one or at the array's
  edge (an edge chunk is padded to its full shape with the fill value, as zarr pads a chunk it
  creates).

Anything else returns False before a byte is written, and the caller writes through zarr. Each
chunk then becomes what zarr would store: a chunk equal to the fill value everywhere is no file at
all (its old file removed) unless the array's ``write_empty_chunks`` config says otherwise, and the
others are encoded with the very numcodecs object zarr itself uses (v3: the chunk's little-endian
bytes through zarr's ``ZstdCodec._zstd_codec``/``GzipCodec._gzip_codec``; v2: the compressor's
``encode`` of the chunk array, so that blosc shuffles by the item size as zarr's does) and written
to a temporary file in the chunk's folder, moved into place with ``os.replace`` as zarr's
``LocalStore`` does: a reader sees the old chunk or the new one, never half of one.

One difference from zarr, invisible to readers: an edge chunk is always padded with the fill
value, while zarr pads an existing edge chunk with what its file held beyond the array's edge (the
fill value too, unless the array was shrunk). Tests compare the stored chunks of real v2 and v3
arrays with zarr's own writes, so a zarr release that changes any of this fails them.
"""

from __future__ import annotations

import itertools
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numcodecs.abc
import numpy as np
from zarr.codecs import BytesCodec, GzipCodec, ZstdCodec
from zarr.core.metadata import ArrayV2Metadata, ArrayV3Metadata
from zarr.storage import LocalStore

from volumes.backends.zarr_codecs import NUMCODEC_ATTRIBUTE

# The dtype kinds written here: bool, signed and unsigned integers, floats (their fill values and
# emptiness are plain comparisons of bits, or NaN tests, as below).
_PLAIN_KINDS = "biuf"
# Elements compared with the fill value at a time: a chunk with data usually differs within its first
# slab, so the test stops there, and a slab's comparison stays in the cache.
_SLAB = 2**16

# A chunk (C-contiguous, the full chunk shape) to the bytes stored for it (any bytes-like object).
Encode = Callable[[np.ndarray], Any]


def write_chunks(array: Any, node: Path, slices: tuple[slice, ...], data: np.ndarray) -> bool:
    """Write ``data`` at ``slices`` of the zarr ``array`` stored in the folder ``node``, chunk file by
    chunk file, and return True; or return False, writing nothing, when the write is not one this
    module does (see the module's docstring) and zarr must do it."""
    encode = _encoder(array, data)
    chunks = tuple(int(c) for c in array.chunks)
    shape = tuple(int(s) for s in array.shape)
    if encode is None or not _whole_chunks(slices, chunks, shape):
        return False
    metadata = array.metadata
    config = _config(array)
    if config is None:
        return False
    fill = _fill_value(metadata.fill_value, data.dtype)
    starts = [s.start // c for s, c in zip(slices, chunks, strict=True)]
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(slices, chunks, strict=True)]
    for coords in itertools.product(*ranges):
        chunk = _chunk(data, coords, starts, chunks, shape, fill)
        path = node / metadata.encode_chunk_key(coords)
        if not config.write_empty_chunks and _all_fill(chunk, fill):
            path.unlink(missing_ok=True)  # zarr's own: an empty chunk is no file
        else:
            _put(path, encode(chunk))
    return True


def _encoder(array: Any, data: np.ndarray) -> Encode | None:
    """What turns a chunk of ``array`` (a C-contiguous ndarray) into its stored bytes, or None when
    this array is not one written here."""
    dtype = np.dtype(array.dtype)
    store = array.store_path.store
    if (
        sys.byteorder != "little"
        or not isinstance(store, LocalStore)
        or store.read_only
        or array.shards is not None
        or dtype.kind not in _PLAIN_KINDS
        or dtype.byteorder == ">"
        or data.dtype != dtype
    ):
        return None
    metadata = array.metadata
    if isinstance(metadata, ArrayV3Metadata):
        return _v3_encoder(metadata, dtype)
    if isinstance(metadata, ArrayV2Metadata):
        return _v2_encoder(metadata)
    return None


def _v3_encoder(metadata: ArrayV3Metadata, dtype: np.dtype) -> Encode | None:
    codecs = list(metadata.codecs)
    if getattr(metadata, "storage_transformers", ()) or not codecs or type(codecs[0]) is not BytesCodec:
        return None
    endian = codecs[0].endian
    if not (endian is not None and endian.value == "little") and not (endian is None and dtype.itemsize == 1):
        return None
    if len(codecs) == 1:
        return _raw
    if len(codecs) != 2 or type(codecs[1]) not in (ZstdCodec, GzipCodec):
        return None
    # zarr's own numcodecs object (the level and checksum it was given); zarr 3.0 has none for gzip
    numcodec = getattr(codecs[1], NUMCODEC_ATTRIBUTE[type(codecs[1])], None)
    if numcodec is None:
        return None
    # the chunk's bytes, as zarr's BytesCodec hands them to the compressor (no copy)
    return lambda chunk: numcodec.encode(chunk.reshape(-1).view(np.uint8))


def _v2_encoder(metadata: ArrayV2Metadata) -> Encode | None:
    compressor = metadata.compressor
    if metadata.filters or metadata.order != "C":
        return None
    if compressor is None:
        return _raw
    if not isinstance(compressor, numcodecs.abc.Codec):
        return None
    # the chunk array itself, as zarr's V2Codec passes it: blosc shuffles by its item size
    return compressor.encode


def _raw(chunk: np.ndarray) -> np.ndarray:
    return chunk  # written through the buffer protocol: its bytes in C order, no copy


def _whole_chunks(slices: tuple[slice, ...], chunks: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether ``slices`` cover whole chunks: starts on chunk boundaries, stops on them or at the edge."""
    return len(slices) == len(chunks) == len(shape) and all(
        s.step in (None, 1)
        and 0 <= s.start < s.stop <= n
        and s.start % c == 0
        and (s.stop % c == 0 or s.stop == n)
        for s, c, n in zip(slices, chunks, shape, strict=True)
    )


def _config(array: Any) -> Any:
    """The array's runtime config (``write_empty_chunks``): ``config`` from zarr 3.1, ``_config``
    before (3.1 deprecates that name, so it is only asked for when the other is missing)."""
    inner = array._async_array
    found = getattr(inner, "config", None)
    return found if found is not None else getattr(inner, "_config", None)


def _fill_value(fill: Any, dtype: np.dtype) -> np.ndarray:
    """The fill value as a 0-d array of ``dtype``; zarr v2's null is the dtype's zero, as zarr reads it."""
    return np.array(0 if fill is None else fill, dtype=dtype)


def _chunk(
    data: np.ndarray,
    coords: tuple[int, ...],
    starts: list[int],
    chunks: tuple[int, ...],
    shape: tuple[int, ...],
    fill: np.ndarray,
) -> np.ndarray:
    """The chunk at ``coords`` from ``data`` (which starts at chunk ``starts``) as a C-contiguous
    array of the full chunk shape: a view where ``data`` has it so, padded with ``fill`` at edges."""
    inside = tuple(
        slice((i - s) * c, min((i + 1) * c, n) - s * c)
        for i, s, c, n in zip(coords, starts, chunks, shape, strict=True)
    )
    part = data[inside]
    if part.shape == chunks:
        return np.ascontiguousarray(part)
    padded = np.full(chunks, fill, dtype=data.dtype)
    padded[tuple(slice(0, n) for n in part.shape)] = part
    return padded


def _all_fill(chunk: np.ndarray, fill: np.ndarray) -> bool:
    """Whether ``chunk`` equals the fill value everywhere, as zarr's ``NDBuffer.all_equal`` decides:
    a NaN fill is matched by every NaN, any other by its exact bits (zarr compares a 0.0 fill's bits,
    so -0.0 is not one; for other values, bits and ``==`` agree)."""
    flat = chunk.reshape(-1)
    test: Callable[[np.ndarray], np.ndarray]
    if flat.dtype.kind == "f" and np.isnan(fill):
        test = np.isnan
    else:
        bits = np.dtype(f"u{flat.dtype.itemsize}")
        flat, fill = flat.view(bits), fill.view(bits)
        test = fill.__eq__
    return all(test(flat[i : i + _SLAB]).all() for i in range(0, flat.size, _SLAB))


def _put(path: Path, encoded: Any) -> None:
    """Write ``encoded`` to ``path`` through a temporary file in its folder, moved into place (a
    reader sees the old chunk or the new one), as zarr's LocalStore does."""
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    try:
        with _create(partial) as file:
            file.write(encoded)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _create(path: Path) -> BinaryIO:
    """``path`` opened for writing, its folder made first when missing (a new row of chunks)."""
    try:
        return path.open("wb")
    except FileNotFoundError:  # asked first: the folder is there for all but a row's first chunk
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb")
