"""The embedded Dask cluster (``pytc run`` and the service without ``PYTC_SCHEDULER``), and clients of
a named scheduler.

Every embedded worker is one of ours: it advertises the accelerator slot ``pytc-worker`` advertises
(so block tasks run there too), keeps its Dask event loop quiet beside the model
(:mod:`workers.runtime.dask_settings`), carries the per-worker state plugin
(:mod:`workers.runtime.state`) unless it is a thread of this process, logs a failed task's
traceback at DEBUG only (:mod:`workers.runtime.task_logs`: the job reports the failure), and
listens on loopback only: the scheduler's and workers' ports and the dashboard are never exposed
beyond this machine.
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
from workers.runtime.task_logs import DemoteTaskFailures, demote_task_failures


def embedded_cluster(
    n_workers: int,
    *,
    threads_per_worker: int = 1,
    in_process: bool = False,
    silence: int = logging.ERROR,
    dashboard: bool = True,
) -> LocalCluster:
    """A local cluster on loopback. ``in_process``: its one worker runs on a thread of this process
    (no port, no worker process to start; torch imported and the model loaded once); otherwise
    each worker is a process of its own, as ``pytc-worker`` starts them. ``dashboard: False``: no
    dashboard (``pytc run`` shows none; the scheduler then never imports bokeh, a second of start-up)."""
    # After distributed's import configured its loggers: the embedded scheduler logs every
    # connection at INFO, and a user needs only its warnings.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if in_process:
        demote_task_failures()  # the worker logs in this process; its workers' plugin does it there
    where: dict[str, Any] = {"processes": False} if in_process else {"processes": True, "host": "127.0.0.1"}
    with dask.config.set(worker_settings()):  # nannies hand these to their worker processes
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            # loopback, a free port (None would mean :8787 on every interface, ":0" every interface);
            # the scheduler's HTTP server (health, metrics) listens there with or without a dashboard
            dashboard_address="127.0.0.1:0",
            scheduler_kwargs={"dashboard": dashboard},
            silence_logs=silence,
            resources=ONE_ACCELERATOR,
            **where,
        )


def connect(cluster: LocalCluster | str, *, timeout: str = "30s") -> Client:
    """A client of an embedded ``cluster`` (worker processes get the state plugin), or of the
    scheduler at an address (``tcp://HOST:8786``; ``pytc-worker`` gave its workers the plugin).

    A worker that is a thread of this process (``pytc run``'s one) gets no state plugin, and so
    keeps its models in this process's state (:func:`workers.runtime.state.worker_state` falls
    back to it): ``pytc run`` checks the model in this process before it starts the cluster, and
    the blocks then find the model that check loaded instead of loading it a second time."""
    if isinstance(cluster, str):
        try:
            return Client(cluster, timeout=timeout)
        except OSError as err:  # refused, unresolvable or timed out
            raise SchedulerUnavailableError(f"cannot connect to the Dask scheduler {cluster}: {err}") from err
    client = Client(cluster)
    if getattr(cluster, "processes", True):
        client.register_plugin(WorkerState())
        client.register_plugin(DemoteTaskFailures())
    return client
