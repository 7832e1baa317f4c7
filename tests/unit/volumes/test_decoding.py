"""Bounded decoding: every compressor decodes a good chunk as numcodecs does, and refuses one that
decodes past its nominal size before it gets there."""

from __future__ import annotations

import numcodecs
import numpy as np
import pytest

from tests.unit.volumes.bombs import stream_of_zeros, zstd_rle_frame
from volumes.decoding import ZSTD_BLOCK_MAX, decode_bounded, zstd_decoded_bound
from volumes.errors import OversizedChunkError, VolumeFormatError

NOMINAL = 10_000
DATA = (np.random.default_rng(0).integers(0, 8, NOMINAL)).astype(np.uint8).tobytes()
CODECS = [
    numcodecs.Zstd(level=3),
    numcodecs.Zlib(level=5),
    numcodecs.GZip(level=5),
    numcodecs.BZ2(level=5),
    numcodecs.LZMA(),
    numcodecs.LZMA(format=2),  # lzma.FORMAT_ALONE
    numcodecs.Blosc(cname="zstd", shuffle=numcodecs.Blosc.SHUFFLE),
    numcodecs.LZ4(),
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: str(c.get_config()))
def test_a_good_chunk_decodes_as_numcodecs_does_at_exactly_its_size(codec: numcodecs.abc.Codec) -> None:
    encoded = codec.encode(DATA)
    out = decode_bounded(codec, encoded, NOMINAL)
    assert out.tobytes() == DATA == bytes(codec.decode(encoded))
    with pytest.raises(OversizedChunkError) as caught:
        decode_bounded(codec, encoded, NOMINAL - 1)
    assert caught.value.limit == NOMINAL - 1 and isinstance(caught.value, VolumeFormatError)


@pytest.mark.parametrize("kind", ["zlib", "gzip", "bz2", "lzma"])
def test_a_stream_that_inflates_100_times_is_refused(kind: str) -> None:
    codec = numcodecs.get_codec({"id": kind})
    with pytest.raises(OversizedChunkError, match=f"is {kind} data that goes on decoding past 10,000 bytes"):
        decode_bounded(codec, stream_of_zeros(kind, 100 * NOMINAL), NOMINAL)


def test_zstd_frames_are_bounded_from_their_headers() -> None:
    # the crafted frames are real zstd: numcodecs decodes them (streaming when no size is declared)
    for declare in (None, 300_000):
        frame = zstd_rle_frame(300_000, declare=declare, byte=7)
        assert bytes(numcodecs.Zstd().decode(frame)) == b"\x07" * 300_000
        assert zstd_decoded_bound(frame) == (300_000, declare is not None)
    real = numcodecs.Zstd().encode(DATA)
    assert zstd_decoded_bound(real) == (NOMINAL, True)  # numcodecs declares the size
    assert zstd_decoded_bound(real + real) == (2 * NOMINAL, True)  # frames add up


def test_a_zstd_bomb_is_refused_before_decoding() -> None:
    declared = zstd_rle_frame(1000, declare=13 * 2**30)  # 13 GiB claimed in 34 bytes
    with pytest.raises(OversizedChunkError, match="declares 13,958,643,712 bytes"):
        decode_bounded(numcodecs.Zstd(), declared, NOMINAL)
    undeclared = zstd_rle_frame(2**31)  # 2 GiB from 64 KiB of RLE blocks, no size in the header
    assert len(undeclared) < 70_000
    with pytest.raises(OversizedChunkError, match="blocks can decode to 2,147,483,648 bytes"):
        decode_bounded(numcodecs.Zstd(), undeclared, NOMINAL)
    # without a declared size, one part-filled block of slack: a streamed small chunk still decodes
    assert len(decode_bounded(numcodecs.Zstd(), zstd_rle_frame(NOMINAL), NOMINAL)) == NOMINAL
    with pytest.raises(OversizedChunkError):
        decode_bounded(numcodecs.Zstd(), zstd_rle_frame(NOMINAL + ZSTD_BLOCK_MAX + 1), NOMINAL)


def test_blosc_and_lz4_headers_declaring_too_much_are_refused_unread() -> None:
    blosc = bytearray(numcodecs.Blosc().encode(DATA))
    blosc[4:8] = (2**40 - 1 & 0xFFFFFFFF).to_bytes(4, "little")  # nbytes in blosc's header
    with pytest.raises(OversizedChunkError, match="blosc data whose header declares 4,294,967,295 bytes"):
        decode_bounded(numcodecs.Blosc(), bytes(blosc), NOMINAL)
    lz4 = bytearray(numcodecs.LZ4().encode(DATA))
    lz4[0:4] = (2**31).to_bytes(4, "little")
    with pytest.raises(OversizedChunkError, match="lz4 data whose header declares 2,147,483,648 bytes"):
        decode_bounded(numcodecs.LZ4(), bytes(lz4), NOMINAL)


def test_a_truncated_stream_is_an_error_not_a_short_chunk() -> None:
    encoded = numcodecs.Zlib().encode(DATA)
    with pytest.raises(ValueError, match="ends before its stream does") as caught:
        decode_bounded(numcodecs.Zlib(), encoded[: len(encoded) // 2], NOMINAL)
    assert not isinstance(caught.value, OversizedChunkError)
    with pytest.raises(ValueError, match="zlib data is damaged"):
        decode_bounded(numcodecs.Zlib(), b"not zlib at all", NOMINAL)


def test_concatenated_gzip_members_decode_like_numcodecs() -> None:
    codec = numcodecs.GZip()
    two = bytes(codec.encode(DATA[:4000])) + bytes(codec.encode(DATA[4000:]))
    assert decode_bounded(codec, two, NOMINAL).tobytes() == DATA == bytes(codec.decode(two))


def test_the_error_pickles_with_its_place() -> None:
    import pickle

    err = OversizedChunkError(100, "decodes to 200 bytes").located(
        where="a.zarr dataset 'raw'", chunk="raw/c/0/0"
    )
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.chunk == "raw/c/0/0" and copy.limit == 100
    assert str(err).startswith(
        "a.zarr dataset 'raw' chunk 'raw/c/0/0' decodes to 200 bytes; a chunk of it holds 100 bytes"
    )
