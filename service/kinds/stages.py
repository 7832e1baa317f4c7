"""Stages a kind runs after its main tasks, pumped through its task pool: the pyramid of an output image.

:func:`drive_pyramid` keeps a few of a :class:`workers.pyramid.PyramidStage`'s tasks in flight until
none is left (a level's tasks once the level above is done), reports after each that ends (and
every :data:`HEARTBEAT_S`), and stops at the job's cancel once no worker runs one of its tasks. A
kind that writes labels (segmentation) drives its stage the same way, with a label rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import RunEnv
from service.kinds.pool import TaskPool
from service.kinds.timing import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S
from workers.pyramid import PyramidStage, PyramidStages, PyramidTask, run_pyramid_task


def pyramid_key(task: PyramidTask) -> str:
    """The Dask key of ``task``: the run's prefix (``pytc-<layout key>-<attempt>-``), then its place."""
    return f"{task.key or 'pytc-'}pyr-l{task.level}-{'_'.join(map(str, task.block))}"


def drive_pyramid(stage: PyramidStage | PyramidStages, env: RunEnv, report: Callable[[], None]) -> None:
    """Run every task of ``stage`` in ``env.pool``; JobFailedError when one fails for good."""
    pool = env.pool
    limit = max(4, 2 * pool.workers + 2)
    in_flight: dict[Any, PyramidTask] = {}
    last = time.monotonic()
    try:
        while True:
            while len(in_flight) < limit and (task := stage.next_task()) is not None:
                handle = pool.submit(
                    pyramid_key(task), run_pyramid_task, task, retries=env.retries, priority=env.priority
                )
                in_flight[handle] = task
            if not in_flight:
                return
            done = pool.wait_some(list(in_flight), WAKE_S)
            if env.cancel.is_set():
                pool.cancel(list(in_flight))
                in_flight.clear()
                pool.wait_idle((f"{stage.key}pyr-",) if stage.key else (), CANCEL_WAIT_S)
                raise JobCancelledError("job cancelled while its pyramid was written")
            for handle in done:
                stage.finished(_result(pool, handle, in_flight.pop(handle), env.retries))
            if done or time.monotonic() - last >= HEARTBEAT_S:
                report()
                last = time.monotonic()
    finally:
        if in_flight:
            pool.cancel(list(in_flight))


def _result(pool: TaskPool, handle: Any, task: PyramidTask, retries: int) -> PyramidTask:
    error = pool.failure(handle)
    if error is None:
        return task
    raise JobFailedError(
        f"pyramid level {task.level} block {task.block} failed after {retries} retries: {error!r}"
    )
