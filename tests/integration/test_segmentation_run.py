"""The segmentation run in one process over real stores: every output format with its metadata and
table, a run stopped part way resumed to the same labels, the output guard, and inputs that are not
predictions refused naming ``input``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from scipy import ndimage

from volumes.box import Box
from volumes.labels.decoders import Decoder
from volumes.labels.output import read_table
from volumes.labels.whole import decode_in_memory, sequential
from volumes.open import open_volume
from workers.errors import OutputExistsError, SpecError
from workers.segmentation.job import SegInput, SegmentationJob, SegOutput
from workers.segmentation.run import SegmentationRun, run_serially
from workers.segmentation.steps import run_step

SHAPE = (10, 24, 28)
BC = Decoder("bc_connected", (0.5, 0.6), 6, "background", 18, (1, 3, 3))


@pytest.fixture
def pred(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(7)
    field = ndimage.gaussian_filter(rng.random((2, *SHAPE)), (0, 1, 1.5, 1.5))
    data = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
    group = zarr.open_group(tmp_path / "pred.zarr", mode="w")
    group.create_array("p", data=data, chunks=(2, 5, 12, 14))
    group.create_array("float", data=data.astype(np.float32) / 255, chunks=(2, 5, 12, 14))
    group.create_array("flat", data=data[0], chunks=(5, 12, 14))
    group.create_array("ints", data=data.astype(np.int16), chunks=(2, 5, 12, 14))
    return data


def job(tmp_path: Path, out: str, dataset: str = "p", fmt: str = "zarr3", **kw: object) -> SegmentationJob:
    output = SegOutput(str(tmp_path / out), "seg", fmt, (5, 8, 7), **kw)  # type: ignore[arg-type]
    return SegmentationJob(SegInput(str(tmp_path / "pred.zarr"), dataset), BC, output, (5, 8, 14), "{}")


def read(j: SegmentationJob) -> np.ndarray:
    volume = open_volume(j.output.path, j.output.dataset)
    return volume.read(Box((0, 0, 0), volume.shape))


@pytest.mark.parametrize("fmt", ["zarr3", "zarr2", "n5"])
def test_every_format_equals_the_whole_volume_decoder(tmp_path: Path, pred: np.ndarray, fmt: str) -> None:
    j = job(tmp_path, "seg.n5" if fmt == "n5" else "seg.zarr", fmt=fmt)
    result = run_serially(j)
    labels = read(j)
    expected = sequential(decode_in_memory(pred, BC))
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.uint32 and result["objects"] == int(expected.max())
    table = read_table(Path(result["table"]))
    assert table[:, 0].tolist() == list(range(1, int(expected.max()) + 1))
    for row in table:
        where = np.argwhere(labels == row[0])
        assert row[1] == len(where)
        assert (
            row[2:5].tolist() == where.min(axis=0).tolist()
            and row[5:8].tolist() == (where.max(axis=0) + 1).tolist()
        )
        np.testing.assert_allclose(row[8:11], where.mean(axis=0), atol=1e-3)
    attrs = open_volume(j.output.path, "seg").attrs["pytc"]
    assert attrs["complete"] is True and attrs["kind"] == "segmentation"
    if fmt != "n5":
        group = json.loads(
            (tmp_path / "seg.zarr" / ("zarr.json" if fmt == "zarr3" else ".zattrs")).read_text()
        )
        meta = group["attributes"]["ome"] if fmt == "zarr3" else group
        assert "image-label" in meta and meta["multiscales"][0]["datasets"][0]["path"] == "seg"


def test_float_predictions_and_relabel_none(tmp_path: Path, pred: np.ndarray) -> None:
    j = job(tmp_path, "seg.zarr", dataset="float", relabel="none")
    run_serially(j)
    np.testing.assert_array_equal(read(j), decode_in_memory(pred.astype(np.float32) / 255, BC))


def test_a_run_stopped_part_way_resumes_to_the_same_labels(tmp_path: Path, pred: np.ndarray) -> None:
    j = job(tmp_path, "seg.zarr")
    run = SegmentationRun.start(j)
    done = 0
    while (tasks := run.ready()) and done < 40:  # label, link, number and some of the rest
        for task in tasks[:5]:
            run_step(task.plan, task.step, task.block)
            run.finished(task)
            done += 1
    again = run_serially(j)  # a new run: what the markers say is done is skipped
    assert again["resumed"] and again["steps_skipped"] >= 40
    np.testing.assert_array_equal(read(j), sequential(decode_in_memory(pred, BC)))
    assert run_serially(j)["steps_skipped"] > 0  # complete: nothing to do


def test_the_output_guard(tmp_path: Path, pred: np.ndarray) -> None:
    run_serially(job(tmp_path, "seg.zarr"))
    other = SegmentationJob(
        job(tmp_path, "seg.zarr").input, Decoder("binary_connected", (0.5,)), job(tmp_path, "seg.zarr").output
    )
    with pytest.raises(OutputExistsError):
        SegmentationRun.start(other)
    replace = SegmentationJob(other.input, other.decoder, job(tmp_path, "seg.zarr", overwrite=True).output)
    run_serially(replace)
    np.testing.assert_array_equal(read(replace), sequential(decode_in_memory(pred, other.decoder)))


@pytest.mark.parametrize(("dataset", "words"), [("flat", "3-D"), ("ints", "int16"), ("missing", "")])
def test_inputs_that_are_not_predictions(tmp_path: Path, pred: np.ndarray, dataset: str, words: str) -> None:
    with pytest.raises(SpecError) as caught:
        SegmentationRun.start(job(tmp_path, "seg.zarr", dataset=dataset))
    assert caught.value.field.startswith("input") and words in str(caught.value)
    assert not (tmp_path / "seg.zarr").exists()


def test_a_prediction_without_foreground_gives_an_empty_table(tmp_path: Path) -> None:
    zarr.open_group(tmp_path / "zero.zarr", mode="w").create_array(
        "p", data=np.zeros((3, 6, 8, 8), np.float32), chunks=(3, 3, 4, 4)
    )
    for decoder in (BC, Decoder("affinity_connected", (0.5,), connectivity=6)):
        output = SegOutput(str(tmp_path / "zero-seg.zarr"), decoder.name, "zarr2", (3, 4, 4))
        result = run_serially(
            SegmentationJob(SegInput(str(tmp_path / "zero.zarr"), "p"), decoder, output, (3, 4, 4))
        )
        assert result["objects"] == 0 and result["dtype"] == "uint32"
        assert Path(result["table"]).read_text().count("\n") == 1  # the header alone
