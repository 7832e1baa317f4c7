"""Unlucky runs in one ``pytc-serve`` process (a real service on 127.0.0.1, its embedded cluster):
an input that disappears mid-run, a corrupt chunk repaired, a cancel, and the same job submitted
again. Each job fails or stops as it should, and the next one runs on the same workers."""

from __future__ import annotations

import contextlib
import gc
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import ParseEnv, RunEnv
from service.kinds.inference import INFERENCE
from tests.integration.service_fixtures import (
    Service,
    job_doc,
    make_data,
    read_output,
    running_service,
    tree,
    wait_for_state,
)
from volumes.open import open_volume
from workers.inference.ledger import done_count
from workers.inference.run import run_serially

FINAL = ("succeeded", "failed", "cancelled")
BIG = (16, 96, 96)  # 144 blocks of 4x16x16: long enough for something to happen between them


@dataclass
class World:
    service: Service
    root: Path
    outside: Path  # a folder beside the data root, with a volume of the same shape as big/
    http: httpx.Client

    def submit(self, doc: dict[str, Any]) -> str:
        response = self.http.post("/v1/jobs", json=doc)
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id

    def wait(self, job_id: str, states: tuple[str, ...] = FINAL, timeout_s: float = 240) -> dict[str, Any]:
        return wait_for_state(self.service.url, job_id, states, timeout_s=timeout_s)

    def run(self, doc: dict[str, Any]) -> dict[str, Any]:
        return self.wait(self.submit(doc))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("unlucky")
    root, outside = make_data(base / "root"), base / "outside"
    make_data(root / "big", shape=BIG)
    make_data(outside, shape=BIG)
    with (
        running_service(root, base / "state") as service,
        httpx.Client(base_url=service.url, timeout=120) as http,
    ):
        yield World(service, root, outside, http)


def done_blocks(output: Path) -> int:
    return sum(done_count(folder)[1] for folder in output.glob(".pytc-run/pred/*") if folder.is_dir())


def wait_for_blocks(output: Path, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while done_blocks(output) < count:
        assert time.monotonic() < deadline, f"fewer than {count} blocks of {output} done in {timeout_s} s"
        time.sleep(0.02)


def a_chunk_of(array: Path) -> Path:
    """A chunk file in the middle of a zarr v3 array."""
    return next(p for p in sorted(array.rglob("*")) if p.is_file() and p.parts[-4:-1] == ("c", "1", "1"))


def test_an_input_gone_mid_run_fails_the_job_naming_it_and_the_next_job_runs(world: World) -> None:
    source = world.root / "gone" / "em.zarr"
    shutil.copytree(world.root / "big" / "em.zarr", source)
    job_id = world.submit(job_doc("gone.zarr", input__path="gone/em.zarr"))
    wait_for_blocks(world.root / "gone.zarr", 2)
    source.rename(source.with_name("moved.zarr"))
    final = world.wait(job_id, timeout_s=120)  # it used to stay running for good
    assert final["state"] == "failed", final
    assert str(source) in final["error"]["detail"], final["error"]
    assert final["progress"]["blocks_done"] < final["progress"]["blocks_total"]
    assert open_volume(world.root / "gone.zarr", "pred").attrs["pytc"]["complete"] is False
    after = world.run(job_doc("after-gone.zarr"))  # the same workers serve the next job
    assert after["state"] == "succeeded", after


def test_an_input_swapped_for_a_symlink_out_of_the_roots_mid_run_is_not_read(world: World) -> None:
    source = world.root / "swapped" / "em.zarr"
    shutil.copytree(world.root / "big" / "em.zarr", source)
    job_id = world.submit(job_doc("swapped.zarr", input__path="swapped/em.zarr"))
    wait_for_blocks(world.root / "swapped.zarr", 2)
    (source / "raw").rename(source / "raw.real")
    (source / "raw").symlink_to(world.outside / "em.zarr" / "raw", target_is_directory=True)
    final = world.wait(job_id, timeout_s=120)
    assert final["state"] == "failed", final  # it read the other volume into a complete output
    assert f"{source / 'raw'} now resolves to" in final["error"]["detail"], final["error"]
    assert "outside the data roots" in final["error"]["detail"]
    assert open_volume(world.root / "swapped.zarr", "pred").attrs["pytc"]["complete"] is False


def test_an_output_swapped_for_a_symlink_out_of_the_roots_mid_run_is_not_written(world: World) -> None:
    output = world.root / "stolen.zarr"
    job_id = world.submit(job_doc("stolen.zarr", input__path="big/em.zarr"))
    wait_for_blocks(output, 2)
    # the whole output moved out of the roots in one rename, a symlink to it in its place
    (output / "pred").rename(world.outside / "stolen")
    (output / "pred").symlink_to(world.outside / "stolen", target_is_directory=True)
    before = tree(world.outside / "stolen")
    final = world.wait(job_id, timeout_s=120)
    assert final["state"] == "failed", final
    assert f"{output / 'pred'} now resolves to" in final["error"]["detail"], final["error"]
    written = {p for p, stat in tree(world.outside / "stolen").items() if before.get(p) != stat}
    # each chunk's write looks first: at most the writes already under way at the swap may land
    # (a block's two writer threads, or pass 2's four); in practice none does
    assert len(written) <= 4, f"chunks written outside the roots: {sorted(written)}"
    assert (
        json.loads((world.outside / "stolen" / "0" / "zarr.json").read_text())["attributes"]["pytc"][
            "complete"
        ]
        is False
    )


def test_a_chunk_folder_planted_as_a_symlink_out_of_the_roots_is_not_written(world: World) -> None:
    output = world.root / "planted.zarr"
    job_id = world.submit(job_doc("planted.zarr", input__path="big/em.zarr"))
    wait_for_blocks(output, 2)
    planted = world.outside / "planted"
    planted.mkdir()
    (output / "pred" / "0" / "c" / "0" / "3").symlink_to(planted, target_is_directory=True)  # the last z-row
    final = world.wait(job_id, timeout_s=120)
    assert final["state"] == "failed", final
    assert f"{output / 'pred' / '0' / 'c' / '0' / '3'}/" in final["error"]["detail"], final["error"]
    assert not any(planted.iterdir()), "chunks were written outside the roots"
    assert open_volume(output, "pred").attrs["pytc"]["complete"] is False


def test_a_job_failed_on_a_corrupt_chunk_runs_again_once_it_is_repaired(world: World) -> None:
    shutil.copytree(world.root / "em.zarr", world.root / "corrupt" / "em.zarr")
    chunk = a_chunk_of(world.root / "corrupt" / "em.zarr" / "raw")
    good = chunk.read_bytes()
    chunk.write_bytes(b"this is not a zstd frame")
    doc = job_doc("repaired.zarr", input__path="corrupt/em.zarr")
    failed = world.run(doc)
    assert failed["state"] == "failed" and "block (" in failed["error"]["detail"], failed
    chunk.write_bytes(good)
    again = world.run(doc)  # it used to fail at once with the old error, no worker running
    assert again["state"] == "succeeded", again
    assert again["result"]["tasks_run"]["pass1"] > 0
    clean = world.run(job_doc("clean.zarr"))
    assert clean["state"] == "succeeded", clean
    np.testing.assert_array_equal(
        read_output(world.root / "repaired.zarr"), read_output(world.root / "clean.zarr")
    )


def test_a_cancelled_job_submitted_again_finishes_as_an_uninterrupted_one(world: World) -> None:
    doc = job_doc("resumed.zarr", input__path="big/em.zarr")
    job_id = world.submit(doc)
    wait_for_blocks(world.root / "resumed.zarr", 4)
    assert world.http.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    cancelled = world.wait(job_id)
    assert cancelled["state"] == "cancelled", cancelled
    again = world.run(doc)
    assert again["state"] == "succeeded", again
    assert 0 < again["result"]["blocks_skipped"] < again["result"]["blocks_total"]
    whole = world.run(job_doc("uninterrupted.zarr", input__path="big/em.zarr"))
    assert whole["state"] == "succeeded", whole
    np.testing.assert_array_equal(
        read_output(world.root / "resumed.zarr"), read_output(world.root / "uninterrupted.zarr")
    )


# --- the same runs on one Dask client, with what a long-lived process may still hold ---------------


@dataclass
class Driver:
    """The inference kind on one client of an embedded cluster, as the service's job threads run it."""

    root: Path
    client: Any

    def run(self, doc: dict[str, Any], cancel: threading.Event | None = None) -> tuple[str, Any]:
        """How the job ended and its result or error, caught as the service's job threads do."""
        job = INFERENCE.parse(doc, ParseEnv((self.root,)))
        try:
            return "succeeded", INFERENCE.run(job, RunEnv(self.client, cancel=cancel or threading.Event()))
        except JobCancelledError as err:
            return "cancelled", str(err)
        except JobFailedError as err:
            return "failed", str(err)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Driver]:
    from service.cluster import connect, embedded_cluster

    root = make_data(tmp_path_factory.mktemp("driver") / "root")
    make_data(root / "big", shape=BIG)
    with embedded_cluster(1) as cluster, connect(cluster) as client:  # a worker process, as the service has
        yield Driver(root, client)


@contextlib.contextmanager
def nothing_collected() -> Iterator[None]:
    """No garbage collection: what a run left in reference cycles (Dask's futures among them) stays,
    as it does for long in a service whose collector has moved it to its oldest generation."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def test_a_failed_run_leaves_nothing_the_next_run_of_the_job_gets_back(driver: Driver) -> None:
    shutil.copytree(driver.root / "em.zarr", driver.root / "corrupt" / "em.zarr")
    chunk = a_chunk_of(driver.root / "corrupt" / "em.zarr" / "raw")
    good = chunk.read_bytes()
    chunk.write_bytes(b"this is not a zstd frame")
    doc = job_doc(str(driver.root / "repaired.zarr"), input__path="corrupt/em.zarr")
    with nothing_collected():
        failed = driver.run(doc)
        chunk.write_bytes(good)
        again = driver.run(doc)  # it used to fail at once with the old error, no worker running
    assert failed[0] == "failed" and "Zstd" in failed[1], failed
    assert again[0] == "succeeded" and again[1]["tasks_run"]["pass1"] > 0, again
    assert driver.run(job_doc(str(driver.root / "clean.zarr")))[0] == "succeeded"
    np.testing.assert_array_equal(
        read_output(driver.root / "repaired.zarr"), read_output(driver.root / "clean.zarr")
    )


def test_a_cancelled_run_leaves_nothing_the_next_run_of_the_job_gets_back(driver: Driver) -> None:
    doc = job_doc(str(driver.root / "resumed.zarr"), input__path="big/em.zarr")
    cancel = threading.Event()
    threading.Thread(
        target=lambda: (wait_for_blocks(driver.root / "resumed.zarr", 4), cancel.set()), daemon=True
    ).start()
    with nothing_collected():
        cancelled = driver.run(doc, cancel)
        again = driver.run(doc)
    assert cancelled[0] == "cancelled", cancelled
    assert again[0] == "succeeded" and 0 < again[1]["blocks_skipped"] < again[1]["blocks_total"], again
    assert driver.run(job_doc(str(driver.root / "whole.zarr"), input__path="big/em.zarr"))[0] == "succeeded"
    np.testing.assert_array_equal(
        read_output(driver.root / "resumed.zarr"), read_output(driver.root / "whole.zarr")
    )


def test_a_job_waiting_for_a_worker_sees_its_cancel(tmp_path: Path) -> None:
    """No worker connected: the run's model check waits for one, and a cancel ends the wait."""
    from distributed import Client, LocalCluster

    root = make_data(tmp_path)
    job = INFERENCE.parse(job_doc(str(tmp_path / "out.zarr")), ParseEnv((root,)))
    cancel = threading.Event()
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        caught: list[BaseException] = []

        def run() -> None:
            try:
                INFERENCE.run(job, RunEnv(client, cancel=cancel))
            except BaseException as err:
                caught.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        time.sleep(0.5)
        cancel.set()
        thread.join(15)
        assert not thread.is_alive(), "the cancel was not seen while the job waited for a worker"
    assert len(caught) == 1 and isinstance(caught[0], JobCancelledError), caught
    assert "waited for a worker" in str(caught[0])


class GraphCounter:
    """A scheduler plugin counting the graphs a client submits that hold block tasks, and their tasks."""

    name = "pytc-test-graph-counter"

    def __init__(self) -> None:
        self.graphs = 0
        self.tasks = 0

    def update_graph(self, scheduler: Any, *, keys: set[Any], **kwargs: Any) -> None:
        blocks = [k for k in keys if "-p1-" in str(k) or "-p2-" in str(k)]
        if blocks:
            self.graphs += 1
            self.tasks += len(blocks)


def test_block_tasks_reach_the_scheduler_in_batches(driver: Driver) -> None:
    """Issue 17: the driver submits the tasks that start together as one graph (one message through
    the scheduler), not a graph a task; the output is the same as ever."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    counter = type("Counter", (GraphCounter, SchedulerPlugin), {})()
    driver.client.register_plugin(counter)
    try:
        state, result = driver.run(job_doc(str(driver.root / "batched.zarr"), input__path="big/em.zarr"))
        seen = driver.client.run_on_scheduler(
            lambda dask_scheduler: vars(dask_scheduler.plugins[GraphCounter.name])
        )
    finally:
        driver.client.unregister_scheduler_plugin(GraphCounter.name)
    assert state == "succeeded", result
    tasks = sum(result["tasks_run"].values())
    assert seen["tasks"] == tasks, (seen, result["tasks_run"])
    # 288 tasks: a graph a task before; 55 graphs measured now (a refill of 8 or more tasks is one
    # graph a pass, and how many are ready at each refill depends on timing): half leaves room
    assert seen["graphs"] <= tasks / 2, seen
    # the same job in this process, task after task, with the model the worker checked
    one = INFERENCE.parse(
        job_doc(str(driver.root / "one.zarr"), input__path="big/em.zarr"), ParseEnv((driver.root,))
    )
    run_serially(one, INFERENCE.model_info(one, lambda fn, *args: driver.client.submit(fn, *args).result()))
    np.testing.assert_array_equal(
        read_output(driver.root / "batched.zarr"), read_output(driver.root / "one.zarr")
    )
