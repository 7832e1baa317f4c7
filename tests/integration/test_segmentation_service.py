"""Segmentation jobs through the REST service: submitted, watched, refused (422 naming the field, 409
on another job's output), cancelled, and resumed after ``kill -9`` of the service with the labels of
an uninterrupted run; and through ``pytc run``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
from scipy import ndimage

from tests.integration.service_fixtures import assert_problem, make_service, wait_for_state
from volumes.box import Box
from volumes.labels.decoders import Decoder
from volumes.labels.whole import decode_in_memory, sequential
from volumes.open import open_volume
from volumes.pyramid import downsample_labels
from workers.inference.ledger import done_count

FINAL = ("succeeded", "failed", "cancelled")
SHAPE = (8, 32, 64)


def make_pred(root: Path) -> np.ndarray:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    pred = ndimage.gaussian_filter(rng.random((2, *SHAPE)), (0, 1, 2, 2))
    pred = ((pred - pred.min()) / (pred.max() - pred.min()) * 255).astype(np.uint8)
    group = zarr.open_group(root / "pred.zarr", mode="w")
    group.create_array("mito", data=pred, chunks=(2, 8, 32, 32))
    group.create_array("flat", data=pred[0], chunks=(8, 32, 32))  # 3-D: not a prediction
    return pred


def seg_doc(output: str, **decoder: Any) -> dict[str, Any]:
    return {
        "kind": "segmentation",
        "input": {"path": "pred.zarr", "dataset": "mito"},
        "decoder": {"name": "bc_connected", "thres1": 0.5, "thres2": 0.6, "thres_small": 8, **decoder},
        "output": {"path": output, "dataset": "seg", "chunks": [4, 8, 8]},
        "compute": {"block_shape": [4, 8, 8]},  # 64 blocks: long enough to be cancelled or killed
    }


def labels(path: Path) -> np.ndarray:
    volume = open_volume(path, "seg")
    return volume.read(Box((0, 0, 0), volume.shape))


def expected(pred: np.ndarray) -> np.ndarray:
    return sequential(
        decode_in_memory(pred, Decoder("bc_connected", (0.5, 0.6), 8, "background", 26, (1, 5, 5)))
    )


def post(url: str, doc: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=doc, timeout=60)


@pytest.mark.slow
def test_segmentation_jobs_through_the_service(tmp_path: Path) -> None:
    root = tmp_path / "root"
    pred = make_pred(root)
    service = make_service(root, tmp_path / "state")
    try:
        service.start()
        url = service.url
        # refused at the door, naming the field
        bad = seg_doc("bad.zarr", thres1=2.0)
        assert any(e["loc"] == "decoder.thres1" for e in assert_problem(post(url, bad), 422)["errors"])
        agglo = {**seg_doc("bad.zarr"), "decoder": {"name": "affinity_agglomerate", "thresholds": [0.6, 0.3]}}
        assert any(e["loc"] == "decoder.thresholds" for e in assert_problem(post(url, agglo), 422)["errors"])
        other = seg_doc("bad.zarr", thres=0.5)  # binary_connected's parameter
        assert any(e["loc"] == "decoder.thres" for e in assert_problem(post(url, other), 422)["errors"])
        flat = {**seg_doc("bad.zarr"), "input": {"path": "pred.zarr", "dataset": "flat"}}
        body = assert_problem(post(url, flat), 422)
        assert body["errors"][0]["loc"].startswith("input"), body
        outside = {**seg_doc("bad.zarr"), "output": {"path": "/elsewhere/seg.zarr"}}
        assert_problem(post(url, outside), 422)

        # submitted, watched, killed, resumed
        job_id = post(url, seg_doc("killed.zarr")).json()["id"]
        markers = root / "killed.zarr" / ".pytc-run" / "seg"
        deadline = time.monotonic() + 180
        while sum(done_count(d)[0] for d in markers.glob("*/done")) < 24:  # the ledger's records
            assert time.monotonic() < deadline, service.log.read_text()[-3000:]
            time.sleep(0.05)
        service.kill9()
        assert not (root / "killed.zarr" / "seg.objects.csv").exists()
        service.start()
        final = wait_for_state(url, job_id, FINAL)
        assert final["state"] == "succeeded", final
        assert final["result"]["steps_skipped"] >= 24 and final["result"]["resumed"]
        np.testing.assert_array_equal(labels(root / "killed.zarr"), expected(pred))
        assert (root / "killed.zarr" / "seg.objects.csv").is_file()
        image = json.loads((root / "killed.zarr" / "seg" / "zarr.json").read_text())["attributes"]["ome"]
        assert "image-label" in image and len(image["multiscales"][0]["datasets"]) == 4
        level1 = open_volume(root / "killed.zarr", "seg/1")  # the label pyramid, a stage of the job
        np.testing.assert_array_equal(
            level1.read(Box((0, 0, 0), level1.shape)), downsample_labels(expected(pred), (2, 2, 2))
        )
        assert not markers.exists()  # the run folder goes once the output is complete

        # another job's output is a 409; the same job again is its own output, complete
        assert_problem(post(url, seg_doc("killed.zarr", thres_small=9)), 409)

        # cancelled
        job_id = post(url, seg_doc("cancelled.zarr")).json()["id"]
        wait_for_state(url, job_id, ("running",))
        httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=30)
        assert wait_for_state(url, job_id, FINAL)["state"] == "cancelled"
    finally:
        service.stop()
