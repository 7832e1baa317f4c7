"""Dask's log of a failed task, kept down to DEBUG where the job itself reports the failure.

A task that raises makes its Dask worker log ``Compute Failed`` at ERROR: the task, the exception
and the worker's traceback. Under ``pytc run`` (whose one worker is a thread of the ``pytc``
process) and ``pytc-serve``'s embedded cluster (whose workers write to the service's log), that
block lands in the terminal or log beside the job's own error line, which already says which block
failed and why. The filter here demotes that record to DEBUG: it is shown only where the
``distributed.worker`` logger is set to DEBUG (``DASK_LOGGING__DISTRIBUTED__WORKER=debug``). So is
the warning of a task still running when the job, having failed, closes its cluster (``Async
instruction ... ended with CancelledError``).
Expected failures (a job that cannot run as written) never raise on a worker in the first place
(:class:`workers.errors.Refusal`).

``pytc-worker`` on a cluster keeps Dask's default: there, the worker's log is the admin's only view.
"""

from __future__ import annotations

import logging
from typing import Any

from distributed import WorkerPlugin

WORKER_LOGGER = "distributed.worker"  # where distributed.worker logs "Compute Failed"
# Each logger, and the start of the messages demoted there.
DEMOTED = {
    WORKER_LOGGER: "Compute Failed",
    "distributed.worker.state_machine": "Async instruction for",  # a task cut off by close()
}
PLUGIN_NAME = "pytc-task-failures-at-debug"


class TaskFailuresAtDebug(logging.Filter):
    """Demotes Dask's records of failed tasks (:data:`DEMOTED`) to DEBUG, dropping them unless
    their logger is set to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        start = DEMOTED.get(record.name)
        if record.levelno <= logging.DEBUG or start is None or not str(record.msg).startswith(start):
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def demote_task_failures() -> None:
    """Install the filter in this process (once)."""
    for name in DEMOTED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, TaskFailuresAtDebug) for f in logger.filters):
            logger.addFilter(TaskFailuresAtDebug())


class DemoteTaskFailures(WorkerPlugin):
    """Installs the filter in each worker process of an embedded cluster."""

    name = PLUGIN_NAME
    idempotent = True

    def setup(self, worker: Any) -> None:
        demote_task_failures()
