"""The embedded Dask cluster (``pytc run`` and the service without ``PYTC_SCHEDULER``), and clients of
a named scheduler.

Every embedded worker is one of ours: it advertises the accelerator slot ``pytc-worker`` advertises
(so block tasks run there too), keeps its Dask event loop quiet beside the model
(:mod:`workers.runtime.dask_settings`), carries the per-worker state plugin
(:mod:`workers.runtime.state`), and listens on loopback only: the scheduler's and workers' ports
and the dashboard are never exposed beyond this machine.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
from distributed import Client, LocalCluster

from service.errors import SchedulerUnavailableError
from workers.resources import ONE_ACCELERATOR
from workers.runtime.dask_settings import worker_settings
from workers.runtime.state import WorkerState


def embedded_cluster(
    n_workers: int, *, threads_per_worker: int = 1, in_process: bool = False, silence: int = logging.ERROR
) -> LocalCluster:
    """A local cluster on loopback. ``in_process``: its one worker runs on a thread of this process
    (no port, no worker process to start; torch imported and the model loaded once); otherwise
    each worker is a process of its own, as ``pytc-worker`` starts them."""
    # After distributed's import configured its loggers: the embedded scheduler logs every
    # connection at INFO, and a user needs only its warnings.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    where: dict[str, Any] = {"processes": False} if in_process else {"processes": True, "host": "127.0.0.1"}
    with dask.config.set(worker_settings()):  # nannies hand these to their worker processes
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            dashboard_address="127.0.0.1:0",  # loopback, a free port (None means :8787, ":0" every interface)
            silence_logs=silence,
            resources=ONE_ACCELERATOR,
            **where,
        )


def connect(cluster: LocalCluster | str, *, timeout: str = "30s") -> Client:
    """A client of an embedded ``cluster`` (its workers get the state plugin), or of the scheduler
    at an address (``tcp://HOST:8786``; ``pytc-worker`` gave its workers the plugin)."""
    if isinstance(cluster, str):
        try:
            return Client(cluster, timeout=timeout)
        except OSError as err:  # refused, unresolvable or timed out
            raise SchedulerUnavailableError(f"cannot connect to the Dask scheduler {cluster}: {err}") from err
    client = Client(cluster)
    client.register_plugin(WorkerState())
    return client
