"""An inference output's pyramid, written as a stage of the run after level 0 is complete: every
level equals the in-memory means of the level above, a run killed mid-pyramid resumes to the values
of a clean run, the output is complete only after the pyramid, and ``output.pyramid: false`` keeps
level 0 alone. An ROI output is placed where it lies in the input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

import workers.pyramid
from models.ref import ModelInfo
from tests.helpers import make_job
from volumes.box import Box
from volumes.open import open_volume
from volumes.pyramid import downsample_labels, downsample_mean
from workers.errors import IncompleteRunError
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob, WindowSpec
from workers.inference.run import InferenceRun, run_serially
from workers.inference.steps import StepCounts
from workers.pyramid import PyramidStage, run_pyramid_task

INFO = ModelInfo(1, 2, "sha-of-the-pyramid-model")


def two_channels(batch: np.ndarray) -> np.ndarray:
    return np.concatenate([batch, 1.0 - batch], axis=1)


def levels_of(job: InferenceJob) -> list[np.ndarray]:
    group = zarr.open_group(f"{job.output.path}/{job.output.dataset}", mode="r")
    names = sorted((k for k in group.array_keys()), key=int)
    return [np.asarray(group[name][...]) for name in names]


def test_every_level_is_the_mean_of_the_level_above(job: InferenceJob) -> None:
    summary = run_serially(job, INFO, predict=two_channels)
    levels = levels_of(job)
    assert summary.levels == len(levels) == 3  # 16x24x24 in chunks of 8: 8x12x12, 4x6x6
    assert [a.shape for a in levels] == [(2, 16, 24, 24), (2, 8, 12, 12), (2, 4, 6, 6)]
    full = levels[0].astype(np.float64)
    by_hand = full.reshape(2, 8, 2, 12, 2, 12, 2).mean(axis=(2, 4, 6))  # the 2x2x2 blocks' means
    np.testing.assert_allclose(levels[1], by_hand.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(levels[2], downsample_mean(levels[1], (2, 2, 2), np.float32), rtol=1e-6)
    record = open_volume(job.output.path, job.output.dataset).attrs[OUTPUT_ATTRS_KEY]
    assert record["complete"] is True


def test_progress_counts_the_pyramid_as_a_part(job: InferenceJob) -> None:
    seen: list[StepCounts] = []
    run_serially(job, INFO, predict=two_channels, on_progress=seen.append)
    last = seen[-1]
    assert last.pyramid_total == 1 * 2 * 2 + 1  # level 1: 8x12x12 in chunks of 8; level 2: one chunk
    assert last.pyramid_done == last.pyramid_total and last.done == last.total
    assert seen[0].total == last.total  # the pyramid is in the total from the start


def test_a_run_killed_mid_pyramid_resumes_to_a_clean_runs_values(
    job: InferenceJob, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = replace(job, output=replace(job.output, path=str(tmp_path / "clean.zarr")))
    run_serially(clean, INFO, predict=two_channels)
    writes = 0
    real = workers.pyramid.downsample

    def dying(*args: object, **kwargs: object) -> np.ndarray:
        nonlocal writes
        writes += 1
        if writes == 3:  # level 1's task (its 4 chunks), after two of them were written: no marker
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(workers.pyramid, "downsample", dying)
    with pytest.raises(KeyboardInterrupt):
        run_serially(job, INFO, predict=two_channels)
    assert open_volume(job.output.path, job.output.dataset).attrs[OUTPUT_ATTRS_KEY]["complete"] is False
    monkeypatch.setattr(workers.pyramid, "downsample", real)
    resumed = run_serially(job, INFO, predict=two_channels)
    assert resumed.resumed and resumed.blocks_skipped == resumed.blocks_total
    for mine, theirs in zip(levels_of(job), levels_of(clean), strict=True):
        np.testing.assert_array_equal(mine, theirs)


def test_success_is_never_reported_over_a_pyramid_hole(job: InferenceJob) -> None:
    run = InferenceRun.start(job, INFO)
    while (task := run.next_task()) is not None:
        from workers.inference.tasks import run_block

        run.finished(task, run_block(task, predict=two_channels))
    with pytest.raises(IncompleteRunError, match="pyramid"):
        run.complete()  # the blocks are done, the pyramid is not


def test_pyramid_false_keeps_level_zero_alone(job: InferenceJob) -> None:
    flat = replace(job, output=replace(job.output, pyramid=False))
    assert flat.layout_key("m") != job.layout_key("m")
    summary = run_serially(flat, INFO, predict=two_channels)
    assert summary.levels == 1 and len(levels_of(flat)) == 1


def test_an_roi_output_is_placed_where_it_lies_in_the_input(tmp_path: Path) -> None:
    """Translation = the input's own translation + the ROI's offset x the voxel size."""
    data = np.random.default_rng(3).random((16, 24, 24), dtype=np.float32)
    image = zarr.open_group(str(tmp_path / "in.zarr"), mode="w").create_group("raw")
    image.create_array("0", data=data, chunks=(8, 8, 8))
    transforms = [{"type": "scale", "scale": [30, 8, 8]}, {"type": "translation", "translation": [60, 16, 8]}]
    axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transforms}]}
    image.update_attributes({"ome": {"version": "0.5", "multiscales": [ms]}})
    window = WindowSpec((5, 7, 7), (3, 4, 4), "gaussian", batch_size=4)
    job = make_job(tmp_path / "in.zarr", tmp_path / "out.zarr", window, roi=Box((4, 8, 0), (8, 16, 16)))
    run_serially(job, ModelInfo(1, 1, "sha"), predict=lambda b: b)
    level0, level1 = open_volume(job.output.path, "pred"), open_volume(job.output.path, "pred/1")
    assert level0.voxel_size == (30.0, 8.0, 8.0)
    assert level0.translation == (60 + 4 * 30, 16 + 8 * 8, 8 + 0 * 8)
    assert level1.voxel_size == (30.0, 16.0, 16.0)  # 8x16x16 in chunks of 8: y and x halved first
    assert level1.translation == (180.0, 84.0, 12.0)  # half a fine voxel further: the coarse centres
    np.testing.assert_allclose(level0.read(Box.of_shape(level0.shape))[0], data[4:12, 8:24, 0:16], atol=1e-6)


def test_a_label_stage_keeps_ids(tmp_path: Path) -> None:
    """The stage with a label rule (what segmentation uses): every level the mode of the one above."""
    from volumes.output import create_output
    from volumes.pyramid import pyramid_factors

    labels = np.random.default_rng(4).integers(0, 5, (1, 12, 20, 20)).astype(np.uint32)
    levels = pyramid_factors((12, 20, 20), (4, 8, 8), (30, 8, 8))
    volume = create_output(
        tmp_path / "seg.zarr", "ids", "zarr2", labels.shape, "uint32", (4, 8, 8), (30, 8, 8), levels=levels
    )
    volume.write(Box.of_shape(labels.shape), labels)
    stage = PyramidStage(
        str(tmp_path / "seg.zarr"),
        "ids",
        "zarr2",
        levels,
        (4, 8, 8),
        labels.shape,
        "mode",
        tmp_path / "markers",
    )
    while (task := stage.next_task()) is not None:
        run_pyramid_task(task)
        stage.finished(task)
    stage.check()
    expected = labels
    for index in range(1, len(levels)):
        step = tuple(b // a for a, b in zip(levels[index - 1], levels[index], strict=True))
        expected = downsample_labels(expected, step)
        got = open_volume(tmp_path / "seg.zarr", f"ids/{index}")
        np.testing.assert_array_equal(got.read(Box.of_shape(got.shape)), expected)
