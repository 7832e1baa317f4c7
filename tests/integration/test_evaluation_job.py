"""``kind: evaluation`` end to end: through ``pytc run`` (its embedded Dask cluster runs the block
tasks) and through a real ``pytc-serve`` over REST; the result's figures equal the in-memory
reference; a job naming what cannot be scored is refused naming the field (exit 2, 422)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
import zarr

from service.cli import main
from volumes.metrics import reference as ref

SHAPE = (10, 48, 40)


def write_pair(root: Path) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(5)
    gt = np.zeros(SHAPE, np.uint16)
    for k in range(1, 12):
        lo = [int(rng.integers(0, s - 4)) for s in SHAPE]
        gt[tuple(slice(a, a + int(rng.integers(3, 14))) for a in lo)] = k
    pred = np.roll(gt.astype(np.uint32), 1, axis=1) * 3
    pred[:, 30:] = np.where(pred[:, 30:] > 0, pred[:, 30:] + 1, 0)
    group = zarr.create_group(root / "eval.zarr", zarr_format=3)
    group.create_array("gt", shape=SHAPE, chunks=(4, 16, 16), dtype=gt.dtype)[...] = gt
    group.create_array("seg", shape=SHAPE, chunks=(5, 16, 20), dtype=pred.dtype)[...] = pred
    group.create_array("probs", shape=SHAPE, chunks=SHAPE, dtype="float32")
    return gt, pred


def job(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "kind": "evaluation",
        "segmentation": {"path": "eval.zarr", "dataset": "seg"},
        "ground_truth": {"path": "eval.zarr", "dataset": "gt"},
        "compute": {"block_shape": [5, 16, 20], "blocks_per_task": 2},
    }
    return {**doc, **changes}


def assert_reference(scores: dict[str, Any], gt: np.ndarray, pred: np.ndarray) -> None:
    error, precision, recall = ref.adapted_rand_error(gt, pred)
    split, merge = ref.variation_of_information(gt, pred)
    aps = ref.instance_ap(gt, pred)
    expected = {
        "adapted_rand_error": error,
        "adapted_rand_precision": precision,
        "adapted_rand_recall": recall,
        "voi_split": split,
        "voi_merge": merge,
        "foreground_iou": ref.foreground_iou(gt, pred),
        **aps,
    }
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert scores["voxels"] == gt.size and scores["ap_50"] > 0


@pytest.mark.slow
def test_an_evaluation_job_through_pytc_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt, pred = write_pair(tmp_path)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job()))
    report = tmp_path / "report.json"
    code = main(["run", str(tmp_path / "job.yaml"), "--data-root", str(tmp_path), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads(report.read_text())
    assert_reference(result["scores"], gt, pred)
    assert "blocks 12/12 (100.0%)" in err and "adapted Rand error (SNEMI3D)" in err and "AP-75" in err

    (tmp_path / "bad.yaml").write_text(
        yaml.safe_dump(job(segmentation={"path": "eval.zarr", "dataset": "probs"}))
    )
    assert main(["run", str(tmp_path / "bad.yaml"), "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "error: segmentation.dataset: segmentation" in (err := capsys.readouterr().err), err
    assert "float32 values, not labels" in err

    signed = zarr.open_group(tmp_path / "eval.zarr", mode="a").create_array(
        "signed", shape=SHAPE, chunks=(5, 16, 20), dtype="int32"
    )
    signed[9, 47, 39] = -2  # in the last block: only the run reads it
    (tmp_path / "neg.yaml").write_text(
        yaml.safe_dump(job(segmentation={"path": "eval.zarr", "dataset": "signed"}))
    )
    assert main(["run", str(tmp_path / "neg.yaml"), "--data-root", str(tmp_path), "--quiet"]) == 2
    assert "error: segmentation.path: segmentation" in (err := capsys.readouterr().err), err
    assert "negative id (-2) in the box at (5, 32, 20)" in err


@pytest.mark.slow
def test_an_evaluation_job_over_rest(tmp_path: Path) -> None:
    from tests.integration.service_fixtures import assert_problem, running_service, wait_for_state

    gt, pred = write_pair(tmp_path)
    with running_service(tmp_path, tmp_path / "state") as service:
        schema = httpx.get(f"{service.url}/openapi.json").json()["components"]["schemas"]
        assert {"$ref": "#/components/schemas/EvaluationDocument"} in schema["JobDocument"]["anyOf"]

        posted = httpx.post(f"{service.url}/v1/jobs", json=job(metrics=["ap", "adapted_rand", "voi", "iou"]))
        assert posted.status_code == 202, posted.text
        done = wait_for_state(service.url, posted.json()["id"], ("succeeded", "failed"), timeout_s=120)
        assert done["state"] == "succeeded", done
        assert done["kind"] == "evaluation" and done["progress"]["unit"] == "blocks"
        assert done["progress"]["done"] == done["progress"]["total"] == 12
        assert_reference(done["result"]["scores"], gt, pred)
        assert any(line.startswith("AP-75 (MitoEM)") for line in done["summary"])

        bad = httpx.post(f"{service.url}/v1/jobs", json=job(metrics=["rand"]))
        assert [e["loc"] for e in assert_problem(bad, 422)["errors"]] == ["metrics[0]"]
        outside = httpx.post(f"{service.url}/v1/jobs", json=job(ground_truth={"path": "/etc/x.zarr"}))
        assert "outside the data roots" in assert_problem(outside, 422)["detail"]
        floats = httpx.post(
            f"{service.url}/v1/jobs", json=job(ground_truth={"path": "eval.zarr", "dataset": "probs"})
        )
        assert "ground_truth.dataset" in assert_problem(floats, 422)["detail"]
        region = httpx.post(
            f"{service.url}/v1/jobs", json=job(roi={"offset": [5, 0, 0], "shape": [6, 48, 40]})
        )
        assert assert_problem(region, 422)["detail"].startswith("roi: the region at (5, 0, 0)")


def test_pytc_evaluate_on_a_scheduler_equals_in_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from distributed import LocalCluster

    gt, pred = write_pair(tmp_path)
    flags = ["evaluate", "eval.zarr", "--dataset", "seg", "--gt", "eval.zarr", "--gt-dataset", "gt"]
    flags += ["--data-root", str(tmp_path), "--json", "--quiet", "--block-shape", "5", "16", "20"]
    assert main(flags) == 0
    here = json.loads(capsys.readouterr().out)["scores"]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        assert main([*flags, "--scheduler", cluster.scheduler_address, "--blocks-per-task", "5"]) == 0
    there = json.loads(capsys.readouterr().out)["scores"]
    assert there == pytest.approx(here, rel=1e-12)
    assert_reference(there, gt, pred)


def test_a_cancelled_evaluation_stops_and_says_so(tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    from service.errors import JobCancelledError
    from service.kinds import parse_job
    from service.kinds.base import ParseEnv, RunEnv
    from service.progress import Progress

    write_pair(tmp_path)
    kind, parsed = parse_job(
        job(compute={"block_shape": [1, 16, 20], "blocks_per_task": 1}), ParseEnv((tmp_path,))
    )
    seen: list[Progress] = []
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        env = RunEnv(client, report=seen.append)
        env.report = lambda progress: (
            seen.append(progress),
            env.cancel.set() if progress.done >= 3 else None,
        )
        with pytest.raises(JobCancelledError, match=r"cancelled after \d+ of 60 blocks"):
            kind.run(parsed, env)
    assert 3 <= seen[-1].done < 60 and seen[-1].unit == "blocks"
