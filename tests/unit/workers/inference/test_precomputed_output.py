"""``output.format: precomputed``: a neuroglancer precomputed output, sharded so that a block writes
whole shards, equal bit for bit to the zarr output of the same job, resumable, and read back by
tensorstore with its voxel size, offset, data type and channels in its ``info``."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr

from models.ref import ModelInfo
from tests.helpers import make_job
from tests.unit.workers.inference.test_mask import model, read_output
from volumes.backends.precomputed import sharding_for, valid_shards
from volumes.open import open_volume
from workers.errors import SpecError
from workers.inference.job import InferenceJob, WindowSpec
from workers.inference.run import InferenceRun, pyramid_serially
from workers.inference.tasks import run_block

SHAPE = (12, 40, 36)  # chunks of 4 x 8 x 8: a 3 x 5 x 5 chunk grid, ragged at the far edges
VOXEL, ORIGIN = [40.0, 8.0, 4.0], [400.0, 80.0, 40.0]  # the input's OME placement: (10, 10, 10) voxels


def placed_input(folder: Path) -> None:
    data = np.random.default_rng(7).random(SHAPE, dtype=np.float32)
    group = zarr.open_group(folder / "in.zarr", mode="w")
    group.create_array("raw", data=data, chunks=(4, 8, 8))
    transforms = [{"type": "scale", "scale": VOXEL}, {"type": "translation", "translation": ORIGIN}]
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    datasets = [{"path": "raw", "coordinateTransformations": transforms}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}


def job_for(folder: Path, fmt: str, out: str, shards: tuple[int, int, int] | None = None) -> InferenceJob:
    window = WindowSpec((4, 9, 9), (3, 6, 6), "gaussian", batch_size=4)
    job = make_job(
        folder / "in.zarr", folder / out, window, chunks=(4, 8, 8), block_shape=(4, 16, 16), fmt=fmt
    )
    return replace(job, output=replace(job.output, shards=shards))


def run_job(job: InferenceJob, stop_after: int | None = None) -> InferenceRun:
    run = InferenceRun.start(job, ModelInfo(1, 2, "precomputed-test"))
    done = 0
    while (task := run.next_task()) is not None:
        if done == stop_after:
            run.close()  # abandoned as a killed driver would be
            return run
        run.finished(task, run_block(task, predict=lambda b: np.concatenate([model(b), -model(b)], 1)))
        done += 1
    pyramid_serially(run)  # the zarr output's coarser levels; none for precomputed
    run.complete()
    return run


def test_a_sharded_precomputed_output_equals_the_zarr_output_and_resumes(tmp_path: Path) -> None:
    placed_input(tmp_path)
    run_job(job_for(tmp_path, "zarr3", "out.zarr"))
    expected = read_output(job_for(tmp_path, "zarr3", "out.zarr"))
    job = job_for(tmp_path, "precomputed", "out.precomputed", shards=(4, 16, 16))
    run_job(job, stop_after=7)  # killed midway, then run again: the same output
    resumed = run_job(job)
    assert resumed.summary.resumed
    volume = open_volume(job.output.path, "pred")
    assert volume.format == "precomputed" and volume.dataset == "pred/0" and volume.shape == (2, *SHAPE)
    assert volume.attrs["pytc"]["complete"] is True
    assert volume.voxel_size == tuple(VOXEL) and volume.translation == tuple(ORIGIN)
    np.testing.assert_array_equal(read_output(job), expected)
    info = json.loads((tmp_path / "out.precomputed" / "pred" / "info").read_text())
    (scale,) = info["scales"]
    assert (info["data_type"], info["num_channels"], info["type"]) == ("float32", 2, "image")
    assert scale["resolution"] == VOXEL[::-1] and scale["voxel_offset"] == [10, 10, 10]
    assert scale["size"] == list(SHAPE[::-1]) and scale["chunk_sizes"] == [[8, 8, 4]]
    stored = ts.open(
        {
            "driver": "neuroglancer_precomputed",
            "kvstore": {"driver": "file", "path": str(tmp_path / "out.precomputed" / "pred")},
        }
    ).result()
    assert stored.chunk_layout.write_chunk.shape[:3] == (16, 16, 4)  # tensorstore's shard: the block's
    assert list(stored.domain.inclusive_min) == [10, 10, 10, 0]
    np.testing.assert_array_equal(np.asarray(stored.read().result()).T, expected)
    shard_files = [p for p in (tmp_path / "out.precomputed" / "pred" / "0").iterdir() if p.suffix == ".shard"]
    assert len(shard_files) == 3 * 3 * 3  # z 12/4, y ceil(40/16), x ceil(36/16): one file per shard
    assert open_volume(job.output.path, "pred/0").dataset == "pred/0"


def test_precomputed_shards_are_morton_boxes_as_tensorstore_sees_them(tmp_path: Path) -> None:
    """Each shard shape this module offers is the write chunk tensorstore derives from its spec."""
    grid, chunk = [5, 3, 9], [8, 8, 4]  # x, y, z
    for index, shape in enumerate(valid_shards(grid, chunk)):
        sharding = sharding_for(grid, [s // c for s, c in zip(shape[::-1], chunk, strict=True)])
        assert sharding is not None
        folder = tmp_path / str(index)
        folder.mkdir()
        size = [g * c for g, c in zip(grid, chunk, strict=True)]
        scale = {"key": "0", "size": size, "resolution": [1, 1, 1], "voxel_offset": [0, 0, 0]}
        scale |= {"chunk_sizes": [chunk], "encoding": "raw", "sharding": sharding}
        info = {"@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": "uint8"}
        info |= {"num_channels": 1, "scales": [scale]}
        (folder / "info").write_text(json.dumps(info))
        store = ts.open(
            {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": str(folder)}}
        ).result()
        clipped = [min(s, g * c) for s, g, c in zip(shape[::-1], grid, chunk, strict=True)]  # to the volume
        assert list(store.chunk_layout.write_chunk.shape[:3]) == clipped, (index, sharding)


def test_a_precomputed_shard_that_is_no_morton_box_is_refused_naming_output_shards(tmp_path: Path) -> None:
    placed_input(tmp_path)
    job = job_for(tmp_path, "precomputed", "bad.precomputed", shards=(4, 16, 8))  # 1 x 2 x 1 chunks
    with pytest.raises(SpecError, match="possible shards") as err:
        InferenceRun.start(job, ModelInfo(1, 2, "precomputed-test"))
    assert err.value.field == "output.shards"
    assert not (tmp_path / "bad.precomputed").exists()
