"""The task-pool seam (:mod:`service.kinds.pool`): the Dask pool (a real in-process Dask cluster) and
the thread pool of ``pytc run``'s one embedded worker pass the same conformance checks: results,
failures retried then reported, a cancel dropping what has not started, and waiting for the tasks
of a stopped job that still run."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from service.kinds.pool import DaskPool, TaskPool, ThreadPool

CALLS: dict[str, int] = {}
GATE = threading.Event()


def count_and_fail(name: str, failures: int) -> str:
    """Fails its first ``failures`` calls (counted per name), then returns ``name``."""
    CALLS[name] = CALLS.get(name, 0) + 1
    if CALLS[name] <= failures:
        raise ValueError(f"{name} failed (call {CALLS[name]})")
    return name


def held(name: str) -> str:
    """Runs until the test opens the gate."""
    GATE.wait(30)
    return name


@pytest.fixture(params=["threads", "dask"])
def pool(request: pytest.FixtureRequest) -> Iterator[TaskPool]:
    CALLS.clear()
    GATE.clear()
    if request.param == "threads":
        threads = ThreadPool(1)
        yield threads
        GATE.set()
        threads.close()
        return
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield DaskPool(client)
        GATE.set()


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
    assert CALLS["a"] == 1


def test_a_failing_task_is_retried_then_reported(pool: TaskPool) -> None:
    flaky = pool.submit("t-flaky", count_and_fail, "flaky", 2, retries=2, priority=0)
    broken = pool.submit("t-broken", count_and_fail, "broken", 5, retries=1, priority=0)
    wait_all(pool, [flaky, broken])
    assert pool.failure(flaky) is None
    assert CALLS["flaky"] == 3
    error = pool.failure(broken)
    assert isinstance(error, ValueError) and "broken failed (call 2)" in str(error)
    assert CALLS["broken"] == 2


def test_a_cancel_drops_what_has_not_started_and_wait_idle_waits_for_the_rest(pool: TaskPool) -> None:
    running = pool.submit("job1-run", held, "run", retries=0, priority=0)
    waiting = pool.submit("job1-wait", count_and_fail, "wait", 0, retries=0, priority=0)
    deadline = time.monotonic() + 10
    while not GATE.is_set() and time.monotonic() < deadline:  # until the first task runs
        if _is_running(pool, "job1-run"):
            break
        time.sleep(0.02)
    pool.cancel([waiting])
    started = time.monotonic()
    threading.Timer(0.5, GATE.set).start()
    pool.wait_idle(("job1-",), 20)
    assert time.monotonic() - started >= 0.4  # it waited for the running task
    wait_all(pool, [running, waiting])
    assert pool.failure(running) is None
    assert pool.failure(waiting) is not None  # cancelled before it ran
    assert "wait" not in CALLS


def _is_running(pool: TaskPool, key: str) -> bool:
    if isinstance(pool, ThreadPool):
        return key in pool._running
    assert isinstance(pool, DaskPool)
    from workers.runtime.busy import running_keys

    return any(pool.client.run(running_keys, (key,)).values())
