"""Input chunks that decode past their nominal size (chunk shape x itemsize) are refused with the
array and the chunk named, in every format zarr-python or tensorstore reads for us; their
neighbours still read. A real-size bomb is read in a child process whose address space is capped:
it fails fast, and its peak memory stays near where it started."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from tests.unit.volumes.bombs import stream_of_zeros, zstd_rle_frame
from volumes.box import Box
from volumes.errors import OversizedChunkError
from volumes.open import open_volume

SHAPE, CHUNKS = (8, 32, 32), (4, 16, 16)
NOMINAL = 4 * 16 * 16 * 2  # uint16
FIRST, OTHER = Box((0, 0, 0), CHUNKS), Box((4, 16, 16), CHUNKS)


def _array(path: Path, name: str, zarr_format: int, **codecs: object) -> np.ndarray:
    group = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)  # type: ignore[arg-type]
    array = group.create_array(name, shape=SHAPE, chunks=CHUNKS, dtype="uint16", **codecs)  # type: ignore[arg-type]
    data = np.arange(np.prod(SHAPE), dtype="uint16").reshape(SHAPE)
    array[:] = data
    return data


def _refused(path: Path, name: str, chunk: str, says: str) -> None:
    volume = open_volume(path, name)
    with pytest.raises(OversizedChunkError) as caught:
        volume.read(FIRST)
    text = str(caught.value)
    assert text.startswith(f"{path} dataset {name!r} chunk {chunk!r} "), text
    assert says in text and f"holds {caught.value.limit:,} bytes" in text, text


V3 = {
    "zstd": ({"compressors": ZstdCodec()}, zstd_rle_frame(100 * NOMINAL, declare=100 * NOMINAL), "declares"),
    "zstd_streamed": (
        {"compressors": ZstdCodec()},
        zstd_rle_frame(2**30),
        "blocks can decode to 1,073,741,824",
    ),
    "gzip": ({"compressors": GzipCodec()}, stream_of_zeros("gzip", 100 * NOMINAL), "goes on decoding past"),
}


@pytest.fixture(params=["loop", "threads"])
def decode_on(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Small chunks decode on zarr's loop thread, others on its threads: both are bounded."""
    if request.param == "threads":
        from volumes.backends import zarr_codecs

        monkeypatch.setattr(zarr_codecs, "INLINE_CODEC_BYTES", 0)
    return str(request.param)


@pytest.mark.parametrize("name", V3)
def test_zarr3_bomb_chunk_is_refused_naming_it(tmp_path: Path, name: str, decode_on: str) -> None:
    codecs, bomb, says = V3[name]
    data = _array(tmp_path / "in.zarr", name, 3, **codecs)
    (tmp_path / "in.zarr" / name / "c/0/0/0").write_bytes(bomb)
    _refused(tmp_path / "in.zarr", name, f"{name}/c/0/0/0", says)
    assert (open_volume(tmp_path / "in.zarr", name).read(OTHER) == data[OTHER.slices()]).all()


def test_zarr3_blosc_header_claiming_too_much_is_refused(tmp_path: Path) -> None:
    _array(tmp_path / "in.zarr", "blosc", 3, compressors=BloscCodec())
    chunk = tmp_path / "in.zarr/blosc/c/0/0/0"
    header = bytearray(chunk.read_bytes())
    header[4:8] = (100 * NOMINAL).to_bytes(4, "little")
    chunk.write_bytes(bytes(header))
    _refused(tmp_path / "in.zarr", "blosc", "blosc/c/0/0/0", "header declares 204,800 bytes")


def test_sharded_zarr3_inner_chunk_bomb_names_the_shard(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="a", zarr_format=3)
    array = group.create_array(
        "s", shape=SHAPE, chunks=(2, 8, 8), shards=CHUNKS, dtype="uint16", compressors=ZstdCodec()
    )
    array[:] = 5
    shard = tmp_path / "in.zarr/s/c/0/0/0"
    # the shard index (at the end: 16 bytes per inner chunk, then a crc32c) says where each chunk is;
    # a bomb appended and the index pointed at it for the first inner chunk
    raw, bomb = shard.read_bytes(), zstd_rle_frame(100 * NOMINAL, declare=100 * NOMINAL)
    n = 2 * 2 * 2
    index = np.frombuffer(raw[-(16 * n + 4) : -4], "<u8").reshape(n, 2).copy()
    body = raw[: -(16 * n + 4)]
    index[0] = (len(body), len(bomb))
    import google_crc32c  # type: ignore[import-untyped]

    index_bytes = index.tobytes()
    checksum = google_crc32c.value(index_bytes).to_bytes(4, "little")
    shard.write_bytes(body + bomb + index_bytes + checksum)
    _refused(tmp_path / "in.zarr", "s", "s/c/0/0/0", "declares")
    assert (open_volume(tmp_path / "in.zarr", "s").read(OTHER) == 5).all()


V2 = {
    "zstd": (
        {"compressors": numcodecs.Zstd()},
        zstd_rle_frame(100 * NOMINAL, declare=100 * NOMINAL),
        "declares",
    ),
    "zlib": (
        {"compressors": numcodecs.Zlib()},
        stream_of_zeros("zlib", 100 * NOMINAL),
        "goes on decoding past",
    ),
    "lzma": (
        {"compressors": numcodecs.LZMA()},
        stream_of_zeros("lzma", 100 * NOMINAL),
        "goes on decoding past",
    ),
    # a compressor used as a filter is bounded too
    "zlib_filter": (
        {"compressors": None, "filters": [numcodecs.Zlib()]},
        stream_of_zeros("zlib", 100 * NOMINAL),
        "goes on decoding past",
    ),
    "raw": ({"compressors": None}, bytes(2 * NOMINAL), f"decodes to {2 * NOMINAL:,} bytes"),
}


@pytest.mark.parametrize("name", V2)
def test_zarr2_bomb_chunk_is_refused_naming_it(tmp_path: Path, name: str, decode_on: str) -> None:
    codecs, bomb, says = V2[name]
    data = _array(tmp_path / "in.zarr", name, 2, **codecs)
    (tmp_path / "in.zarr" / name / "0.0.0").write_bytes(bomb)
    _refused(tmp_path / "in.zarr", name, f"{name}/0.0.0", says)
    assert (open_volume(tmp_path / "in.zarr", name).read(OTHER) == data[OTHER.slices()]).all()


def test_outputs_we_write_are_not_wrapped(tmp_path: Path) -> None:
    """Only inputs (mode "r") pay for the bound; ours are read back as zarr reads them."""
    _array(tmp_path / "in.zarr", "a", 3, compressors=ZstdCodec())
    from volumes.backends.zarr_codecs import BoundedPipeline

    pipelines = {
        mode: type(open_volume(tmp_path / "in.zarr", "a", mode)._handle().async_array.codec_pipeline)  # type: ignore[attr-defined]
        for mode in ("r", "r+")
    }
    assert pipelines["r"] is BoundedPipeline and pipelines["r+"] is not BoundedPipeline


def _n5(path: Path, compression: str) -> None:
    """An N5 dataset (uint16, x first on disk) with one block, 0/0/0, written as N5 lays it out."""
    (path / "raw").mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    meta = {"dimensions": SHAPE[::-1], "blockSize": CHUNKS[::-1], "dataType": "uint16"}
    (path / "raw/attributes.json").write_text(json.dumps({**meta, "compression": {"type": compression}}))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_n5_bomb_block_is_refused_naming_it(tmp_path: Path, compression: str) -> None:
    path = tmp_path / "in.n5"
    _n5(path, compression)
    header = struct.pack(">HH3I", 0, 3, *CHUNKS[::-1])  # mode 0, 3 dimensions, the block's size
    body = stream_of_zeros("gzip", 100 * NOMINAL) if compression == "gzip" else zstd_rle_frame(100 * NOMINAL)
    (path / "raw/0/0").mkdir(parents=True)
    (path / "raw/0/0/0").write_bytes(header + body)
    _refused(path, "raw", "0/0/0", "decodes past the elements its header declares")
    # a header that declares a block larger than blockSize
    (path / "raw/0/0/0").write_bytes(struct.pack(">HH3I", 0, 3, 16 * 100, 16, 4) + body)
    _refused(path, "raw", "0/0/0", "declares a block over blockSize")
    assert (open_volume(path, "raw").read(OTHER) == 0).all()  # absent blocks read 0


CHILD = textwrap.dedent(
    """
    import resource, sys
    from volumes.box import Box
    from volumes.open import open_volume
    from volumes.errors import OversizedChunkError
    volume = open_volume(sys.argv[1], "raw")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the address space is capped a little above what this process holds: a 4 GiB chunk cannot fit
    vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 768 * 2**20, resource.RLIM_INFINITY))
    try:
        volume.read(Box((0, 0, 0), volume.chunks))
        print("READ")
    except OversizedChunkError as err:
        print("REFUSED", err)
    print("GROWTH_KIB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """
)


@pytest.mark.parametrize("declare", [True, False], ids=["declared", "streamed"])
def test_a_real_size_zstd_bomb_fails_fast_in_bounded_memory(tmp_path: Path, declare: bool) -> None:
    """A 128 KiB chunk of a (64, 64, 64) uint8 array holding a 4 GiB zstd frame (64 KiB on disk)."""
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=3)
    group.create_array(
        "raw", shape=(128, 64, 64), chunks=(64, 64, 64), dtype="uint8", compressors=ZstdCodec()
    )
    size = 4 * 2**30
    (tmp_path / "in.zarr/raw/c/0/0").mkdir(parents=True)
    (tmp_path / "in.zarr/raw/c/0/0/0").write_bytes(zstd_rle_frame(size, declare=size if declare else None))
    env = {"PYTHONPATH": str(Path(__file__).parents[4]), "MALLOC_ARENA_MAX": "2", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "in.zarr")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "REFUSED" in proc.stdout and "chunk 'raw/c/0/0/0'" in proc.stdout, proc.stdout
    growth_kib = int(proc.stdout.split("GROWTH_KIB")[1])
    assert growth_kib < 64 * 1024, proc.stdout


def _hdf5(path: Path, **filters: object) -> np.ndarray:
    import h5py

    data = np.arange(np.prod(SHAPE), dtype="uint16").reshape(SHAPE)
    with h5py.File(path, "w") as f:
        f.create_dataset("raw", data=data, chunks=CHUNKS, **filters)  # type: ignore[arg-type]
        f.create_dataset("sparse", shape=SHAPE, chunks=CHUNKS, dtype="uint16", compression="gzip")
    return data


def test_hdf5_deflate_bomb_chunk_is_refused_naming_it(tmp_path: Path) -> None:
    import h5py

    good, bomb, big = (tmp_path / f"{name}.h5" for name in ("good", "bomb", "big"))
    for path in (good, bomb, big):
        data = _hdf5(path, compression="gzip", shuffle=True, fletcher32=True)
    with h5py.File(bomb, "r+") as f:  # h5py alone reads this as zeros, silently, taking 100x the chunk
        f["raw"].id.write_direct_chunk((0, 0, 0), stream_of_zeros("zlib", 100 * NOMINAL) + bytes(4), 0)
    with h5py.File(big, "r+") as f:  # a stored chunk far larger than any compression of it
        f["raw"].id.write_direct_chunk((0, 0, 0), bytes(8 * NOMINAL), 0)
    # shuffled, checksummed and never-written chunks read as h5py reads them
    assert (open_volume(good, "raw").read(Box.of_shape(SHAPE)) == data).all()
    assert (open_volume(good, "sparse").read(Box.of_shape(SHAPE)) == 0).all()
    _refused(bomb, "raw", "0/0/0", "is zlib data that goes on decoding past")
    assert (open_volume(bomb, "raw").read(OTHER) == data[OTHER.slices()]).all()
    _refused(big, "raw", "0/0/0", f"stores {8 * NOMINAL:,} bytes")
