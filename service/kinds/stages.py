"""Stages a kind runs after its main tasks, pumped through Dask: the pyramid of an output image.

:func:`drive_pyramid` keeps a few of a :class:`workers.pyramid.PyramidStage`'s tasks in flight until
none is left (a level's tasks once the level above is done), reports after each that ends (and
every :data:`HEARTBEAT_S`), and stops at the job's cancel once no worker runs one of its tasks. A
kind that writes labels (segmentation) drives its stage the same way, with a label rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from distributed import Future

from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import RunEnv
from service.kinds.waiting import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S, wait_for_tasks, wait_some
from workers.pyramid import PyramidStage, PyramidStages, PyramidTask, run_pyramid_task


def pyramid_key(task: PyramidTask) -> str:
    """The Dask key of ``task``: the run's prefix (``pytc-<layout key>-<attempt>-``), then its place."""
    return f"{task.key or 'pytc-'}pyr-l{task.level}-{'_'.join(map(str, task.block))}"


def drive_pyramid(stage: PyramidStage | PyramidStages, env: RunEnv, report: Callable[[], None]) -> None:
    """Run every task of ``stage`` on ``env.client``; JobFailedError when one fails for good."""
    client = env.client
    workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
    limit = max(4, 2 * workers + 2)
    in_flight: dict[Future, PyramidTask] = {}
    last = time.monotonic()
    try:
        while True:
            while len(in_flight) < limit and (task := stage.next_task()) is not None:
                future = client.submit(
                    run_pyramid_task, task, key=pyramid_key(task), retries=env.retries, pure=False,
                    priority=env.priority,
                )  # fmt: skip
                in_flight[future] = task
            if not in_flight:
                return
            done = wait_some(list(in_flight), WAKE_S)
            if env.cancel.is_set():
                client.cancel(list(in_flight))
                in_flight.clear()
                wait_for_tasks(client, (f"{stage.key}pyr-",) if stage.key else (), CANCEL_WAIT_S)
                raise JobCancelledError("job cancelled while its pyramid was written")
            for future in done:
                stage.finished(_result(future, in_flight.pop(future), env.retries))
            if done or time.monotonic() - last >= HEARTBEAT_S:
                report()
                last = time.monotonic()
    finally:
        if in_flight:
            client.cancel(list(in_flight))


def _result(future: Future, task: PyramidTask, retries: int) -> PyramidTask:
    try:
        if future.status == "finished":
            future.result()
            return task
        error = future.exception() if future.status == "error" else "Dask cancelled its task"
    finally:
        future.release()
    raise JobFailedError(
        f"pyramid level {task.level} block {task.block} failed after {retries} retries: {error!r}"
    )
