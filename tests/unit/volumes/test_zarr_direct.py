"""Whole chunks of local zarr arrays written straight to their files (``volumes.backends.zarr_direct``):
the files are those zarr writes itself (compared chunk file by chunk file with a twin array written by
zarr-python), and every write the fast path declines goes through zarr with the same result."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, TransposeCodec, ZstdCodec

from tests.s3_helpers import s3_server
from volumes.backends import zarr_direct
from volumes.box import Box
from volumes.open import open_volume
from volumes.urls import filesystem, zarr_store

SHAPE, CHUNKS = (10, 20, 36), (4, 8, 16)  # the last chunk of every axis is partial
METADATA = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bool]]:
    """What each write's fast path answered: True when it wrote the chunks itself (the real one runs)."""
    seen: list[bool] = []
    real = zarr_direct.write_chunks

    def spy(*args: Any) -> bool:
        seen.append(real(*args))
        return seen[-1]

    monkeypatch.setattr(zarr_direct, "write_chunks", spy)
    yield seen


def _pair(tmp_path: Path, zarr_format: int, dtype: str, **kw: Any) -> tuple[Path, Path]:
    """The same empty array twice: ``fast.zarr`` (written through a volume), ``twin.zarr`` (by zarr)."""
    paths = tmp_path / "fast.zarr", tmp_path / "twin.zarr"
    for path in paths:
        group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
        group.create_array("a", shape=SHAPE, chunks=CHUNKS, dtype=dtype, **kw)
    return paths


def _data(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray:
    """Labels-like data with runs of zeros (the fill value) long enough to leave whole chunks empty."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 200, shape) * (rng.random(shape) < 0.5)
    data[: CHUNKS[0]] = 0  # the first layer of chunks is all fill
    return data.astype(dtype)


def _chunk_files(path: Path) -> dict[str, bytes]:
    """The array's chunk files by key (``c/0/1/2``, ``0.1.2``, ``0/1/2``), their stored bytes."""
    node = path / "a"
    return {
        p.relative_to(node).as_posix(): p.read_bytes()
        for p in sorted(node.rglob("*"))
        if p.is_file() and p.name not in METADATA
    }


def _compressor(path: Path) -> Any:
    """The numcodecs codec that decompresses the chunk files of the layouts the fast path writes:
    zarr v2's compressor, or zarr v3's one after ``bytes``; None when they are not compressed."""
    metadata: Any = zarr.open_array(str(path), path="a", mode="r").metadata
    if metadata.zarr_format == 2:
        return metadata.compressor
    _, *rest = metadata.codecs
    return numcodecs.get_codec({"id": rest[0].to_dict()["name"]}) if rest else None


def _assert_same_store(fast: Path, twin: Path, decode: bool = True) -> None:
    """The two arrays read the same through zarr and hold the same chunk files: the same keys, the
    same bytes once decompressed, and the same stored bytes (but gzip's, whose header holds the time).
    ``decode``: False for layouts :func:`_compressor` does not know (they only compare stored bytes)."""
    a, b = zarr.open_array(str(fast), path="a", mode="r"), zarr.open_array(str(twin), path="a", mode="r")
    np.testing.assert_array_equal(a[...], b[...])
    ours, zarrs = _chunk_files(fast), _chunk_files(twin)
    assert sorted(ours) == sorted(zarrs)
    compressor = _compressor(fast) if decode else None
    for key in ours:
        if compressor is not None:
            assert bytes(compressor.decode(ours[key])) == bytes(compressor.decode(zarrs[key])), key
        if not isinstance(compressor, numcodecs.GZip):
            assert ours[key] == zarrs[key], key


def _write_both(fast: Path, twin: Path, box: Box, data: np.ndarray) -> None:
    open_volume(fast, "a", mode="r+").write(box, data)
    zarr.open_array(str(twin), path="a", mode="r+")[box.slices()] = data


# Chunk-aligned boxes: the whole array, a corner of whole chunks, and one reaching the far edges.
ALIGNED = [Box((0, 0, 0), SHAPE), Box((4, 8, 16), (4, 8, 16)), Box((4, 8, 16), (6, 12, 20))]
DTYPES = ["uint8", "uint32", "uint64", "float32"]
V3_COMPRESSORS = {"zstd": ZstdCodec(level=3), "gzip": GzipCodec(level=5), "none": None}
V2_COMPRESSORS = {
    "zstd": numcodecs.Zstd(level=3),
    "blosc": numcodecs.Blosc(cname="zstd", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE),
    "none": None,
}


def _write_sequence(fast: Path, twin: Path, dtype: str, taken: list[bool]) -> None:
    """Write the whole array, then overwrite aligned boxes and the whole array again (chunks there
    already, some going empty, some coming back), checking after each write that the fast path wrote
    and that the stores match."""
    _write_both(fast, twin, ALIGNED[0], _data(SHAPE, dtype, 0))
    _assert_same_store(fast, twin)
    for seed, box in enumerate([*ALIGNED[1:], ALIGNED[0]], start=1):
        data = _data(box.shape, dtype, seed)
        data[:, :8] = 0  # some chunks that held data now hold only the fill value: their files go
        _write_both(fast, twin, box, data)
        _assert_same_store(fast, twin)
    assert taken == [True] * (len(ALIGNED) + 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compressor", list(V3_COMPRESSORS))
def test_v3_chunks_are_those_zarr_writes(
    tmp_path: Path, compressor: str, dtype: str, taken: list[bool]
) -> None:
    fast, twin = _pair(tmp_path, 3, dtype, compressors=V3_COMPRESSORS[compressor])
    _write_sequence(fast, twin, dtype, taken)


@pytest.mark.parametrize("separator", [".", "/"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compressor", list(V2_COMPRESSORS))
def test_v2_chunks_are_those_zarr_writes(
    tmp_path: Path, compressor: str, dtype: str, separator: str, taken: list[bool]
) -> None:
    fast, twin = _pair(
        tmp_path, 2, dtype, compressors=V2_COMPRESSORS[compressor],
        chunk_key_encoding={"name": "v2", "separator": separator},
    )  # fmt: skip
    _write_sequence(fast, twin, dtype, taken)
    assert any(separator in key for key in _chunk_files(fast))


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_an_all_fill_chunk_is_no_file_and_removes_the_old_one(
    tmp_path: Path, zarr_format: int, taken: list[bool]
) -> None:
    fast = _pair(tmp_path, zarr_format, "uint16")[0]
    volume = open_volume(fast, "a", mode="r+")
    box = Box((0, 0, 0), CHUNKS)
    volume.write(box, np.ones(CHUNKS, np.uint16))
    key = "c/0/0/0" if zarr_format == 3 else "0.0.0"
    assert list(_chunk_files(fast)) == [key]
    volume.write(box, np.zeros(CHUNKS, np.uint16))
    assert _chunk_files(fast) == {}
    volume.write(box, np.zeros(CHUNKS, np.uint16))  # no file to remove: still none
    assert _chunk_files(fast) == {} and taken == [True] * 3


def test_nan_fill_and_signed_zeros_decide_emptiness_as_zarr(tmp_path: Path, taken: list[bool]) -> None:
    """A NaN fill is matched by every NaN; a 0.0 fill by 0.0, not -0.0 (zarr compares its bits)."""
    for fill in (np.nan, 0.0):
        fast, twin = _pair(tmp_path / str(fill), 3, "float32", fill_value=fill, compressors=ZstdCodec())
        data = np.full(SHAPE, np.nan, np.float32)
        data[4:8, :8, :16] = -0.0  # chunk (1, 0, 0): all -0.0
        data[8:, 8:16, 16:32] = 0.0  # chunk (2, 1, 1): all 0.0
        data[:4, :8, :16] = np.float32(np.nan) * -1  # another NaN payload
        _write_both(fast, twin, ALIGNED[0], data)
        _assert_same_store(fast, twin)
        keys = set(_chunk_files(fast))
        if np.isnan(fill):
            assert keys == {"c/1/0/0", "c/2/1/1"}
        else:
            assert "c/1/0/0" in keys and "c/2/1/1" not in keys
    assert taken == [True, True]


def test_write_empty_chunks_is_honoured(tmp_path: Path, taken: list[bool]) -> None:
    fast, twin = _pair(tmp_path, 3, "uint8", compressors=ZstdCodec())
    with zarr.config.set({"array.write_empty_chunks": True}):
        _write_both(fast, twin, ALIGNED[0], np.zeros(SHAPE, np.uint8))
    _assert_same_store(fast, twin)
    assert len(_chunk_files(fast)) == 3 * 3 * 3 and taken == [True]


def test_chunk_folders_are_made_and_no_partial_files_stay(tmp_path: Path, taken: list[bool]) -> None:
    fast, twin = _pair(tmp_path, 3, "uint32", compressors=ZstdCodec())
    _write_both(fast, twin, ALIGNED[2], _data(ALIGNED[2].shape, "uint32", 5) + 1)
    _assert_same_store(fast, twin)
    assert not [p for p in (fast / "a").rglob("*") if "partial" in p.name] and taken == [True]


@pytest.mark.parametrize(
    "box",
    [Box((1, 0, 0), (3, 8, 16)), Box((0, 0, 0), (4, 8, 15)), Box((0, 0, 0), (10, 20, 35))],
    ids=["start-off-grid", "stop-off-grid", "stop-short-of-the-edge"],
)
@pytest.mark.parametrize("zarr_format", [3, 2])
def test_boxes_off_the_chunk_grid_go_through_zarr(
    tmp_path: Path, zarr_format: int, box: Box, taken: list[bool]
) -> None:
    fast, twin = _pair(tmp_path, zarr_format, "uint32")
    _write_both(fast, twin, ALIGNED[0], _data(SHAPE, "uint32", 0))
    _write_both(fast, twin, box, _data(box.shape, "uint32", 1) + 1)
    _assert_same_store(fast, twin)
    assert taken == [True, False]


DECLINED_V3: dict[str, dict[str, Any]] = {
    "sharded": {"shards": (8, 16, 32)},
    "crc32c": {"compressors": [ZstdCodec(), Crc32cCodec()]},
    "blosc": {"compressors": BloscCodec()},
    "transpose": {"filters": [TransposeCodec(order=(2, 1, 0))]},
    "big-endian": {"serializer": {"name": "bytes", "configuration": {"endian": "big"}}},
}
DECLINED_V2: dict[str, dict[str, Any]] = {
    "filters": {"filters": [numcodecs.Delta(dtype="<u4")]},
    "fortran-order": {"order": "F"},
}


@pytest.mark.parametrize(
    ("zarr_format", "kind"), [(3, k) for k in DECLINED_V3] + [(2, k) for k in DECLINED_V2]
)
def test_other_layouts_go_through_zarr(
    tmp_path: Path, zarr_format: int, kind: str, taken: list[bool]
) -> None:
    kw = (DECLINED_V3 if zarr_format == 3 else DECLINED_V2)[kind]
    fast, twin = _pair(tmp_path, zarr_format, "uint32", **kw)
    _write_both(fast, twin, ALIGNED[0], _data(SHAPE, "uint32", 0))
    box = Box((0, 0, 0), (8, 16, 32))  # whole chunks, whole shards
    _write_both(fast, twin, box, _data(box.shape, "uint32", 1) + 1)
    _assert_same_store(fast, twin, decode=False)
    assert taken == [False, False]


def test_a_big_endian_v2_array_goes_through_zarr(tmp_path: Path, taken: list[bool]) -> None:
    fast, twin = _pair(tmp_path, 2, ">u2", compressors=numcodecs.Zstd())
    _write_both(fast, twin, ALIGNED[0], _data(SHAPE, ">u2", 0))
    _assert_same_store(fast, twin)
    assert taken == [False]


def test_an_array_in_another_store_is_declined_untouched(tmp_path: Path) -> None:
    """What an s3:// volume's array is (a store other than a local folder): declined, nothing written;
    ZarrVolume does not even ask for a URL, so this guards the function on its own."""
    store = zarr.storage.MemoryStore()
    array = zarr.create_array(store, shape=SHAPE, chunks=CHUNKS, dtype="uint8")
    data = np.ones(SHAPE, np.uint8)
    assert not zarr_direct.write_chunks(array, tmp_path, Box((0, 0, 0), SHAPE).slices(), data)
    assert not list(tmp_path.iterdir()) and not np.asarray(array[...]).any()


@pytest.fixture(scope="module")
def s3_bucket() -> Iterator[str]:
    """``s3://zarr-direct`` on a real S3 server (moto's) on a free 127.0.0.1 port."""
    with s3_server("zarr-direct"):
        yield "s3://zarr-direct"


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_a_url_volume_is_written_by_zarr(
    tmp_path: Path, s3_bucket: str, zarr_format: int, taken: list[bool]
) -> None:
    url = f"{s3_bucket}/v{zarr_format}.zarr"
    compressor: Any = ZstdCodec() if zarr_format == 3 else numcodecs.Zstd()
    for store in (zarr_store(url, read_only=False), str(tmp_path / "twin.zarr")):
        group = zarr.open_group(store, mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
        group.create_array("a", shape=SHAPE, chunks=CHUNKS, dtype="uint32", compressors=compressor)
    data = _data(SHAPE, "uint32", 0)
    open_volume(url, "a", mode="r+").write(ALIGNED[0], data)
    zarr.open_array(str(tmp_path / "twin.zarr"), path="a", mode="r+")[...] = data
    np.testing.assert_array_equal(open_volume(url, "a").read(ALIGNED[0]), data)
    stored = {
        k.removeprefix(f"zarr-direct/v{zarr_format}.zarr/a/")
        for k in filesystem().find(f"zarr-direct/v{zarr_format}.zarr/a")
    }
    assert stored - METADATA == set(_chunk_files(tmp_path / "twin.zarr"))
    assert taken == []  # never asked: a URL is no local folder
