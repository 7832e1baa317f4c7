"""A segmentation job with an ``inference:`` stage instead of ``input:``, through the REST service:
refused at the door naming the field (``inference.<field>``, ``input``, ``channels``), the output
guard over the stage's output too, ``kill -9`` of the service during the inference stage and
resumed to the labels of the kept prediction, the progress counting both stages, a cancelled job
submitted again resuming, and a second job over the same stage running no inference again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.cluster_fixtures import done_blocks
from tests.integration.service_fixtures import (
    assert_problem,
    job_doc,
    make_data,
    make_service,
    read_output,
    wait_for_state,
)
from volumes.labels.decoders import Decoder
from volumes.labels.whole import decode_in_memory, sequential

FINAL = ("succeeded", "failed", "cancelled")
SHAPE = (12, 64, 64)


def stage_doc(pred: str, seg: str, dataset: str = "seg", **extra: Any) -> dict[str, Any]:
    inference = job_doc(pred, compute={"block_shape": [4, 16, 16]})
    del inference["kind"]
    return {
        "kind": "segmentation",
        "inference": inference,
        "channels": [1],
        "decoder": {"name": "binary_connected", "thres": 0.5, "thres_small": 4},
        "output": {"path": seg, "dataset": dataset, "chunks": [4, 16, 16]},
        "compute": {"block_shape": [4, 32, 32]},
        **extra,
    }


def post(url: str, doc: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=doc, timeout=300)  # the first waits for a worker


def expected_labels(pred_path: Path, thres_small: int = 4) -> np.ndarray:
    """The whole-volume decoder on the kept prediction's channel 1."""
    pred = read_output(pred_path)
    return sequential(
        decode_in_memory(pred[1:2], Decoder("binary_connected", (0.5,), thres_small, "background", 26))
    )


class Locs(list[str]):
    """The fields a problem names; its text shown when an assertion on it fails."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(e["loc"] for e in body["errors"])
        self.body = body

    def __repr__(self) -> str:
        return f"{list(self)} in {self.body}"


def locs(response: httpx.Response, status: int) -> Locs:
    return Locs(assert_problem(response, status))


@pytest.mark.slow
def test_segmentation_with_an_inference_stage_through_the_service(tmp_path: Path) -> None:
    root = make_data(tmp_path / "root", SHAPE)
    # a loaded machine: the model check may wait for a busy core
    service = make_service(
        root, tmp_path / "state", PYTC_MODEL_PROBE_TIMEOUT_S="120", PYTC_MODEL_CHECK_TIMEOUT_S="240"
    )
    try:
        service.start()
        url = service.url
        # refused at the door, naming the field
        bad_window = stage_doc("p.zarr", "s.zarr")
        bad_window["inference"]["window"]["patch_size"] = [5, 17]
        assert "inference.window.patch_size" in locs(post(url, bad_window), 422)
        both = {**stage_doc("p.zarr", "s.zarr"), "input": {"path": "em.zarr", "dataset": "raw"}}
        assert locs(post(url, both), 422)[0] == "input"
        assert "channels" in locs(post(url, stage_doc("p.zarr", "s.zarr", channels=[2])), 422)  # 2 channels
        assert "channels" in locs(post(url, stage_doc("p.zarr", "s.zarr", channels=[0, 1])), 422)
        no_model = stage_doc("p.zarr", "s.zarr")
        no_model["inference"]["model"] = {"torchscript": "missing.pt"}
        assert locs(post(url, no_model), 422)[0].startswith("inference.model")
        same = stage_doc("p.zarr", "p.zarr", dataset="pred")
        assert locs(post(url, same), 422)[0] == "output.dataset"

        # submitted; the service killed during the inference stage; resumed to the kept prediction's labels
        job_id = post(url, stage_doc("pred.zarr", "seg.zarr")).json()["id"]
        deadline = time.monotonic() + 300
        while done_blocks(root / "pred.zarr") < 4:  # 4 of the stage's 48 blocks written
            assert time.monotonic() < deadline, service.log.read_text()[-3000:]
            time.sleep(0.05)
        service.kill9()
        assert not (root / "seg.zarr" / "seg").exists()  # the segmentation had not started
        service.start()
        final = wait_for_state(url, job_id, FINAL)
        assert final["state"] == "succeeded", final
        result = final["result"]
        stage = result["inference"]
        assert stage["output_path"] == str(root / "pred.zarr") and stage["blocks_skipped"] >= 1
        np.testing.assert_array_equal(
            read_output(root / "seg.zarr", "seg"), expected_labels(root / "pred.zarr")
        )
        progress = final["progress"]
        parts = progress["parts"]
        assert parts["inference"][0] == parts["inference"][1] > 0
        assert progress["done"] == progress["total"] == sum(t for _, t in parts.values())

        # the stage's output belongs to that job: another inference section writing it is a 409
        other = stage_doc("pred.zarr", "seg.zarr", dataset="seg2")
        other["inference"]["window"]["stride"] = [1, 8, 8]
        assert "inference.output.path" in locs(post(url, other), 409)

        # a second decoding of the same stage: its inference is finished, nothing runs again
        again = stage_doc("pred.zarr", "seg.zarr", dataset="seg9")
        again["decoder"]["thres_small"] = 9
        final = wait_for_state(url, post(url, again).json()["id"], FINAL)
        assert final["state"] == "succeeded", final
        stage = final["result"]["inference"]
        assert stage["blocks_skipped"] == stage["blocks_total"]
        np.testing.assert_array_equal(
            read_output(root / "seg.zarr", "seg9"), expected_labels(root / "pred.zarr", thres_small=9)
        )

        # cancelled during its stage, then submitted again: it resumes and finishes
        doc = stage_doc("pred2.zarr", "seg2.zarr")
        job_id = post(url, doc).json()["id"]
        wait_for_state(url, job_id, ("running",))
        httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=30)
        assert wait_for_state(url, job_id, FINAL)["state"] == "cancelled"
        final = wait_for_state(url, post(url, doc).json()["id"], FINAL)
        assert final["state"] == "succeeded", final
        np.testing.assert_array_equal(
            read_output(root / "seg2.zarr", "seg"), expected_labels(root / "pred2.zarr")
        )
    finally:
        service.stop()
