"""Stages a kind runs after its main tasks, pumped through Dask: the pyramid of an output image.

:func:`drive_pyramid` keeps a few of a :class:`workers.pyramid.PyramidStage`'s tasks in flight until
none is left (a level's tasks once the level above is done), reports after each that ends (and
every :data:`HEARTBEAT_S`), and stops at the job's cancel once no worker runs one of its tasks. A
kind that writes labels (segmentation) drives its stage the same way, with a label rule.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import CancelledError

from distributed import Future, wait

from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import RunEnv
from workers.pyramid import PyramidStage, PyramidTask, run_pyramid_task
from workers.runtime.busy import running_keys

log = logging.getLogger(__name__)

WAKE_S = 0.2  # the driver looks at its tasks and the cancel this often
HEARTBEAT_S = 5.0  # progress is reported at least this often
CANCEL_WAIT_S = 60.0


def pyramid_key(task: PyramidTask) -> str:
    """The Dask key of ``task``: the run's prefix (``pytc-<layout key>-<attempt>-``), then its place."""
    return f"{task.key or 'pytc-'}pyr-l{task.level}-{'_'.join(map(str, task.block))}"


def drive_pyramid(stage: PyramidStage, env: RunEnv, report: Callable[[], None]) -> None:
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
            done = _wait_some(list(in_flight), WAKE_S)
            if env.cancel.is_set():
                client.cancel(list(in_flight))
                in_flight.clear()
                _wait_until_idle(env, stage.key)
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


def _wait_some(futures: list[Future], timeout_s: float) -> set[Future]:
    try:
        return set(wait(futures, timeout=timeout_s, return_when="FIRST_COMPLETED").done)
    except TimeoutError:
        return set()
    except CancelledError:
        return {f for f in futures if f.status != "pending"}


def _wait_until_idle(env: RunEnv, prefix: str) -> None:
    """Until no worker runs one of the stage's tasks (``CANCEL_WAIT_S`` at most)."""
    deadline = time.monotonic() + CANCEL_WAIT_S
    while prefix and time.monotonic() < deadline:
        try:
            running = env.client.run(running_keys, (f"{prefix}pyr-",))
        except (OSError, RuntimeError, ValueError) as err:
            log.debug("cannot see the running tasks: %s", err)
            return
        if not any(running.values()):
            return
        time.sleep(0.2)
