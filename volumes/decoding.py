"""Decompressing a stored chunk with a bound on what it may become: its nominal size.

An input chunk is bytes someone else wrote. A 64 KB zstd frame may claim 13 GB, and a 2 MB zlib
stream of zeros inflates to 2 GB; decompressors allocate what they are told or grow until the stream
ends. Every chunk of a volume has a nominal size (chunk shape x itemsize), known before it is read,
so each compressor here is made to stop there, at the cost of reading a header:

- zstd: the frame headers and block headers are walked (a few bytes per 128 KiB block): a declared
  content size, or the most the blocks can produce, past the bound is refused before decoding;
- zlib, gzip, bz2, lzma: decompressed in one stream with ``max_length`` = bound + 1;
- blosc, lz4: the uncompressed size in their header is compared before decoding.

A codec not listed (a filter such as delta or shuffle, or a rare compressor) is decoded as is and
its output measured afterwards; filters never grow their input, compressors should be added here.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from numcodecs.compat import ensure_contiguous_ndarray

from volumes.errors import OversizedChunkError

# A zstd frame without a declared content size may end in one part-filled block: allowed over the bound.
ZSTD_BLOCK_MAX = 128 * 2**10
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50

Bytes = bytes | bytearray | memoryview


def decode_bounded(codec: Any, data: Bytes | np.ndarray, limit: int) -> np.ndarray:
    """``codec.decode(data)`` (a numcodecs codec), as a contiguous array, unless the result would
    exceed ``limit`` bytes; then OversizedChunkError, with at most about ``limit`` bytes allocated."""
    buffer: Any = np.ascontiguousarray(data) if isinstance(data, np.ndarray) else data
    view = memoryview(buffer).cast("B")
    decode = _DECODERS.get(getattr(codec, "codec_id", None) or "")
    out = ensure_contiguous_ndarray(decode(codec, view, limit) if decode is not None else codec.decode(view))
    check_decoded(out.nbytes, limit)
    return out


def check_decoded(nbytes: int, limit: int) -> None:
    """OversizedChunkError when a chunk decoded to ``nbytes`` is over its ``limit``."""
    if nbytes > limit:
        raise OversizedChunkError(limit, f"decodes to {nbytes:,} bytes")


def zstd_decoded_bound(data: Bytes) -> tuple[int, bool]:
    """The most the zstd frames in ``data`` can decode to, from their headers, and whether that is
    exact: a frame's declared content size where it has one, else the sum over its blocks (raw and
    RLE blocks exactly, a compressed block at most min(window, 128 KiB)). Skippable frames count 0.
    Headers that are not zstd's, or cut short: ValueError."""
    view, pos, total, exact = memoryview(data).cast("B"), 0, 0, True
    while pos < len(view):
        magic = _le(view, pos, 4)
        if magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
            pos += 8 + _le(view, pos + 4, 4)
            continue
        if magic != _ZSTD_MAGIC:
            raise ValueError(f"no zstd frame at byte {pos}")
        declared, blocks, pos = _zstd_frame(view, pos + 4)
        total += blocks if declared is None else declared
        exact = exact and declared is not None
    return total, exact


def _zstd_frame(view: memoryview, pos: int) -> tuple[int | None, int, int]:
    """The frame whose header starts at ``pos`` (after its magic): (its declared content size or
    None, the most its blocks can decode to, where the next frame starts)."""
    descriptor = _le(view, pos, 1)
    fcs_flag, single, checksum, dict_flag = (
        descriptor >> 6,
        descriptor >> 5 & 1,
        descriptor >> 2 & 1,
        descriptor & 3,
    )
    pos += 1
    window = 0
    if not single:
        exponent, mantissa = _le(view, pos, 1) >> 3, _le(view, pos, 1) & 7
        base = 1 << (10 + exponent)
        window, pos = base + base // 8 * mantissa, pos + 1
    pos += (0, 1, 2, 4)[dict_flag]
    fcs_bytes = (1 if single else 0, 2, 4, 8)[fcs_flag]
    content = _le(view, pos, fcs_bytes) + (256 if fcs_bytes == 2 else 0) if fcs_bytes else None
    pos += fcs_bytes
    block_max = min(window if not single else content or 0, ZSTD_BLOCK_MAX)
    produced = 0
    while True:
        header = _le(view, pos, 3)
        last, kind, size = header & 1, header >> 1 & 3, header >> 3
        if kind == 3:
            raise ValueError(f"reserved zstd block type at byte {pos}")
        produced += block_max if kind == 2 else size
        pos += 3 + (1 if kind == 1 else size)
        if last:
            break
    return content, produced, pos + 4 * checksum


def _le(view: memoryview, pos: int, n: int) -> int:
    if pos + n > len(view):
        raise ValueError(f"zstd data ends at byte {len(view)}, inside a header at byte {pos}")
    return int.from_bytes(view[pos : pos + n], "little")


def _zstd(codec: Any, data: memoryview, limit: int) -> Any:
    try:
        bound, exact = zstd_decoded_bound(data)
    except ValueError:
        return codec.decode(data)  # not frames we can walk: zstd itself says what is wrong
    if exact and bound > limit:
        raise OversizedChunkError(limit, f"is zstd data that declares {bound:,} bytes")
    if bound > limit + ZSTD_BLOCK_MAX:
        raise OversizedChunkError(limit, f"is zstd data whose blocks can decode to {bound:,} bytes")
    return codec.decode(data)


def _stream(make: Callable[[], Any], data: memoryview, limit: int, what: str, *, multi: bool = True) -> bytes:
    """The stream in ``data`` decompressed (and, when ``multi``, the ones concatenated after it, as
    gzip members and bz2 or xz streams may be), ``limit`` + 1 bytes at most in all."""
    out, rest = bytearray(), data
    while len(rest):
        stream = make()
        try:
            out += stream.decompress(rest, limit + 1 - len(out))
        except (zlib.error, OSError, EOFError) as err:  # lzma and bz2 raise OSError (LZMAError)
            raise ValueError(f"{what} data is damaged: {err}") from None
        if len(out) > limit:
            raise OversizedChunkError(limit, f"is {what} data that goes on decoding past {limit:,} bytes")
        if not stream.eof:
            raise ValueError(f"{what} data ends before its stream does (truncated or damaged)")
        rest = memoryview(stream.unused_data) if multi else memoryview(b"")
    return bytes(out)


def _zlib(codec: Any, data: memoryview, limit: int) -> bytes:
    return _stream(zlib.decompressobj, data, limit, "zlib", multi=False)


def _gzip(codec: Any, data: memoryview, limit: int) -> bytes:
    return _stream(lambda: zlib.decompressobj(wbits=31), data, limit, "gzip")


def _bz2(codec: Any, data: memoryview, limit: int) -> bytes:
    return _stream(bz2.BZ2Decompressor, data, limit, "bz2")


def _lzma(codec: Any, data: memoryview, limit: int) -> bytes:
    raw = codec.format == lzma.FORMAT_RAW

    def make() -> lzma.LZMADecompressor:
        return lzma.LZMADecompressor(format=codec.format, filters=codec.filters if raw else None)

    return _stream(make, data, limit, "lzma", multi=not raw)


def _header_sized(offset: int, what: str) -> Callable[[Any, memoryview, int], Any]:
    """A decoder for formats whose header holds the uncompressed size (4 bytes, little-endian)."""

    def decode(codec: Any, data: memoryview, limit: int) -> Any:
        if len(data) >= offset + 4:
            size = int.from_bytes(data[offset : offset + 4], "little")
            if size > limit:
                raise OversizedChunkError(limit, f"is {what} data whose header declares {size:,} bytes")
        return codec.decode(data)

    return decode


_DECODERS: dict[str, Callable[[Any, memoryview, int], Any]] = {
    "zstd": _zstd,
    "zlib": _zlib,
    "gzip": _gzip,
    "bz2": _bz2,
    "lzma": _lzma,
    "blosc": _header_sized(4, "blosc"),
    "lz4": _header_sized(0, "lz4"),
}
