"""Small chunks are decoded and encoded on zarr's event-loop thread, large ones on its worker threads
(``volumes.backends.zarr_codecs.INLINE_CODEC_BYTES``, issue 17): the same bytes either way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from volumes.backends import zarr_codecs
from volumes.box import Box
from volumes.open import open_volume


def _on_loop() -> bool:
    """Whether this code runs on an event loop's thread (zarr's), not on one of its worker threads."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@pytest.fixture
def decoded_on(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Where each input chunk was decoded: True on zarr's loop thread (the real decoder runs)."""
    seen: list[bool] = []
    real = zarr_codecs.decode_bounded

    def spy(codec: Any, data: Any, limit: int) -> np.ndarray:
        seen.append(_on_loop())
        return real(codec, data, limit)

    monkeypatch.setattr(zarr_codecs, "decode_bounded", spy)
    return seen


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_small_input_chunks_decode_on_the_loop_large_ones_on_threads(
    tmp_path: Path, zarr_format: int, decoded_on: list[bool]
) -> None:
    data = (np.random.default_rng(0).random((16, 128, 128)) * 255).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w", zarr_format=zarr_format)  # type: ignore[arg-type]
    compressors: Any = ZstdCodec() if zarr_format == 3 else numcodecs.Zstd()
    group.create_array("small", data=data, chunks=(8, 32, 32), compressors=compressors)  # 8 KiB chunks
    group.create_array("large", data=data, chunks=(16, 128, 128), compressors=compressors)  # 256 KiB
    box = Box((0, 0, 0), data.shape)
    assert (open_volume(tmp_path / "in.zarr", "small").read(box) == data).all()
    assert decoded_on and all(decoded_on)  # every chunk, no hand-off to a thread
    decoded_on.clear()
    assert zarr_codecs.INLINE_CODEC_BYTES >= 16 * 128 * 128  # 256 KiB: at the limit, still on the loop
    assert (open_volume(tmp_path / "in.zarr", "large").read(box) == data).all()
    assert decoded_on == [True]


def test_chunks_over_the_limit_decode_on_threads(
    tmp_path: Path, decoded_on: list[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.arange(8 * 64 * 64, dtype=np.uint16).reshape(8, 64, 64)
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    group.create_array("raw", data=data, chunks=(4, 32, 32), compressors=ZstdCodec())
    monkeypatch.setattr(zarr_codecs, "INLINE_CODEC_BYTES", 4 * 32 * 32 * 2 - 1)  # one byte short
    assert (open_volume(tmp_path / "in.zarr", "raw").read(Box((0, 0, 0), data.shape)) == data).all()
    assert len(decoded_on) == 8 and not any(decoded_on)


@pytest.mark.parametrize("compressor", [ZstdCodec(level=3), BloscCodec(cname="zstd", clevel=5)])
def test_outputs_write_the_same_bytes_with_small_chunks_encoded_on_the_loop(
    tmp_path: Path, compressor: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An output we write (mode r+) encodes its small chunks on the loop: the stored chunks and
    metadata are byte for byte those zarr writes on its threads, and read back the same."""
    data = np.random.default_rng(1).random((1, 16, 64, 64)).astype(np.float32)
    box = Box((0, 0, 0, 0), data.shape)
    encoded_on: list[bool] = []
    inner = type(compressor)
    real = inner._encode_sync

    def spy(self: Any, chunk_bytes: Any, chunk_spec: Any) -> Any:
        encoded_on.append(_on_loop())
        return real(self, chunk_bytes, chunk_spec)

    monkeypatch.setattr(inner, "_encode_sync", spy)
    stores = {}
    for name, limit in (("threads", 0), ("loop", zarr_codecs.INLINE_CODEC_BYTES)):
        monkeypatch.setattr(zarr_codecs, "INLINE_CODEC_BYTES", limit)
        path = tmp_path / f"{name}.zarr"
        zarr.open_group(str(path), mode="w").create_array(
            "pred", shape=data.shape, dtype="float32", chunks=(1, 8, 32, 32), compressors=compressor
        )
        volume = open_volume(path, "pred", mode="r+")
        encoded_on.clear()
        # through the output's zarr pipeline: volume.write writes whole zstd chunks without it
        # (volumes.backends.zarr_direct), the pipeline still writes whatever that path declines
        volume._handle()[box.slices()] = data
        assert encoded_on == [name == "loop"] * 8  # 8 chunks, each where the limit says
        assert (open_volume(path, "pred", mode="r+").read(box) == data).all()
        stores[name] = {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    assert stores["loop"] == stores["threads"]
    meta = json.loads(stores["loop"][Path("pred/zarr.json")])
    assert meta["codecs"][-1]["name"] in ("zstd", "blosc")  # the metadata names the real codec


class _ZstdWithoutSyncMethods(ZstdCodec):
    """A zstd codec as zarr 3.0.8 (the floor) has it: no ``_encode_sync``/``_decode_sync``."""

    _encode_sync = None
    _decode_sync = None


def test_a_compressor_without_sync_methods_keeps_zarrs_own_path(tmp_path: Path) -> None:
    """zarr before 3.1 has no ``_encode_sync``: such a compressor is left as zarr runs it (wrapping it
    failed every write with AttributeError there). That such an array writes and reads on zarr 3.0.8
    itself is tests/integration/test_dependency_floors.py's job, a job run at the declared floors."""
    assert zarr_codecs._has_sync_methods(ZstdCodec())
    assert not zarr_codecs._has_sync_methods(_ZstdWithoutSyncMethods())
    data = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)
    array = zarr.create_array(
        tmp_path / "a.zarr", shape=data.shape, chunks=(2, 8, 8), dtype=data.dtype, compressors=[ZstdCodec()]
    )
    pipeline = array._async_array.codec_pipeline
    plain = type(pipeline).from_codecs(
        [_ZstdWithoutSyncMethods() if isinstance(c, ZstdCodec) else c for c in pipeline],
        batch_size=pipeline.batch_size,
    )
    object.__setattr__(array._async_array, "codec_pipeline", plain)
    zarr_codecs.inline_small_chunks(array)
    assert not any(isinstance(c, zarr_codecs.InlineSmallCodec) for c in array._async_array.codec_pipeline)
    assert any(isinstance(c, _ZstdWithoutSyncMethods) for c in array._async_array.codec_pipeline)
