"""zarr-python reading input chunks through :mod:`volumes.decoding`: no chunk decodes past its size.

An input array opened for reading gets its codec pipeline rebuilt from the same codecs, each
decompressor wrapped so that it stops at the chunk's nominal size (chunk shape x itemsize, from the
chunk spec zarr hands every codec): zarr v3 bytes-to-bytes codecs (zstd, gzip, blosc and numcodecs'
``numcodecs.*``), inside a sharding codec too (the inner chunks and the shard index), and zarr v2's
compressor and filters. The pipeline reads chunk by chunk so that a refused chunk is named by its
key. Only inputs are wrapped: outputs are written (and read back) by us.

zarr builds an array's pipeline once, in ``AsyncArray.__init__``; it is replaced on that value as
zarr itself sets it (``object.__setattr__`` on the frozen dataclass). Tests on real v2, v3 and
sharded arrays fail if a zarr release changes this.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeGuard

import numcodecs
import numpy as np
import zarr
from zarr.abc.codec import BytesBytesCodec, Codec
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.codecs._v2 import V2Codec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.codec_pipeline import BatchedCodecPipeline, fill_value_or_default
from zarr.core.common import concurrent_map
from zarr.core.config import config

from volumes.decoding import check_decoded, decode_bounded
from volumes.errors import OversizedChunkError

# The numcodecs codec inside zarr's own compressors, by the attribute zarr keeps it in.
NUMCODEC_ATTRIBUTE: dict[type, str] = {
    ZstdCodec: "_zstd_codec",
    GzipCodec: "_gzip_codec",
    BloscCodec: "_blosc_codec",
}
# What a shard may hold beyond its voxels: 16 index bytes per inner chunk, and compressor framing.
SHARD_INDEX_BYTES_PER_CHUNK = 16
SHARD_SLACK_BYTES = 2**16
# A chunk of at most this many bytes (decoded) is decoded and encoded on zarr's event-loop thread
# instead of on a worker thread: the hand-off there and back (two wake-ups, the GIL taken twice)
# costs more than zstd or blosc takes over a few hundred kilobytes (about 0.1 ms), and in a process
# that also runs a Dask scheduler, a worker and the driver, each wake-up may wait for the GIL.
# Larger chunks still go to zarr's threads, so that a block's chunks decode in parallel (issue 17).
INLINE_CODEC_BYTES = 2**18
# zarr's compressors with a synchronous encode and decode (what they run on a thread otherwise).
_SYNC_CODECS = (ZstdCodec, BloscCodec, GzipCodec)


def bound_decoding(array: zarr.Array) -> None:
    """Make every chunk ``array`` reads decode to at most its nominal size, or raise
    OversizedChunkError naming the chunk's key (the caller adds the array's name)."""
    inner = array._async_array  # the field itself: zarr 3.0 has no ``async_array`` property yet
    current = inner.codec_pipeline
    if isinstance(current, BoundedPipeline) or not isinstance(current, BatchedCodecPipeline):
        return
    pipeline = BoundedPipeline.from_codecs(_bounded(list(current)), batch_size=current.batch_size)
    object.__setattr__(inner, "codec_pipeline", pipeline)


def nominal_bytes(spec: ArraySpec) -> int:
    """What the chunk ``spec`` describes holds when decoded: shape x itemsize."""
    dtype: Any = spec.dtype  # zarr 3.1's own dtype type, or (zarr 3.0) a numpy dtype
    native = dtype.to_native_dtype() if hasattr(dtype, "to_native_dtype") else np.dtype(dtype)
    return math.prod(spec.shape) * native.itemsize


def _bounded(codecs: Iterable[Codec], shard: tuple[int, ...] | None = None) -> list[Codec]:
    out: list[Codec] = []
    for codec in codecs:
        if isinstance(codec, ShardingCodec):
            inner, index = _bounded(codec.codecs), _bounded(codec.index_codecs)
            location = codec.index_location
            out.append(
                ShardingCodec(
                    chunk_shape=codec.chunk_shape, codecs=inner, index_codecs=index, index_location=location
                )
            )
            shard = codec.chunk_shape
        elif isinstance(codec, V2Codec):
            out.append(BoundedV2Codec(filters=codec.filters, compressor=codec.compressor))
        elif isinstance(codec, BytesBytesCodec) and not isinstance(codec, Crc32cCodec):
            out.append(BoundedBytesCodec(codec, shard))
        else:  # array-to-array codecs keep the size; crc32c only strips its 4 bytes
            out.append(codec)
    return out


@dataclass(frozen=True)
class BoundedBytesCodec(BytesBytesCodec):
    """A bytes-to-bytes codec of an input whose decoding stops at the chunk's nominal size.

    ``inner_chunk``: the sharding codec's inner chunk shape when this codec compresses whole shards
    (so it may also see the shard's index), else None.
    """

    inner: BytesBytesCodec
    inner_chunk: tuple[int, ...] | None = None
    is_fixed_size = False

    def to_dict(self) -> dict[str, Any]:
        return self.inner.to_dict()

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> BoundedBytesCodec:
        return replace(self, inner=self.inner.evolve_from_array_spec(array_spec))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        return self.inner.compute_encoded_size(input_byte_length, chunk_spec)

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await self.inner._encode_single(chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        limit = self._limit(chunk_spec)
        numcodec = _numcodec(self.inner)
        if numcodec is None:  # a codec we do not know: decoded as it is, measured afterwards
            out = await self.inner._decode_single(chunk_bytes, chunk_spec)
            check_decoded(out.as_numpy_array().nbytes, limit)
            return out
        data = chunk_bytes.as_numpy_array()
        if limit <= INLINE_CODEC_BYTES:  # small: here, on the loop's thread (see INLINE_CODEC_BYTES)
            decoded = decode_bounded(numcodec, data, limit)
        else:
            decoded = await asyncio.to_thread(decode_bounded, numcodec, data, limit)
        return chunk_spec.prototype.buffer.from_array_like(decoded.view("B").reshape(-1))

    def _limit(self, spec: ArraySpec) -> int:
        nominal = nominal_bytes(spec)
        if self.inner_chunk is None:
            return nominal
        inner = math.prod(-(-s // c) for s, c in zip(spec.shape, self.inner_chunk, strict=True))
        return nominal + nominal // 32 + SHARD_INDEX_BYTES_PER_CHUNK * inner + SHARD_SLACK_BYTES


def _numcodec(codec: BytesBytesCodec) -> Any:
    """The numcodecs codec that decodes ``codec``'s chunks, or None."""
    found = getattr(codec, NUMCODEC_ATTRIBUTE.get(type(codec), "_codec"), None)
    if found is None and isinstance(codec, GzipCodec):  # zarr 3.0 makes a GZip on each call
        return numcodecs.GZip()  # the level only matters when writing
    return found


class BoundedV2Codec(V2Codec):
    """zarr v2's compressor and filters, each stopped at the chunk's nominal size."""

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        limit = nominal_bytes(chunk_spec)
        if limit <= INLINE_CODEC_BYTES:  # small: here, on the loop's thread (see INLINE_CODEC_BYTES)
            decoded = self._decompress(chunk_bytes.as_numpy_array(), limit)
        else:
            decoded = await asyncio.to_thread(self._decompress, chunk_bytes.as_numpy_array(), limit)
        plain = chunk_spec.prototype.buffer.from_array_like(decoded.view("B").reshape(-1))
        # zarr views the bytes as the chunk (dtype, order, shape); nothing is left to decode.
        return await V2Codec(filters=None, compressor=None)._decode_single(plain, chunk_spec)

    def _decompress(self, data: np.ndarray, limit: int) -> np.ndarray:
        out = data
        if self.compressor is not None:
            out = decode_bounded(self.compressor, data, limit)
        for codec in reversed(self.filters or ()):
            out = decode_bounded(codec, out, limit)  # a filter may be a compressor too
        check_decoded(out.nbytes, limit)  # an uncompressed chunk longer than it should be
        return out


class BoundedPipeline(BatchedCodecPipeline):
    """zarr's pipeline, reading chunk by chunk so that an oversized one is named by its key."""

    async def read_batch(
        self,
        batch_info: Iterable[tuple[Any, ArraySpec, Any, Any, bool]],
        out: NDBuffer,
        drop_axes: tuple[int, ...] = (),
    ) -> None:
        batch = list(batch_info)
        jobs = [(getter, spec, selection) for getter, spec, selection, *_ in batch]
        arrays = await concurrent_map(jobs, self._read_chunk, config.get("async.concurrency"))
        for array, (_, spec, selection, out_selection, _) in zip(arrays, batch, strict=True):
            if array is None:
                out[out_selection] = fill_value_or_default(spec)
                continue
            part = array if self.supports_partial_decode else array[selection]
            out[out_selection] = part.squeeze(axis=drop_axes) if drop_axes else part

    async def _read_chunk(self, getter: Any, spec: ArraySpec, selection: Any) -> NDBuffer | None:
        try:
            if self.supports_partial_decode:
                (array,) = await self.decode_partial_batch([(getter, selection, spec)])
            else:
                data = await getter.get(prototype=spec.prototype)
                (array,) = await self.decode_batch([(data, spec)])
        except OversizedChunkError as err:
            raise err.located(chunk=str(getattr(getter, "path", getter))) from None
        return array


def inline_small_chunks(array: zarr.Array) -> None:
    """Make ``array`` (an output we write, zarr v3) encode and decode chunks of at most
    :data:`INLINE_CODEC_BYTES` on zarr's event-loop thread, as inputs do (:class:`BoundedBytesCodec`):
    its compressors (zstd, blosc, gzip; not inside a sharding codec) are wrapped, the bytes they
    write are the same. Replaced on the pipeline as :func:`bound_decoding` does."""
    inner = array._async_array
    current = inner.codec_pipeline
    if type(current) is not BatchedCodecPipeline:
        return
    codecs = list(current)
    if not any(_has_sync_methods(c) for c in codecs):
        return
    wrapped = [InlineSmallCodec(c) if _has_sync_methods(c) else c for c in codecs]
    pipeline = BatchedCodecPipeline.from_codecs(wrapped, batch_size=current.batch_size)
    object.__setattr__(inner, "codec_pipeline", pipeline)


def _has_sync_methods(codec: Any) -> TypeGuard[BytesBytesCodec]:
    """Whether ``codec`` is a compressor :class:`InlineSmallCodec` can run in place: zarr's own
    zstd, blosc and gzip from the zarr release that gave them ``_encode_sync``/``_decode_sync``
    (3.0.8, the floor, has neither: there they keep zarr's thread hand-off)."""
    return isinstance(codec, _SYNC_CODECS) and all(
        callable(getattr(codec, name, None)) for name in ("_encode_sync", "_decode_sync")
    )


@dataclass(frozen=True)
class InlineSmallCodec(BytesBytesCodec):
    """One of zarr's compressors, run on the calling (event-loop) thread for small chunks."""

    inner: BytesBytesCodec
    is_fixed_size = False

    def to_dict(self) -> dict[str, Any]:
        return self.inner.to_dict()

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> InlineSmallCodec:
        return replace(self, inner=self.inner.evolve_from_array_spec(array_spec))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        return self.inner.compute_encoded_size(input_byte_length, chunk_spec)

    async def _encode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer | None:
        if nominal_bytes(chunk_spec) <= INLINE_CODEC_BYTES:
            return self.inner._encode_sync(chunk_bytes, chunk_spec)  # type: ignore[attr-defined,no-any-return]
        return await self.inner._encode_single(chunk_bytes, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> Buffer:
        if nominal_bytes(chunk_spec) <= INLINE_CODEC_BYTES:
            return self.inner._decode_sync(chunk_bytes, chunk_spec)  # type: ignore[attr-defined,no-any-return]
        return await self.inner._decode_single(chunk_bytes, chunk_spec)
