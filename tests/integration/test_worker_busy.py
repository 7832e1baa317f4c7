"""A cancelled task goes on running on its worker after the scheduler forgot it; ``running_keys``
(what the service waits on before it drops a failed or deleted job's scratch) still sees it."""

from __future__ import annotations

import threading
import time

from distributed import Client, LocalCluster

from workers.runtime.busy import running_keys

RELEASE = threading.Event()


def blocked(x: int) -> int:
    RELEASE.wait(30)
    return x


def test_a_cancelled_task_still_running_is_seen_until_it_returns() -> None:
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(blocked, 1, key="pytc-layout-1-0_0_0")
        other = client.submit(blocked, 2, key="other-task")
        deadline = time.monotonic() + 30
        while not any(client.run(running_keys, ("pytc-layout-",)).values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        future.cancel()
        time.sleep(0.5)
        assert not any("pytc-layout" in str(k) for keys in client.processing().values() for k in keys)
        assert list(client.run(running_keys, ("pytc-layout-",)).values()) == [["pytc-layout-1-0_0_0"]]
        RELEASE.set()
        while any(client.run(running_keys, ("pytc-layout-",)).values()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert other.result(timeout=30) == 2
