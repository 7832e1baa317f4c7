"""``pytc-worker`` against a real ``dask scheduler`` on 127.0.0.1: GPU slots on a CPU-only node, the
per-worker state plugin (its model cache), the health file, the drain on SIGTERM, and two
pytc-workers on one host. Every process is stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster_fixtures import BIN, free_port, stop, wait_until
from workers.runtime.cli import check_health
from workers.runtime.state import PLUGIN_NAME

ROOT = Path(__file__).resolve().parents[2]
# The tasks below live in this test module: scheduler and workers must be able to import it.
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTC_TORCH_THREADS"},
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}


@contextmanager
def scheduler(tmp: Path) -> Iterator[str]:
    port = free_port()
    with open(tmp / "scheduler.log", "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    try:
        yield f"tcp://127.0.0.1:{port}"
    finally:
        stop(proc)


def pytc_worker(
    tmp: Path, address: str, *flags: str, env: dict[str, str] | None = None, log_name: str = "pytc-worker.log"
) -> subprocess.Popen[bytes]:
    with open(tmp / log_name, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.runtime.cli",
                "--scheduler",
                address,
                "--host",
                "127.0.0.1",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**ENV, **(env or {})},
            cwd=ROOT,
        )


def worker_env(dask_worker: Any) -> tuple[str, str, bool]:
    import os

    return (
        os.environ["CUDA_VISIBLE_DEVICES"],
        os.environ["PYTC_TORCH_THREADS"],
        PLUGIN_NAME in dask_worker.plugins,
    )


def loop_settings(dask_worker: Any) -> tuple[bool, float, float]:
    """Stack sampling on or off, and the loop-health tick and memory reads' periods in ms."""
    callbacks = dask_worker.periodic_callbacks
    return (
        "profile" in callbacks,
        callbacks["tick"].callback_time,
        callbacks["memory_monitor"].callback_time,
    )


def thread_affinities(dask_worker: Any) -> list[tuple[int, ...]]:
    """The distinct CPU affinities of this worker process's threads."""
    import contextlib
    import os

    found = set()
    for tid in [int(t) for t in os.listdir("/proc/self/task")]:
        with contextlib.suppress(OSError):  # a thread that just ended
            found.add(tuple(sorted(os.sched_getaffinity(tid))))
    return sorted(found)


def load_twice(model: str) -> tuple[bool, bool, int, bool | None]:
    """On a worker: the second load is the cached object, and the cache is the plugin's; loading
    a model set glibc's allocator for big buffers (workers.runtime.allocator)."""
    from models.ref import ModelRef
    from workers.inference.model_cache import cached_model
    from workers.runtime import allocator
    from workers.runtime.state import worker_plugin, worker_state

    ref = ModelRef(kind="torchscript", path=model)
    first = cached_model(ref, (3, 8, 8))
    again = cached_model(ref, (3, 8, 8))
    plugin = worker_plugin()
    return (
        first is again,
        plugin is worker_state(),
        len(plugin.models) if plugin else 0,
        allocator._state.get("tuned"),
    )


def slow_block(marks: str, seconds: float) -> str:
    Path(marks, "started").touch()
    time.sleep(seconds)
    Path(marks, "finished").touch()
    return "done"


def test_cpu_node_serves_gpu_tasks_with_the_cache_and_drains_on_sigterm(tmp_path: Path) -> None:
    import torch  # here, not at the top: workers import this module for its tasks
    from distributed import Client

    model = tmp_path / "net.pt"
    torch.jit.script(torch.nn.Conv3d(1, 2, 3, padding=1).eval()).save(str(model))
    health = tmp_path / "health.json"
    with scheduler(tmp_path) as address:
        cores = sorted(os.sched_getaffinity(0))
        proc = pytc_worker(
            tmp_path,
            address,
            *("--cpu-workers", "2", "--name", "t", "--health-file", str(health)),
            *("--cpu-cores", ",".join(map(str, cores))),
        )
        try:
            with Client(address, timeout="30s") as client:
                client.wait_for_workers(2, timeout=60)
                workers = client.scheduler_info()["workers"].values()
                assert sorted(w["name"] for w in workers) == ["t-cpu0", "t-cpu1"]
                assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in workers)
                threads = str(len(cores) // 2)  # one torch thread per core of a worker's share
                assert set(client.run(worker_env).values()) == {("", threads, True)}
                # each worker pinned, every thread of it, to its own half of the cores
                per_worker = client.run(thread_affinities).values()
                shares = sorted([tuple(tuple(a) for a in v) for v in per_worker])
                half = len(cores) // 2
                assert shares == [(tuple(cores[:half]),), (tuple(cores[half:]),)], shares
                # no stack sampling beside the model, a quiet event loop (workers.runtime.dask_settings)
                assert set(client.run(loop_settings).values()) == {(False, 1000.0, 500.0)}

                assert client.submit(sum, [1, 2], resources={"GPU": 1}).result(timeout=30) == 3
                cached = client.submit(load_twice, str(model), resources={"GPU": 1}, pure=False)
                assert cached.result(timeout=120) == (True, True, 1, True)
                del cached  # like the job runner, hold no result: the drain then need not wait

                wait_until(health.exists, timeout=15)
                assert check_health(health) == 0

                block = client.submit(slow_block, str(tmp_path), 2.0, resources={"GPU": 1}, pure=False)
                wait_until((tmp_path / "started").exists, timeout=30)
                proc.send_signal(signal.SIGTERM)
                # The block in hand finishes on the draining worker and reports its result.
                assert block.result(timeout=30) == "done"
                del block
                assert proc.wait(timeout=30) == 0
                assert (tmp_path / "finished").exists()
                wait_until(lambda: not client.scheduler_info()["workers"], timeout=15)
                assert not health.exists()
        finally:
            stop(proc)


def test_a_second_signal_stops_at_once_and_hands_the_block_back(tmp_path: Path) -> None:
    from distributed import Client

    with scheduler(tmp_path) as address:
        proc = pytc_worker(tmp_path, address, "--name", "t", "--drain-timeout", "300")
        try:
            with Client(address, timeout="30s") as client:
                client.wait_for_workers(1, timeout=60)
                block = client.submit(slow_block, str(tmp_path), 120.0, resources={"GPU": 1}, pure=False)
                wait_until((tmp_path / "started").exists, timeout=30)
                proc.send_signal(signal.SIGTERM)
                time.sleep(1)
                assert proc.poll() is None, "the first signal drains: the block is still running"
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 0
                assert time.monotonic() - started < 20
                wait_until(lambda: not client.scheduler_info()["workers"], timeout=15)
                assert block.status == "pending"  # back with the scheduler, waiting for a worker
                assert not (tmp_path / "finished").exists()
        finally:
            stop(proc)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_waiting_for_the_scheduler_exits_0(tmp_path: Path, sig: int) -> None:
    proc = pytc_worker(tmp_path, f"tcp://127.0.0.1:{free_port()}", "--cpu-workers", "2")
    try:
        wait_until(lambda: "-> workers" in (tmp_path / "pytc-worker.log").read_text(), timeout=30)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0
    finally:
        stop(proc)


def test_an_unreachable_scheduler_fails_the_start(tmp_path: Path) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    proc = pytc_worker(tmp_path, address, env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"})
    try:
        assert proc.wait(timeout=60) == 1
    finally:
        stop(proc)
    log = (tmp_path / "pytc-worker.log").read_text()
    assert f"could not start against {address}" in log


@pytest.mark.slow
def test_two_pytc_workers_on_one_host_take_their_own_names(tmp_path: Path) -> None:
    """By default each pytc-worker names its workers after this host and its own pid; a --name that
    another pytc-worker already uses stops the start with a message that says to change it."""
    from distributed import Client

    host = os.uname().nodename
    with scheduler(tmp_path) as address:
        first = pytc_worker(tmp_path, address, "--gpus", "none", log_name="first.log")
        second = pytc_worker(tmp_path, address, "--gpus", "none", log_name="second.log")
        try:
            with Client(address, timeout="30s") as client:
                client.wait_for_workers(2, timeout=90)
                names = sorted(w["name"] for w in client.scheduler_info()["workers"].values())
                assert names == sorted([f"{host}-{first.pid}-cpu0", f"{host}-{second.pid}-cpu0"])
                # a third one told to use the first one's prefix cannot start, and says why
                clash = pytc_worker(
                    tmp_path, address, "--gpus", "none", "--name", f"{host}-{first.pid}", log_name="clash.log"
                )
                try:
                    assert clash.wait(timeout=90) == 1
                finally:
                    stop(clash)
                log = (tmp_path / "clash.log").read_text()
                assert f"a worker named {host}-{first.pid}-cpu0 is connected there already" in log
                assert "another prefix with --name" in log
                assert len(client.scheduler_info()["workers"]) == 2  # the first two serve on
        finally:
            stop(second)
            stop(first)
