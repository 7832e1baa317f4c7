"""``kind: segmentation`` with ``affinity_agglomerate``: the job's labels equal the in-memory blockwise
steps (volumes.labels.agglomerate) voxel for voxel, a stopped run resumes to the same labels, and
inputs without three affinity channels are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from service.documents.segmentation import parse_segmentation
from tests.agglomerate_figures import affinities_from_labels
from volumes.box import Box
from volumes.labels.agglomerate import Agglomeration, agglomerate_blockwise, agglomerate_in_memory
from volumes.metrics.reference import adapted_rand_error
from volumes.open import open_volume
from volumes.synth import generate_em_volume
from workers.errors import SpecError
from workers.segmentation.job import SegmentationJob
from workers.segmentation.run import SegmentationRun, run_serially
from workers.segmentation.steps import AGGLOMERATE, run_step

BLOCK, HALO = (8, 32, 32), (2, 8, 8)


@pytest.fixture(scope="module")
def pred() -> np.ndarray:
    cells = generate_em_volume((16, 64, 64), seed=5, cell_size_nm=300.0).cells
    return affinities_from_labels(cells, seed=5)


def job(root: Path, pred: np.ndarray, output: str, **decoder: object) -> SegmentationJob:
    if not (root / "pred.zarr").exists():
        zarr.save_array(str(root / "pred.zarr"), pred)
    doc = {
        "kind": "segmentation",
        "input": {"path": "pred.zarr"},
        "decoder": {"name": "affinity_agglomerate", "thresholds": [0.3], "merge_function": "mean", **decoder},
        "output": {"path": output, "dataset": "cells", "chunks": list(BLOCK)},
        "compute": {"block_shape": list(BLOCK), "halo": list(HALO)},
    }
    return parse_segmentation(doc, [root])


def read(j: SegmentationJob) -> np.ndarray:
    volume = open_volume(j.output.path, j.output.dataset)
    return volume.read(Box((0, 0, 0), volume.shape))


def by_first_seed(labels: np.ndarray, fragments: np.ndarray) -> np.ndarray:
    """Segments renumbered 1..N in the order of their lowest fragment (``relabel: sequential``)."""
    ids = np.unique(labels[labels != 0])
    lowest = np.array([fragments[labels == i].min() for i in ids])
    rank = np.zeros(int(ids.max()) + 1, np.int64)
    rank[ids[np.argsort(lowest)]] = np.arange(1, ids.size + 1)
    return rank[labels]


@pytest.mark.parametrize("merge_function", ["mean", "aff50_his256"])
def test_the_job_equals_the_blockwise_steps_in_memory(tmp_path: Path, pred: np.ndarray, merge_function: str):
    j = job(tmp_path, pred, "seg.zarr", merge_function=merge_function)
    result = run_serially(j)
    agg = Agglomeration(thresholds=(0.3,), merge_function=merge_function, margin=HALO)
    [expected], fragments, edges = agglomerate_blockwise(pred, agg, BLOCK)
    labels = read(j)
    np.testing.assert_array_equal(labels, by_first_seed(expected, fragments))
    assert result["objects"] == int(labels.max()) > 5
    table = np.loadtxt(result["table"], delimiter=",", skiprows=1)
    assert table.shape[0] == result["objects"] and int(table[:, 1].sum()) == int((labels > 0).sum())
    [whole] = agglomerate_in_memory(pred, agg)
    assert adapted_rand_error(whole, labels)[0] < 0.01
    assert edges.n > 0


def test_a_run_stopped_after_the_graph_resumes_to_the_same_labels(tmp_path: Path, pred: np.ndarray):
    j = job(tmp_path, pred, "seg.zarr")
    run = SegmentationRun.start(j)
    while tasks := run.ready():
        if tasks[0].step == AGGLOMERATE:
            break
        for task in tasks:
            run_step(task.plan, task.step, task.block)
            run.finished(task)
    again = run_serially(j)
    assert again["resumed"] and again["steps_skipped"] > 0
    labels = read(j)
    clean = job(tmp_path, pred, "clean.zarr")
    run_serially(clean)
    np.testing.assert_array_equal(labels, read(clean))


def test_inputs_without_three_affinity_channels_are_refused(tmp_path: Path, pred: np.ndarray):
    j = job(tmp_path, pred[:2], "seg.zarr")
    with pytest.raises(SpecError) as caught:
        SegmentationRun.start(j)
    assert caught.value.field == "input.path" and "3 channel(s)" in str(caught.value)
    assert not (tmp_path / "seg.zarr").exists()
