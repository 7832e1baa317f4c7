"""The task-pool seam (:mod:`service.kinds.pool`): the Dask pool (a real in-process Dask cluster), the
thread pool of ``pytc run``'s one embedded worker and its pool of forked processes pass the same
conformance checks: results, failures retried then reported, a cancel dropping what has not started,
and waiting for the tasks of a stopped job that still run. The tasks count their calls and wait at
their gate in files, which a forked process shares with the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.kinds.pool import DaskPool, ProcessPool, TaskPool, ThreadPool

PLACE: list[Path] = []  # the test's folder: calls/<name> (a byte per call), gate, started/<name>


def calls(name: str) -> int:
    path = PLACE[0] / "calls" / name
    return path.stat().st_size if path.exists() else 0


def count_and_fail(name: str, failures: int) -> str:
    """Fails its first ``failures`` calls (counted per name), then returns ``name``."""
    with (PLACE[0] / "calls" / name).open("ab") as f:
        f.write(b".")
    if calls(name) <= failures:
        raise ValueError(f"{name} failed (call {calls(name)})")
    return name


def held(name: str) -> str:
    """Runs until the test opens the gate."""
    (PLACE[0] / "started" / name).touch()
    deadline = time.monotonic() + 30
    while not (PLACE[0] / "gate").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return name


def open_gate() -> None:
    (PLACE[0] / "gate").touch()


@pytest.fixture(params=["threads", "processes", "dask"])
def pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TaskPool]:
    (tmp_path / "calls").mkdir()
    (tmp_path / "started").mkdir()
    PLACE[:] = [tmp_path]
    if request.param in ("threads", "processes"):
        local = ThreadPool(1) if request.param == "threads" else ProcessPool(1)
        yield local
        open_gate()
        local.close()
        return
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield DaskPool(client)
        open_gate()


def wait_all(pool: TaskPool, handles: list[Any]) -> None:
    left = set(handles)
    deadline = time.monotonic() + 30
    while left and time.monotonic() < deadline:
        left -= pool.wait_some(list(left), 0.2)
    assert not left


def test_one_worker_and_a_result(pool: TaskPool) -> None:
    assert pool.workers == 1
    handle = pool.submit("t-a", count_and_fail, "a", 0, retries=0, priority=0)
    wait_all(pool, [handle])
    assert pool.failure(handle) is None
    assert calls("a") == 1


def test_a_failing_task_is_retried_then_reported(pool: TaskPool) -> None:
    flaky = pool.submit("t-flaky", count_and_fail, "flaky", 2, retries=2, priority=0)
    broken = pool.submit("t-broken", count_and_fail, "broken", 5, retries=1, priority=0)
    wait_all(pool, [flaky, broken])
    assert pool.failure(flaky) is None
    assert calls("flaky") == 3
    error = pool.failure(broken)
    assert isinstance(error, ValueError) and "broken failed (call 2)" in str(error)
    assert calls("broken") == 2


def test_a_cancel_drops_what_has_not_started_and_wait_idle_waits_for_the_rest(pool: TaskPool) -> None:
    running = pool.submit("job1-run", held, "run", retries=0, priority=0)
    waiting = pool.submit("job1-wait", count_and_fail, "wait", 0, retries=0, priority=0)
    deadline = time.monotonic() + 10
    while not (PLACE[0] / "started" / "run").exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until the first task runs
    pool.cancel([waiting])
    started = time.monotonic()
    threading.Timer(0.5, open_gate).start()
    pool.wait_idle(("job1-",), 20)
    assert time.monotonic() - started >= 0.4  # it waited for the running task
    wait_all(pool, [running, waiting])
    assert pool.failure(running) is None
    assert pool.failure(waiting) is not None  # cancelled before it ran
    assert calls("wait") == 0


CHILD = """
import os, sys, time
from pathlib import Path
from service.kinds.pool import ProcessPool

def record_and_sleep(folder):
    Path(folder, str(os.getpid())).touch()
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        Path(folder, "interrupted").touch()

pool = ProcessPool(2)
for i in range(2):
    pool.submit(f"t{i}", record_and_sleep, sys.argv[1], retries=0, priority=0)
time.sleep(60)
"""


def test_task_processes_die_with_their_parent_and_ignore_ctrl_c(tmp_path: Path) -> None:
    """A ``kill -9`` of ``pytc run`` leaves no task running (the processes get the kernel's
    parent-death signal); a Ctrl-C is the parent's to handle (its job's cancel flag stops the
    tasks), so the processes ignore SIGINT."""
    import psutil

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = [int(p.name) for p in tmp_path.iterdir()]
        assert len(pids) == 2 and all(psutil.pid_exists(pid) for pid in pids)
        for pid in pids:
            os.kill(pid, signal.SIGINT)
        time.sleep(0.3)
        assert not (tmp_path / "interrupted").exists()  # the tasks ran on through the Ctrl-C
        assert all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)
        parent.kill()
        parent.wait(10)
        _, alive = psutil.wait_procs(
            [psutil.Process(pid) for pid in pids if psutil.pid_exists(pid)], timeout=10
        )
        assert not alive
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
