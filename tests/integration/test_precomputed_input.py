"""Neuroglancer precomputed as an input: volumes written by tensorstore (raw and sharded scales, an
offset origin, several channels) read through ``open_volume`` equal the same data in zarr, and
``pytc run`` on a precomputed input writes what it writes for the zarr copy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorstore as ts
import zarr

from tests.integration.test_pytc_run import TinyNet, job_doc, read_output, run
from volumes.box import Box
from volumes.errors import OversizedChunkError, VolumeFormatError, VolumeNotFoundError, VolumeReadOnlyError
from volumes.open import open_volume

SHARDED = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 0,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 1,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}


def write_precomputed(path: Path, zyx: np.ndarray, scales: list[dict[str, Any]], channels: int = 1) -> None:
    """``zyx`` ((z, y, x) or (c, z, y, x)) as a precomputed volume: scale i holds ``zyx`` subsampled by
    2**i, with that scale's chunks, encoding and voxel offset."""
    for i, scale in enumerate(scales):
        step = 2**i
        data = zyx[..., ::step, ::step, ::step]
        xyzc = data.T if channels > 1 else data.T[..., None]
        meta = {"size": list(xyzc.shape[:3]), "resolution": [4 * step, 4 * step, 40 * step], **scale}
        store = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": str(path)},
                "multiscale_metadata": {
                    "type": "image",
                    "data_type": str(zyx.dtype),
                    "num_channels": channels,
                },
                "scale_metadata": meta,
            },
            create=True,
        ).result()
        store[ts.d[:].translate_to[0]].write(xyzc).result()


SCALES = [
    {"encoding": "raw", "chunk_size": [16, 8, 4], "voxel_offset": [7, 3, 1]},
    {"encoding": "raw", "chunk_size": [8, 8, 8], "sharding": SHARDED},
    {"encoding": "raw", "chunk_size": [4, 4, 4]},
]


@pytest.mark.parametrize("channels", [1, 3])
def test_precomputed_scales_equal_the_same_data_in_zarr(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(1)
    shape = (channels, 12, 20, 36) if channels > 1 else (12, 20, 36)
    data = rng.integers(0, 60000, shape).astype(np.uint16)
    write_precomputed(tmp_path / "em", data, SCALES, channels)
    for index, (key, step) in enumerate([("4_4_40", 1), ("8_8_80", 2), ("16_16_160", 4)]):
        expected = data[..., ::step, ::step, ::step]
        copy = zarr.open_group(tmp_path / f"em{index}.zarr", mode="w").create_array(
            "raw", data=expected, chunks=expected.shape
        )
        for name in (key, str(index), None if index == 0 else key):
            volume = open_volume(tmp_path / "em", name)
            assert volume.format == "precomputed" and volume.shape == copy.shape and volume.dtype == np.uint16
            np.testing.assert_array_equal(volume.read(Box.of_shape(volume.shape)), copy[:])
        assert volume.voxel_size == (40.0 * step, 4.0 * step, 4.0 * step)
        chunk = [*SCALES[index]["chunk_size"]][::-1]
        assert volume.chunks == ((channels,) if channels > 1 else ()) + tuple(chunk)
        inner = Box((0,) * (volume.ndim - 3) + (1, 1, 1), (*volume.shape[:-3], 2, 3, 4))
        np.testing.assert_array_equal(volume.read(inner), expected[..., 1:3, 1:4, 1:5])


def test_precomputed_refusals_name_the_store(tmp_path: Path) -> None:
    data = np.arange(8 * 8 * 8, dtype=np.uint8).reshape(8, 8, 8)
    write_precomputed(tmp_path / "em", data, [{"encoding": "raw", "chunk_size": [8, 8, 8]}])
    with pytest.raises(VolumeNotFoundError, match=r"no scale '9_9_9'.*\['4_4_40'\]"):
        open_volume(tmp_path / "em", "9_9_9")
    with pytest.raises(VolumeReadOnlyError, match="read only"):
        open_volume(tmp_path / "em", None, mode="r+")
    (chunk,) = (tmp_path / "em" / "4_4_40").iterdir()
    chunk.write_bytes(chunk.read_bytes() * 3)  # a raw chunk longer than its shape
    with pytest.raises(OversizedChunkError, match="em"):
        volume = open_volume(tmp_path / "em")
        volume.read(Box.of_shape(volume.shape))
    info = json.loads((tmp_path / "em" / "info").read_text())
    info["scales"][0]["key"] = "../elsewhere"
    (tmp_path / "em" / "info").write_text(json.dumps(info))
    with pytest.raises(VolumeFormatError, match=r"scale key '\.\./elsewhere'"):
        open_volume(tmp_path / "em")


@pytest.mark.slow
def test_pytc_run_on_precomputed_equals_the_zarr_copy(tmp_path: Path) -> None:
    import torch

    data = (np.random.default_rng(0).random((14, 40, 44)) * 255).astype(np.uint8)
    zarr.open_group(tmp_path / "em.zarr", mode="w").create_array("raw", data=data, chunks=(8, 16, 16))
    write_precomputed(tmp_path / "em", data, [{**SCALES[1], "chunk_size": [16, 16, 8]}])
    torch.jit.script(TinyNet().eval()).save(str(tmp_path / "net.pt"))
    assert run(tmp_path, job_doc())[0] == 0
    doc = job_doc(**{"input.path": "em", "input.dataset": "4_4_40", "output.path": "out_pc.zarr"})
    assert run(tmp_path, doc)[0] == 0
    np.testing.assert_array_equal(read_output(tmp_path / "out_pc.zarr"), read_output(tmp_path / "out.zarr"))
