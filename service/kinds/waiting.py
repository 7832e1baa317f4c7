"""Waiting on a kind's Dask tasks: the futures that ended, and the tasks a worker still runs after
a cancel. The kinds' drivers (inference, segmentation, the pyramid stage) share these and their pace.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import CancelledError

from distributed import Client, Future, wait

from service.kinds.timing import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S
from workers.runtime.busy import running_keys

__all__ = ["CANCEL_WAIT_S", "HEARTBEAT_S", "WAKE_S", "wait_for_tasks", "wait_some"]

log = logging.getLogger(__name__)


def wait_some(futures: list[Future], timeout_s: float) -> set[Future]:
    """The futures that ended, waiting at most ``timeout_s`` (so a cancel is seen promptly). One
    that Dask cancelled is among them (``wait`` raises for it); the driver tells it by its status."""
    try:
        return set(wait(futures, timeout=timeout_s, return_when="FIRST_COMPLETED").done)
    except TimeoutError:
        return set()
    except CancelledError:
        return {f for f in futures if f.status != "pending"}


def wait_for_tasks(client: Client, prefixes: tuple[str, ...], timeout_s: float) -> None:
    """Until no worker runs a task whose key starts with one of ``prefixes`` (cancelled ones too:
    :mod:`workers.runtime.busy`), ``timeout_s`` at most; a client that lost its scheduler has
    nothing to wait for."""
    deadline = time.monotonic() + timeout_s
    while prefixes:
        try:
            running = client.run(running_keys, prefixes)
        except (OSError, RuntimeError, ValueError) as err:
            log.debug("cannot see the running tasks: %s", err)
            return
        if not any(running.values()):
            return
        if time.monotonic() >= deadline:
            log.warning("block tasks of a stopped job still ran %.0f s later", timeout_s)
            return
        time.sleep(0.2)
