"""Training jobs through ``pytc-serve``: a real service process on 127.0.0.1, real SQLite, an embedded
Dask cluster. Submit and watch, exact resume and restart, register then infer by name, cancel,
bad inputs, and a ``kill -9`` of the service mid-training."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from service.client import PytcClient
from tests.integration.service_fixtures import (
    Service,
    assert_problem,
    dumps,
    make_service,
    running_service,
    tree,
    wait_for_state,
)
from tests.training_helpers import same_weights, training_doc, write_data

FINAL = ("succeeded", "failed", "cancelled")
STEP = {"kind": "step", "milestones": [3], "gamma": 0.5}
PYTC_KEYS = {"state_dict", "optimizer", "lr_scheduler", "iteration"}


@dataclass
class World:
    service: Service
    root: Path
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.service.url

    def submit(self, doc: Any) -> httpx.Response:
        return self.http.post("/v1/jobs", content=dumps(doc), headers={"Content-Type": "application/json"})

    def start(self, doc: dict[str, Any]) -> str:
        response = self.submit(doc)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def wait(self, job_id: str) -> dict[str, Any]:
        return wait_for_state(self.url, job_id, FINAL, timeout_s=120)

    def run(self, doc: dict[str, Any]) -> dict[str, Any]:
        final = self.wait(self.start(doc))
        assert final["state"] == "succeeded", (final, self.service.log.read_text()[-3000:])
        return final


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("service-training")
    root = (base / "root").resolve()
    root.mkdir()
    write_data(root)  # em.zarr: raw, mito, cells, empty, short (12 x 48 x 48)
    with (
        running_service(root, base / "state", PYTC_MAX_CONCURRENT_JOBS="1") as service,
        httpx.Client(base_url=service.url, timeout=120) as http,
    ):
        yield World(service, root, http)


@pytest.fixture(scope="module")
def registered(world: World) -> dict[str, Any]:
    """A short run registered as ``served-unet``; its checkpoint starts other tests' runs."""
    doc = training_doc(**{"solver.iterations": 4, "checkpoint.dir": "runs/registered"})
    return world.run({**doc, "register_as": "served-unet"})


def checkpoint(path: str | Path) -> dict[str, Any]:
    loaded: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return loaded


def iterations_in(folder: Path) -> list[int]:
    return sorted(int(p.name[11:16]) for p in folder.glob("checkpoint_*.pth.tar"))


def test_a_training_job_over_rest_reports_iterations_and_writes_pytc_checkpoints(world: World) -> None:
    doc = training_doc(**{"solver.iterations": 6, "checkpoint.dir": "runs/first"})
    with PytcClient(world.url) as client:
        job = client.submit(doc)
        assert job["kind"] == "training" and job["state"] == "queued"
        events = list(client.events(job["id"]))
    final = events[-1].data
    assert final["state"] == "succeeded", final
    progress = final["progress"]
    assert progress["unit"] == "iterations" and progress["done"] == progress["total"] == 6
    assert progress["fraction"] == 1.0 and progress["lr"] == pytest.approx(0.01)
    assert progress["loss"] is not None and progress["rate"] > 0
    done = [e.data["progress"]["done"] for e in events]
    assert done == sorted(done)
    folder = world.root / "runs" / "first"
    assert iterations_in(folder) == [2, 4, 6]
    result = final["result"]
    assert result["checkpoint"] == str(folder / "checkpoint_00006.pth.tar") and result["iteration"] == 6
    assert result["start_iteration"] == 0 and result["validation"] == []
    ckpt = checkpoint(result["checkpoint"])
    assert ckpt.keys() >= PYTC_KEYS and ckpt["iteration"] == 6


def test_exact_resume_through_the_service(world: World) -> None:
    common = {"solver.schedule": STEP, "solver.save_every": 2}
    straight = world.start(training_doc(**common, **{"solver.iterations": 8, "checkpoint.dir": "runs/a"}))
    half = world.start(training_doc(**common, **{"solver.iterations": 4, "checkpoint.dir": "runs/b"}))
    a, b = world.wait(straight), world.wait(half)
    assert a["state"] == b["state"] == "succeeded", (a, b)
    resume = {
        "solver.iterations": 8,
        "checkpoint.dir": "runs/c",
        "checkpoint.resume_from": "runs/b/checkpoint_00004.pth.tar",
    }
    c = world.run(training_doc(**common, **resume))["result"]
    assert c["start_iteration"] == 4 and c["resumed_from"] == b["result"]["checkpoint"]
    assert c["iteration"] == 8 and iterations_in(world.root / "runs" / "c") == [6, 8]
    assert same_weights(a["result"]["checkpoint"], c["checkpoint"])  # torch.equal for every tensor
    assert not same_weights(a["result"]["checkpoint"], b["result"]["checkpoint"])


def test_restart_starts_at_iteration_0_from_the_given_weights(
    world: World, registered: dict[str, Any]
) -> None:
    source = registered["result"]["checkpoint"]
    restart = {"checkpoint.resume_from": source, "checkpoint.restart": True, "checkpoint.dir": "runs/restart"}
    final = world.run(training_doc(**restart, **{"solver.iterations": 2, "solver.save_every": 1}))
    result, progress = final["result"], final["progress"]
    assert result["start_iteration"] == 0 and result["resumed_from"] is None and result["iteration"] == 2
    assert progress["done"] == progress["total"] == 2
    folder = world.root / "runs" / "restart"
    assert iterations_in(folder) == [1, 2]
    assert checkpoint(folder / "checkpoint_00001.pth.tar")["iteration"] == 1
    # The weights it started from are the checkpoint's: the same as fine-tuning from it.
    init = {"model.init": source, "checkpoint.dir": "runs/init", "solver.iterations": 2}
    tuned = world.run(training_doc(**init))["result"]
    assert same_weights(result["checkpoint"], tuned["checkpoint"])
    assert not same_weights(result["checkpoint"], source)


def test_register_as_lists_the_model_and_an_inference_job_names_it(
    world: World, registered: dict[str, Any]
) -> None:
    result = registered["result"]
    assert result["registered_as"] == "served-unet"
    models = {m["name"]: m for m in world.http.get("/v1/models").json()["models"]}
    model = models["served-unet"]
    assert model["kind"] == "architecture" and model["architecture"] == "unet3d"
    assert model["checkpoint"] == result["checkpoint"] and model["sha256"] == result["sha256"]
    assert not (
        world.service.state_dir / "models.json"
    ).exists()  # the service's registry, not pytc run's file
    infer = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"name": "served-unet"},
        "window": {"patch_size": [3, 17, 17], "stride": [2, 8, 8], "batch_size": 4},
        "output": {"path": "pred.zarr", "dataset": "mito", "activation": ["sigmoid"], "chunks": [12, 48, 48]},
    }
    final = world.run(infer)
    assert final["result"]["blocks_total"] == 1
    assert (world.root / "pred.zarr").is_dir()


def test_cancel_over_rest_saves_a_checkpoint_and_a_second_job_in_its_folder_is_409(
    world: World, registered: dict[str, Any]
) -> None:
    doc = training_doc(
        **{"solver.iterations": 100000, "solver.save_every": None, "checkpoint.dir": "runs/long"}
    )
    job_id = world.start(doc)
    deadline = time.monotonic() + 60
    while (world.http.get(f"/v1/jobs/{job_id}").json()["progress"] or {}).get("done", 0) < 1:
        assert time.monotonic() < deadline, world.service.log.read_text()[-3000:]
        time.sleep(0.1)
    started = time.monotonic()  # the pre-flight of a submission runs beside the training task
    other = assert_problem(
        world.submit(training_doc(**{"solver.seed": 1, "checkpoint.dir": "runs/long"})), 409
    )
    assert other["type"].endswith("output-in-use") and time.monotonic() - started < 30
    # An inference job's model check, too, is answered while the training holds the GPU slot.
    started = time.monotonic()
    infer = world.submit(
        {
            "kind": "inference",
            "input": {"path": "em.zarr", "dataset": "raw"},
            "model": {"name": "served-unet"},
            "window": {"patch_size": [3, 17, 17], "stride": [2, 8, 8], "batch_size": 4},
            "output": {"path": "during.zarr", "dataset": "mito", "chunks": [12, 48, 48]},
        }
    )
    assert infer.status_code == 202 and time.monotonic() - started < 30, infer.text
    assert world.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    final = world.wait(job_id)
    assert final["state"] == "cancelled" and final["error"]["title"] == "cancelled", final
    assert "saved" in final["error"]["detail"]
    saved = iterations_in(world.root / "runs" / "long")
    assert len(saved) == 1 and 0 < saved[0] < 100000
    assert (
        checkpoint(world.root / "runs" / "long" / f"checkpoint_{saved[0]:05d}.pth.tar")["iteration"]
        == saved[0]
    )
    assert world.wait(infer.json()["id"])["state"] == "succeeded"  # it ran once the GPU was free


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"data.label.dataset": "short"}, "data.label", "differs from the spatial shape"),
        ({"sampling.patch_size": [13, 17, 17]}, "sampling.patch_size", "larger than the region"),
        ({"model.config.out_channels": 3}, "model.config.out_channels", "need 1"),
        ({"checkpoint.dir": "/tmp/elsewhere"}, "checkpoint.dir", "outside the data roots"),
        ({"data.image.dataset": "nope"}, "data.image", "not found"),
    ],
    ids=["shape mismatch", "patch too large", "channels", "outside roots", "missing image"],
)
def test_bad_training_jobs_are_422_naming_the_field(
    world: World, changes: dict[str, Any], field: str, words: str
) -> None:
    before = tree(world.root)
    body = assert_problem(world.submit(training_doc(**changes)), 422)
    errors = {e["loc"]: e["msg"] for e in body["errors"]}
    assert field in errors and words in errors[field], body
    assert tree(world.root) == before


def test_a_checkpoint_of_another_architecture_is_422_naming_the_layers(
    world: World, registered: dict[str, Any]
) -> None:
    changes = {"model.config.filters": [2, 6], "model.init": registered["result"]["checkpoint"]}
    body = assert_problem(world.submit(training_doc(**changes)), 422)
    errors = {e["loc"]: e["msg"] for e in body["errors"]}
    assert "down_layers.1.1.0.weight: expected (6, 2, 1, 3, 3), found (4, 2, 1, 3, 3)" in errors["model.init"]


def test_kill_9_of_the_service_mid_training_resumes_from_the_latest_checkpoint(tmp_path: Path) -> None:
    root = (tmp_path / "root").resolve()
    root.mkdir()
    write_data(root)
    service = make_service(root, tmp_path / "state")
    total = 400
    doc = training_doc(**{"solver.iterations": total, "solver.save_every": 10, "checkpoint.keep_last": 100})
    folder = root / "runs" / "a"
    try:
        service.start()
        response = httpx.post(f"{service.url}/v1/jobs", content=dumps(doc), timeout=120)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 120
        while not iterations_in(folder):
            assert time.monotonic() < deadline, service.log.read_text()[-3000:]
            time.sleep(0.02)
        service.kill9()  # its worker processes exit with it
        latest = max(iterations_in(folder))
        assert 0 < latest < total, "training finished before the kill; make it longer"
        service.start()
        final = wait_for_state(service.url, job_id, FINAL, timeout_s=180)
        assert final["state"] == "succeeded", (final, service.log.read_text()[-3000:])
        result = final["result"]
        start = result["start_iteration"]  # a worker slow to notice the kill may have saved more
        print(f"killed after checkpoint {latest}/{total}; the next attempt began at {start}")
        assert latest <= start < total and result["iteration"] == total
        assert result["resumed_from"] == str(folder / f"checkpoint_{start:05d}.pth.tar")
        assert result["attempts"] == 2 and final["progress"]["done"] == total
    finally:
        service.stop()
