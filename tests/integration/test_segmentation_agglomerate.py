"""``kind: segmentation`` with ``affinity_agglomerate``: the job's labels equal the whole-volume run
(volumes.labels.agglomerate) voxel for voxel, several thresholds give one labels image each, equal to
a single-threshold job's, a stopped run resumes to the same labels, and inputs without three
affinity channels, a halo, or another's group are refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from service.documents.segmentation import parse_segmentation
from volumes.box import Box
from volumes.labels.agglomerate import Agglomeration, agglomerate_in_memory, fragments_in_memory
from volumes.labels.output import read_table
from volumes.open import open_volume
from volumes.synth import affinities_from_labels, generate_em_volume
from workers.errors import OutputExistsError, SpecError
from workers.segmentation.job import SegmentationJob
from workers.segmentation.run import SegmentationRun, run_serially
from workers.segmentation.steps import AGGLOMERATE, WRITE, run_step

BLOCK = (8, 32, 32)
THRESHOLDS = [0.1, 0.3, 0.6]


@pytest.fixture(scope="module")
def pred() -> np.ndarray:
    cells = generate_em_volume((16, 64, 64), seed=5, cell_size_nm=300.0).cells
    return affinities_from_labels(cells, seed=5)


def job(
    root: Path,
    pred: np.ndarray,
    output: str,
    thresholds: list[float] | None = None,
    fmt: str = "zarr3",
    **decoder: object,
) -> SegmentationJob:
    if not (root / "pred.zarr").exists():
        zarr.save_array(str(root / "pred.zarr"), pred)
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr"},
        "decoder": {
            "name": "affinity_agglomerate",
            "thresholds": thresholds or [0.3],
            "merge_function": "mean",
            **decoder,
        },
        "output": {"path": output, "dataset": "cells", "chunks": list(BLOCK), "format": fmt},
        "compute": {"block_shape": list(BLOCK)},
    }
    return parse_segmentation(doc, [root])


def read(path: str, dataset: str) -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box((0, 0, 0), volume.shape))


def by_first_fragment(labels: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    """Segments renumbered 1..N in the order of their lowest fragment (``relabel: sequential``)."""
    ids = np.unique(labels[labels != 0])
    lowest = np.array([fragments[labels == i].min() for i in ids])
    rank = np.zeros(int(ids.max()) + 1, np.int64)
    rank[ids[np.argsort(lowest)]] = np.arange(1, ids.size + 1)
    return rank[labels]


@pytest.mark.parametrize("merge_function", ["mean", "aff50_his256"])
def test_the_job_equals_the_whole_volume_run(tmp_path: Path, pred: np.ndarray, merge_function: str):
    j = job(tmp_path, pred, "seg.zarr", merge_function=merge_function)
    result = run_serially(j)
    agg = Agglomeration(thresholds=(0.3,), merge_function=merge_function)
    [whole] = agglomerate_in_memory(pred, agg)
    labels = read(j.output.path, "cells")
    np.testing.assert_array_equal(labels, by_first_fragment(whole, fragments_in_memory(pred, agg)))
    assert result["objects"] == int(labels.max()) > 5
    table = read_table(Path(result["table"]))
    assert table.shape[0] == result["objects"] and int(table[:, 1].sum()) == int((labels > 0).sum())
    assert [i["dataset"] for i in result["images"]] == ["cells"]


@pytest.mark.parametrize("fmt", ["zarr3", "zarr2", "n5"])
def test_several_thresholds_give_an_image_each_equal_to_a_single_thresholds_job(
    tmp_path: Path, pred: np.ndarray, fmt: str
):
    j = job(tmp_path, pred, "seg.zarr", THRESHOLDS, fmt)
    result = run_serially(j)
    names = [f"cells/threshold_{t:g}" for t in THRESHOLDS]
    assert [i["dataset"] for i in result["images"]] == names
    assert [i["threshold"] for i in result["images"]] == THRESHOLDS
    counts = []
    for t, name, image in zip(THRESHOLDS, names, result["images"], strict=True):
        labels = read(j.output.path, name)
        single = job(tmp_path, pred, f"single_{t}.zarr", [t], fmt)
        run_serially(single)
        np.testing.assert_array_equal(labels, read(single.output.path, "cells"))
        table = read_table(Path(image["table"]))
        assert Path(image["table"]) == tmp_path / "seg.zarr" / "cells" / f"threshold_{t:g}.objects.csv"
        assert table.shape[0] == image["objects"] == int(labels.max())
        attrs = open_volume(j.output.path, name).attrs["pytc"]
        assert attrs["complete"] and attrs["threshold"] == t and attrs["layout_key"]
        counts.append(image["objects"])
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]  # higher: fewer segments
    group = tmp_path / "seg.zarr" / "cells"
    if fmt == "n5":
        attrs = json.loads((group / "attributes.json").read_text())
        listed = attrs["labels"]
    else:
        attrs = dict(zarr.open_group(str(group), mode="r").attrs)
        listed = attrs["ome"]["labels"] if fmt == "zarr3" else attrs["labels"]
    assert listed == [n.rpartition("/")[2] for n in names]
    assert attrs["pytc"]["complete"] and attrs["pytc"]["kind"] == "segmentation"
    assert not (tmp_path / "seg.zarr" / ".pytc-run").exists() or not any(
        (tmp_path / "seg.zarr" / ".pytc-run").iterdir()
    )
    again = run_serially(j)  # complete: nothing runs, the same images
    assert again["steps_skipped"] > 0 and [i["objects"] for i in again["images"]] == counts


@pytest.mark.parametrize("stop_before", [AGGLOMERATE, WRITE])
def test_a_stopped_run_resumes_to_the_same_labels(tmp_path: Path, pred: np.ndarray, stop_before: int):
    j = job(tmp_path, pred, "seg.zarr", THRESHOLDS)
    run = SegmentationRun.start(j)
    written = 0
    while tasks := run.ready():
        if tasks[0].step == stop_before and (stop_before != WRITE or written):
            break
        for task in tasks[:3] if tasks[0].step == WRITE else tasks:
            run_step(task.plan, task.step, task.block)
            run.finished(task)
            written += task.step == WRITE
    again = run_serially(j)
    assert again["resumed"] and again["steps_skipped"] > 0
    clean = job(tmp_path, pred, "clean.zarr", THRESHOLDS)
    run_serially(clean)
    for t in THRESHOLDS:
        name = f"cells/threshold_{t:g}"
        np.testing.assert_array_equal(read(j.output.path, name), read(clean.output.path, name))


def test_another_jobs_output_is_refused_and_overwrite_replaces_it(tmp_path: Path, pred: np.ndarray):
    run_serially(job(tmp_path, pred, "seg.zarr", [0.3]))  # an image at seg.zarr/cells
    several = job(tmp_path, pred, "seg.zarr", THRESHOLDS)
    with pytest.raises(OutputExistsError) as caught:
        SegmentationRun.start(several)
    assert caught.value.field == "output.path"
    replaced = parse_segmentation(
        {
            **json.loads(several.document),
            "output": {**json.loads(several.document)["output"], "overwrite": True},
        },
        [tmp_path],
    )
    run_serially(replaced)
    assert open_volume(replaced.output.path, "cells/threshold_0.3").attrs["pytc"]["complete"]
    other = job(tmp_path, pred, "seg.zarr", [0.2, 0.4])  # another job's group
    with pytest.raises(OutputExistsError):
        SegmentationRun.start(other)
    with pytest.raises(OutputExistsError):  # one image where a group of them is
        SegmentationRun.start(job(tmp_path, pred, "seg.zarr", [0.3]))
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_group("cells")
    foreign = parse_segmentation(
        {
            **json.loads(other.document),
            "output": {**json.loads(other.document)["output"], "path": "plain.zarr", "overwrite": True},
        },
        [tmp_path],
    )
    with pytest.raises(OutputExistsError) as caught:
        SegmentationRun.start(foreign)
    assert caught.value.field == "output.dataset" and "no segmentation job made" in str(caught.value)
    assert (tmp_path / "plain.zarr" / "cells").is_dir()


def test_inputs_without_three_affinity_channels_are_refused(tmp_path: Path, pred: np.ndarray):
    j = job(tmp_path, pred[:2], "seg.zarr")
    with pytest.raises(SpecError) as caught:
        SegmentationRun.start(j)
    assert caught.value.field == "input.path" and "3 channel(s)" in str(caught.value)
    assert not (tmp_path / "seg.zarr").exists()


def test_a_halo_is_refused(tmp_path: Path, pred: np.ndarray):
    zarr.save_array(str(tmp_path / "pred.zarr"), pred)
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr"},
        "decoder": {"name": "affinity_agglomerate"},
        "output": {"path": "seg.zarr", "dataset": "cells"},
        "compute": {"halo": [2, 8, 8]},
    }
    with pytest.raises(SpecError) as caught:
        parse_segmentation(doc, [tmp_path])
    assert caught.value.field == "compute.halo"
