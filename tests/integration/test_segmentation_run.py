"""The segmentation run in one process over real stores: every output format with its metadata
(its own OME-Zarr label image with a ``mode`` pyramid) and table, the labels placed where the
prediction lies, a run stopped part way resumed to the same labels, the output guard, and inputs
that are not predictions refused naming ``input``."""

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
from volumes.output import create_output, level_path
from volumes.pyramid import downsample_labels, pyramid_factors
from workers.errors import IncompleteRunError, OutputExistsError, SpecError
from workers.pyramid import run_pyramid_task
from workers.segmentation.job import SegInput, SegmentationJob, SegOutput
from workers.segmentation.run import SegmentationRun, run_serially
from workers.segmentation.steps import NUMBER, SIZES, WRITE, run_step

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
    assert_label_image(Path(j.output.path), fmt, labels)


def assert_label_image(root: Path, fmt: str, labels: np.ndarray) -> None:
    """``seg`` is its own image: multiscales and image-label on its group (nothing on the
    container's), level 1 the mode of level 0 (the chunks (5, 8, 7) give levels down to one chunk;
    no voxel size: isotropic factors)."""
    if fmt != "n5":
        name = "zarr.json" if fmt == "zarr3" else ".zattrs"
        image = json.loads((root / "seg" / name).read_text())
        meta = image["attributes"]["ome"] if fmt == "zarr3" else image
        assert "image-label" in meta and [d["path"] for d in meta["multiscales"][0]["datasets"]][:2] == [
            "0",
            "1",
        ]
        assert [a["name"] for a in meta["multiscales"][0]["axes"]] == ["z", "y", "x"]
        container = json.loads((root / name).read_text()) if (root / name).is_file() else {}
        assert "image-label" not in json.dumps(container) and "multiscales" not in json.dumps(container)
    level1 = open_volume(root, level_path(fmt, "seg", 1))
    np.testing.assert_array_equal(
        level1.read(Box((0, 0, 0), level1.shape)),
        downsample_labels(labels, pyramid_factors(labels.shape, (5, 8, 7), None)[1]),
    )


def test_labels_lie_where_the_prediction_lies(tmp_path: Path, pred: np.ndarray) -> None:
    """A prediction placed at a translation (an ROI's output) gives labels with the same voxel size
    and translation; ``pyramid: false`` keeps level 0 alone."""
    placed = create_output(
        tmp_path / "placed.zarr", "mito", "zarr3", pred.shape, np.uint8, (5, 12, 14), (30.0, 8.0, 8.0),
        translation=(120.0, 64.0, 32.0),
    )  # fmt: skip
    placed.write(Box((0, 0, 0, 0), pred.shape), pred)
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", (5, 8, 7), pyramid=False)
    j = SegmentationJob(SegInput(str(tmp_path / "placed.zarr"), "mito"), BC, output, (5, 8, 14), "{}")
    run_serially(j)
    labels = open_volume(j.output.path, "seg")
    assert labels.voxel_size == (30.0, 8.0, 8.0) and labels.translation == (120.0, 64.0, 32.0)
    assert not (tmp_path / "seg.zarr" / "seg" / "1").exists()
    np.testing.assert_array_equal(read(j), sequential(decode_in_memory(pred, BC)))


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
    done_files = {p.name for p in (run.plan.run_dir.root / "done").iterdir()}
    assert done_files <= {"done.log", "done.snap"}  # the ledger's two files, not a file per step
    again = run_serially(j)  # a new run: what the record says is done is skipped
    assert again["resumed"] and again["steps_skipped"] >= 40
    np.testing.assert_array_equal(read(j), sequential(decode_in_memory(pred, BC)))
    assert run_serially(j)["steps_skipped"] > 0  # complete: nothing to do


def test_complete_only_after_the_pyramid_and_a_run_stopped_in_it_resumes(
    tmp_path: Path, pred: np.ndarray
) -> None:
    """Every block written but the pyramid not: the run cannot complete (the output stays marked
    incomplete); a new run finishes the pyramid's remaining tasks only."""
    j = job(tmp_path, "seg.zarr")
    run = SegmentationRun.start(j)
    while tasks := run.ready():
        for task in tasks:
            run_step(task.plan, task.step, task.block)
            run.finished(task)
    stage = run.pyramid_stage()
    first = stage.next_task()
    assert first is not None and stage.chunks_total > 1
    run_pyramid_task(first)
    stage.finished(first)
    with pytest.raises(IncompleteRunError, match="pyramid"):
        run.complete()
    assert open_volume(j.output.path, "seg").attrs["pytc"]["complete"] is False
    again = run_serially(j)
    assert again["resumed"] and again["levels"] > 1
    labels = read(j)
    np.testing.assert_array_equal(labels, sequential(decode_in_memory(pred, BC)))
    assert_label_image(tmp_path / "seg.zarr", "zarr3", labels)


def test_an_image_half_made_by_a_killed_merge_is_made_again(tmp_path: Path, pred: np.ndarray) -> None:
    """The merge that creates the image killed after level 0 but before the image's metadata (and
    its record): the next run deletes that half image of its own and makes it whole."""
    j = job(tmp_path, "seg.zarr")
    run = SegmentationRun.start(j)
    while (tasks := run.ready()) and tasks[0].step != WRITE:
        for task in tasks:
            run_step(task.plan, task.step, task.block)
            run.finished(task)
    meta = tmp_path / "seg.zarr" / "seg" / "zarr.json"
    record = json.loads(meta.read_text())
    meta.write_text(json.dumps({**record, "attributes": {}}))  # no multiscales: not an image yet
    merge = SIZES if run.plan.dilates else NUMBER  # the merge that creates the image
    run.ledger.forget(merge, (0, 0, 0))
    run_serially(j)
    np.testing.assert_array_equal(read(j), sequential(decode_in_memory(pred, BC)))
    assert "image-label" in json.loads(meta.read_text())["attributes"]["ome"]


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


@pytest.mark.parametrize("mode", ["background_2d", "neighbor_2d"])
def test_per_slice_size_filter_through_the_run(tmp_path: Path, pred: np.ndarray, mode: str) -> None:
    """``background_2d`` / ``neighbor_2d``: an object's voxels in a z slice where it has fewer than
    ``thres_small`` are zeroed, its count summed over the blocks of the slice; the run equals the
    whole-volume decoder and its table describes the voxels written."""
    decoder = Decoder("binary_connected", (0.5,), 12, mode, 26)  # type: ignore[arg-type]
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", (5, 8, 7))
    j = SegmentationJob(SegInput(str(tmp_path / "pred.zarr"), "p"), decoder, output, (5, 8, 14), "{}")
    result = run_serially(j)
    labels = read(j)
    expected = sequential(decode_in_memory(pred, decoder))
    whole = sequential(decode_in_memory(pred, Decoder("binary_connected", (0.5,), 12, "background", 26)))
    assert not np.array_equal(expected, whole)  # the per-slice filter drops what the 3-D one keeps
    np.testing.assert_array_equal(labels, expected)
    table = read_table(Path(result["table"]))
    assert table[:, 0].tolist() == list(range(1, int(expected.max()) + 1))
    for row in table:
        where = np.argwhere(labels == row[0])
        assert row[1] == len(where)
        assert row[2:5].tolist() == where.min(axis=0).tolist()
        assert row[5:8].tolist() == (where.max(axis=0) + 1).tolist()
        np.testing.assert_allclose(row[8:11], where.mean(axis=0), atol=1e-3)


@pytest.mark.parametrize(
    ("chunks", "block"),
    [((3, 4, 6, 5), (4, 12, 10)), ((3, 3, 5, 7), (3, 5, 7)), ((3, 10, 24, 28), (5, 8, 14))],
)
def test_affinity_connected_through_the_run_equals_the_whole_volume(
    tmp_path: Path, chunks: tuple[int, ...], block: tuple[int, int, int]
) -> None:
    """affinity_connected's label step reads each block and the first layer of the next block along
    each axis (the edges from it back into the block), whatever the prediction's chunks: the labels
    equal the whole-volume decoder's, voxel for voxel."""
    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.random((3, *SHAPE)), (0, 1, 1.5, 1.5))
    aff = ((field - field.min()) / np.ptp(field)).astype(np.float32)
    zarr.open_group(tmp_path / "aff.zarr", mode="w").create_array("a", data=aff, chunks=chunks)
    decoder = Decoder("affinity_connected", (0.5,), 4, "background", 6)
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", block, pyramid=False)
    j = SegmentationJob(SegInput(str(tmp_path / "aff.zarr"), "a"), decoder, output, block, "{}")
    result = run_serially(j)
    want = sequential(decode_in_memory(aff, decoder))
    assert result["objects"] == int(want.max()) > 5
    np.testing.assert_array_equal(read(j), want)


@pytest.mark.parametrize("relabel", ["sequential", "none"])
def test_specks_dropped_in_their_blocks_leave_the_whole_volume_labels(
    tmp_path: Path, relabel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """binary_connected over sparse specks (most of them whole inside one block, under
    ``thres_small``) and a sheet through every block: with ``relabel: sequential`` the label step
    drops the specks in their block (``volumes.labels.blockwise.label_step``; the unit tests count the
    pieces), with ``none`` it keeps them for PyTC's numbers; the labels equal the whole volume's
    either way. Every step tunes the allocator first."""
    import workers.segmentation.steps as steps

    tuned: list[int] = []
    monkeypatch.setattr(steps, "tune_allocator", lambda: tuned.append(1) or True)
    renamed: list[bool] = []
    save = steps._save_packed

    def saving(path: Path, labels: np.ndarray, renaming: np.ndarray | None = None) -> None:
        renamed.append(renaming is not None)
        save(path, labels, renaming)

    monkeypatch.setattr(steps, "_save_packed", saving)
    rng = np.random.default_rng(11)
    mask = rng.random(SHAPE) < 0.05
    mask[4] = True
    zarr.open_group(tmp_path / "specks.zarr", mode="w").create_array(
        "m", data=mask[None].astype(np.uint8) * 255
    )
    decoder = Decoder("binary_connected", (0.5,), 3, "background", 26)
    output = SegOutput(str(tmp_path / "seg.zarr"), "seg", "zarr3", (5, 8, 7), relabel=relabel, pyramid=False)  # type: ignore[arg-type]
    j = SegmentationJob(SegInput(str(tmp_path / "specks.zarr"), "m"), decoder, output, (5, 8, 14), "{}")
    result = run_serially(j)
    whole = decode_in_memory(mask[None].astype(np.uint8) * 255, decoder)
    want = sequential(whole) if relabel == "sequential" else whole
    np.testing.assert_array_equal(read(j), want)
    assert result["objects"] == len(np.unique(want)) - 1 > 1
    assert len(tuned) >= 3 * 12  # label, link and write of each of the 12 blocks, at least
    # the labels are kept as labelled, their renaming beside them, composed with the numbers at the write
    assert any(renamed) == (relabel == "sequential")


def test_a_blocks_labels_file_keeps_its_renaming_and_old_files_load(tmp_path: Path) -> None:
    from workers.segmentation.steps import _load_labelling, _load_packed, _save_packed

    labels = np.array([[[0, 1, 2], [3, 3, 0]]], dtype=np.uint32)
    renaming = np.array([0, 1, 0, 2], dtype=np.uint32)  # label 2 dropped, 3 becomes 2
    _save_packed(tmp_path / "new.npy.blosc", labels, renaming)
    got, table = _load_labelling(tmp_path / "new.npy.blosc")
    assert got.dtype == np.uint8 and table is not None
    np.testing.assert_array_equal(got, labels)
    np.testing.assert_array_equal(table, renaming)
    np.testing.assert_array_equal(_load_packed(tmp_path / "new.npy.blosc"), [[[0, 1, 0], [2, 2, 0]]])
    _save_packed(tmp_path / "old.npy.blosc", labels)  # a file from before renamings: the labels alone
    got, table = _load_labelling(tmp_path / "old.npy.blosc")
    assert table is None
    np.testing.assert_array_equal(_load_packed(tmp_path / "old.npy.blosc"), labels)
