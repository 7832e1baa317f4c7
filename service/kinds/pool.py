"""Where a kind's tasks run: a Dask client, or a thread of this process.

A kind's driver (segmentation's steps, an output's pyramid) keeps a few tasks in flight, waits for
some to end, records each that finished, and on a cancel stops the rest and waits for those still
running. :class:`TaskPool` is that seam, with two implementations that run the very same task
functions and take the same arguments:

- :class:`DaskPool`: tasks on a Dask client's workers (the service, ``pytc run --workers N`` and
  ``--scheduler``), keyed, retried, prioritised by Dask;
- :class:`ThreadPool`: tasks on threads of this process, in the order submitted, each retried as
  Dask would. ``pytc run`` with its one embedded worker uses it for the kinds that take a pool
  (segmentation and every pyramid stage): that worker would be a thread of this process anyway, and
  a Dask scheduler and worker around it cost a job about a second of imports and start-up
  (``distributed`` is never imported for such a job) and a round trip per task.

The drivers, the done records (ledgers written by the driver once a task returned), the cancel
flags the tasks check and the resume after a kill are the same whichever pool runs the tasks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from distributed import Client


class TaskPool(Protocol):
    """Runs task functions somewhere; a handle is what :meth:`submit` returned."""

    @property
    def workers(self) -> int:
        """How many tasks run at once (the drivers keep about twice that in flight)."""
        ...

    def submit(self, key: str, fn: Callable[..., Any], *args: Any, retries: int, priority: int) -> Any:
        """Start ``fn(*args)`` under the unique ``key``, tried ``1 + retries`` times at most."""
        ...

    def wait_some(self, handles: list[Any], timeout_s: float) -> set[Any]:
        """The handles that ended (finished, failed or cancelled), waiting at most ``timeout_s``."""
        ...

    def failure(self, handle: Any) -> BaseException | str | None:
        """None if the task finished, else its error (or why it did not run); releases the handle."""
        ...

    def cancel(self, handles: Iterable[Any]) -> None:
        """Drop the tasks not yet started; a running one runs on (it stops at its cancel flag)."""
        ...

    def wait_idle(self, prefixes: tuple[str, ...], timeout_s: float) -> None:
        """Until no task whose key starts with one of ``prefixes`` runs, ``timeout_s`` at most."""
        ...


class DaskPool:
    """Tasks on the workers of a Dask client."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1).get("workers", {}))

    def submit(self, key: str, fn: Callable[..., Any], *args: Any, retries: int, priority: int) -> Any:
        return self.client.submit(fn, *args, key=key, retries=retries, pure=False, priority=priority)

    def wait_some(self, handles: list[Any], timeout_s: float) -> set[Any]:
        from service.kinds.waiting import wait_some

        return wait_some(handles, timeout_s)

    def failure(self, handle: Any) -> BaseException | str | None:
        try:
            if handle.status == "finished":
                return None
            return handle.exception() if handle.status == "error" else "Dask cancelled its task"
        finally:
            handle.release()

    def cancel(self, handles: Iterable[Any]) -> None:
        self.client.cancel(list(handles))

    def wait_idle(self, prefixes: tuple[str, ...], timeout_s: float) -> None:
        from service.kinds.waiting import wait_for_tasks

        wait_for_tasks(self.client, prefixes, timeout_s)


class ThreadPool:
    """Tasks on ``threads`` threads of this process, started in the order submitted."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pytc-task")
        self._lock = threading.Lock()
        self._running: set[str] = set()

    @property
    def workers(self) -> int:
        return self.threads

    def submit(self, key: str, fn: Callable[..., Any], *args: Any, retries: int, priority: int) -> Any:
        return self._executor.submit(self._attempts, key, fn, args, retries)

    def _attempts(self, key: str, fn: Callable[..., Any], args: tuple[Any, ...], retries: int) -> Any:
        with self._lock:
            self._running.add(key)
        try:
            attempt = 0
            while True:
                try:
                    return fn(*args)
                except Exception:  # retried as Dask retries a task: any error; the last one is raised
                    if attempt >= retries:
                        raise
                    attempt += 1
        finally:
            with self._lock:
                self._running.discard(key)

    def wait_some(self, handles: list[Future[Any]], timeout_s: float) -> set[Future[Any]]:
        return set(wait(handles, timeout=timeout_s, return_when=FIRST_COMPLETED).done)

    def failure(self, handle: Future[Any]) -> BaseException | str | None:
        if handle.cancelled():
            return "the task was cancelled before it ran"
        return handle.exception()

    def cancel(self, handles: Iterable[Future[Any]]) -> None:
        for handle in handles:
            handle.cancel()

    def wait_idle(self, prefixes: tuple[str, ...], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while prefixes and time.monotonic() < deadline:
            with self._lock:
                if not any(key.startswith(prefixes) for key in self._running):
                    return
            time.sleep(0.02)

    def close(self) -> None:
        """Drop what has not started and wait for the running tasks (they stop at a cancel flag)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
