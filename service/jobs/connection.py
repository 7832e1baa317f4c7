"""The service's connection to Dask: an embedded local cluster, or a client of a named scheduler,
kept connected in the background (``/readyz`` says 503 meanwhile)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from service.cluster import connect, embedded_cluster
from service.errors import SchedulerUnavailableError

log = logging.getLogger(__name__)


class LowerPriority(WorkerPlugin):
    """Run an embedded worker at a lower CPU priority (``nice``) than the service beside it, so
    that the API answers promptly while blocks compute on the same cores. Every thread of the
    worker is reniced (Linux niceness is per thread; threads made later inherit it)."""

    name = "pytc-lower-priority"
    idempotent = True

    def __init__(self, niceness: int) -> None:
        self.niceness = niceness

    def setup(self, worker: Any) -> None:
        tasks = Path("/proc/self/task")
        for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
            with contextlib.suppress(OSError):  # a thread that just ended, or no permission
                os.setpriority(os.PRIO_PROCESS, tid, self.niceness)


class DaskConnection:
    """The service's Dask client: an embedded local cluster when no scheduler is named, else a client
    of that scheduler. It connects in the background and keeps retrying, so the service answers
    probes (``/readyz`` says 503) while a scheduler is still starting; a client that lost its
    scheduler for good is replaced the same way."""

    def __init__(
        self,
        scheduler: str | None,
        *,
        local_workers: int = 1,
        threads_per_worker: int = 1,
        worker_niceness: int = 0,
    ) -> None:
        self.scheduler = scheduler
        self.local_workers, self.threads_per_worker = local_workers, threads_per_worker
        self.worker_niceness = worker_niceness
        self.retry_s = 2.0
        self.dashboard_link: str | None = None
        self.last_error = "not connected yet"
        self._client: Client | None = None
        self._cluster: LocalCluster | None = None
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._workers: tuple[float, int] = (0.0, 0)

    def start(self) -> None:
        threading.Thread(target=self._connect, name="pytc-dask-connect", daemon=True).start()

    def _connect(self) -> None:
        while not self._closing.is_set():
            try:
                client = self._open()
            except Exception as err:  # any failure to start or reach Dask is retried
                self.last_error = f"{type(err).__name__}: {err}"
                log.warning("Dask %s unavailable (%s); retrying", self.scheduler or "(embedded)", err)
                self._closing.wait(self.retry_s)
                continue
            self._client, self.dashboard_link = client, _dashboard_link(client)
            self._connected.set()
            log.info("Dask connected: %s (dashboard %s)", self.scheduler or "embedded", self.dashboard_link)
            if self._closing.is_set():
                self.close()
            return

    def _open(self) -> Client:
        if self.scheduler:
            return connect(self.scheduler, timeout="10s")
        self._cluster = embedded_cluster(
            self.local_workers, threads_per_worker=self.threads_per_worker, silence=logging.WARNING
        )
        client = connect(self._cluster)
        if self.worker_niceness:
            client.register_plugin(LowerPriority(self.worker_niceness))
        return client

    @property
    def ready(self) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        if client.status in ("closed", "closing") and not self._closing.is_set():
            self._reconnect()
            return False
        return client.status == "running"

    def _reconnect(self) -> None:
        with self._lock:
            if not self._connected.is_set():
                return
            self._connected.clear()
            self.last_error = "the Dask client lost its scheduler"
        log.warning("the Dask client closed; connecting again")
        self.start()

    def wait_ready(self, timeout_s: float) -> bool:
        return self._connected.wait(timeout_s) and self.ready

    def client(self) -> Client:
        if not self.ready or self._client is None:
            raise SchedulerUnavailableError(f"Dask is not available: {self.last_error}")
        return self._client

    def workers(self) -> int | None:
        """Workers connected to the scheduler (refreshed at most every 2 s); None while disconnected."""
        if not self.ready or self._client is None:
            return None
        checked_at, count = self._workers
        if time.monotonic() - checked_at > 2.0:
            try:
                count = len(self._client.scheduler_info(n_workers=-1).get("workers", {}))
            except (OSError, TimeoutError) as err:  # the scheduler went away since ``ready``
                self.last_error = f"{type(err).__name__}: {err}"
                return None
            self._workers = (time.monotonic(), count)
        return count

    def close(self) -> None:
        self._closing.set()
        if self._client is not None:
            self._client.close(timeout=10)
        if self._cluster is not None:
            self._cluster.close(timeout=20)


def _dashboard_link(client: Client) -> str | None:
    """The scheduler's dashboard page, if it serves one (``--no-dashboard`` keeps a bare HTTP
    server whose status page is a 404: no link then)."""
    if "dashboard" not in client.scheduler_info(n_workers=0).get("services", {}):
        return None
    link = str(client.dashboard_link)
    try:
        return link if httpx.get(link, timeout=5.0).status_code == 200 else None
    except httpx.HTTPError:
        return None
