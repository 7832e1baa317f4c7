"""Decompression bombs made small: compressed chunks that decode to far more than they should.

Built from the formats' own bytes, so none of them ever exists decompressed in the test: a zstd
frame of RLE blocks (RFC 8878: each block is 3 header bytes and 1 byte that repeats up to 128 KiB),
and zlib, gzip, bz2 or xz streams written through a compressor fed zeros in pieces.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from typing import Any

ZSTD_MAGIC = (0xFD2FB528).to_bytes(4, "little")
RLE_BLOCK = 128 * 2**10
PIECE = 2**20


def zstd_rle_frame(size: int, *, declare: int | None = None, byte: int = 0) -> bytes:
    """A zstd frame decoding to ``size`` copies of ``byte``, from RLE blocks; its header declares
    ``declare`` as the content size (8 bytes), or no content size at all when None (as a streaming
    writer leaves it: the decoder learns the size only by decoding)."""
    descriptor = 0xC0 if declare is not None else 0x00  # FCS field of 8 bytes, or none; not single-segment
    window = (17 - 10) << 3  # 2**17 = 128 KiB, the largest block
    header = ZSTD_MAGIC + bytes([descriptor, window])
    if declare is not None:
        header += declare.to_bytes(8, "little")
    blocks = bytearray()
    left = size
    while True:
        part = min(left, RLE_BLOCK)
        left -= part
        last = int(left == 0)
        blocks += (last | 1 << 1 | part << 3).to_bytes(3, "little") + bytes([byte])
        if last:
            return header + bytes(blocks)


def stream_of_zeros(kind: str, size: int) -> bytes:
    """``size`` zero bytes compressed as one ``kind`` stream (zlib, gzip, bz2 or xz), written in pieces."""
    makers: dict[str, Callable[[], Any]] = {
        "zlib": lambda: zlib.compressobj(9),
        "gzip": lambda: zlib.compressobj(9, wbits=31),
        "bz2": lambda: bz2.BZ2Compressor(9),
        "lzma": lambda: lzma.LZMACompressor(),
    }
    compressor, out, left = makers[kind](), bytearray(), size
    piece = bytes(min(size, PIECE))
    while left:
        out += compressor.compress(piece[: min(left, PIECE)])
        left -= min(left, PIECE)
    return bytes(out + compressor.flush())
