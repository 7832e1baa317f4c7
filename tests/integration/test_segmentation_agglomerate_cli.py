"""``affinity_agglomerate`` with several thresholds through ``pytc run`` and ``POST /v1/jobs``: one
labels image per threshold (``<dataset>/threshold_<t>``), each the whole-volume run's labels at that
threshold, each with its table, found by ``pytc evaluate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
import zarr

from tests.integration.service_fixtures import running_service, wait_for_state
from volumes.box import Box
from volumes.labels.agglomerate import Agglomeration, agglomerate_in_memory, fragments_in_memory
from volumes.labels.output import read_table
from volumes.metrics.scores import adapted_rand
from volumes.metrics.table import table_of
from volumes.open import open_volume
from volumes.synth import affinities_from_labels, generate_em_volume

REPO = Path(__file__).resolve().parents[2]
THRESHOLDS = [0.1, 0.3, 0.6]


def make_data(root: Path) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    cells = generate_em_volume((16, 64, 64), seed=7, cell_size_nm=300.0).cells
    pred = affinities_from_labels(cells, seed=7)
    zarr.open_group(root / "aff.zarr", mode="w").create_array("aff", data=pred, chunks=(3, 8, 32, 32))
    zarr.open_group(root / "gt.zarr", mode="w").create_array("cells", data=cells.astype(np.uint32))
    return pred, cells


def doc(output: str) -> dict[str, object]:
    return {
        "kind": "segmentation",
        "input": {"path": "aff.zarr", "dataset": "aff"},
        "decoder": {"name": "affinity_agglomerate", "thresholds": THRESHOLDS, "merge_function": "mean"},
        "output": {"path": output, "dataset": "cells", "chunks": [8, 32, 32]},
        "compute": {"block_shape": [8, 32, 32]},
    }


def expected(pred: np.ndarray) -> list[np.ndarray]:
    """The whole-volume run per threshold, numbered as ``relabel: sequential`` numbers segments."""
    agg = Agglomeration(thresholds=tuple(THRESHOLDS), merge_function="mean")
    fragments = fragments_in_memory(pred, agg)
    out = []
    for labels in agglomerate_in_memory(pred, agg):
        ids = np.unique(labels[labels != 0])
        lowest = np.array([fragments[labels == i].min() for i in ids])
        rank = np.zeros(int(ids.max()) + 1, np.int64)
        rank[ids[np.argsort(lowest)]] = np.arange(1, ids.size + 1)
        out.append(rank[labels])
    return out


def read(path: Path, dataset: str) -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box((0, 0, 0), volume.shape))


def check_images(path: Path, pred: np.ndarray) -> None:
    for t, whole in zip(THRESHOLDS, expected(pred), strict=True):
        labels = read(path, f"cells/threshold_{t:g}")
        np.testing.assert_array_equal(labels, whole)
        assert read_table(path / "cells" / f"threshold_{t:g}.objects.csv").shape[0] == int(labels.max())


@pytest.mark.slow
def test_pytc_run_writes_an_image_per_threshold_that_pytc_evaluate_reads(tmp_path: Path) -> None:
    pred, cells = make_data(tmp_path)
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(doc("seg.zarr")))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "service", "run", "seg.yaml", "--data-root", str(tmp_path)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for t in THRESHOLDS:
        assert f"threshold {t}: 'cells/threshold_{t:g}'" in done.stdout + done.stderr
    check_images(tmp_path / "seg.zarr", pred)
    name = "cells/threshold_0.6"
    cmd = [sys.executable, "-m", "service", "evaluate", "seg.zarr", "--dataset", name, "--gt", "gt.zarr",
           "--gt-dataset", "cells", "--metrics", "adapted_rand", "--json", "-q",
           "--data-root", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout)["scores"]
    are = adapted_rand(table_of(cells, read(tmp_path / "seg.zarr", name)))["adapted_rand_error"]
    assert scores["adapted_rand_error"] == pytest.approx(are, abs=1e-12) and are < 0.05


@pytest.mark.slow
def test_a_job_with_several_thresholds_through_the_service(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pred, _ = make_data(root)
    with running_service(root, tmp_path / "state") as service:
        response = httpx.post(f"{service.url}/v1/jobs", json=doc("rest.zarr"), timeout=60)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        final = wait_for_state(service.url, job_id, ("succeeded", "failed", "cancelled"))
        assert final["state"] == "succeeded", final
        images = final["result"]["images"]
        assert [i["dataset"] for i in images] == [f"cells/threshold_{t:g}" for t in THRESHOLDS]
        assert [i["threshold"] for i in images] == THRESHOLDS
    check_images(root / "rest.zarr", pred)
