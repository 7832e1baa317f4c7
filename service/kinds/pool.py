"""Where a kind's tasks run: a Dask client, or a thread of this process.

A kind's driver (segmentation's steps, an output's pyramid) keeps a few tasks in flight, waits for
some to end, records each that finished, and on a cancel stops the rest and waits for those still
running. :class:`TaskPool` is that seam, with two implementations that run the very same task
functions and take the same arguments:

- :class:`DaskPool`: tasks on a Dask client's workers (the service, ``pytc run --workers N`` and
  ``--scheduler``), keyed, retried, prioritised by Dask;
- :class:`ThreadPool`: tasks on threads of this process, in the order submitted, each retried as
  Dask would. ``pytc run`` with its one embedded worker uses it for the kinds that take a pool
  (segmentation and every pyramid stage) with ``--threads 1``, or off Linux: that worker would be
  a thread of this process anyway, and a Dask scheduler and worker around it cost a job about a
  second of imports and start-up (``distributed`` is never imported for such a job) and a round
  trip per task;
- :class:`ProcessPool`: the same, in processes forked from this one before it starts any thread
  (``pytc run``'s one embedded worker with ``--threads N`` > 1, on Linux): connected-components-3d
  (4.1) holds the GIL while it labels, so two threads labelled no faster than one (1.22 s for 8
  blocks of 64x256x256 on one thread, 1.29 s on two; numpy's passes 1.7 times faster on two), and
  zarr's Python around each chunk holds it too. A fork costs milliseconds (the modules are
  imported already); the processes ignore Ctrl-C (the job stops at its cancel flag, as a thread
  does) and die with this process (``PR_SET_PDEATHSIG``), so a ``kill -9`` leaves no task running.

The drivers, the done records (ledgers written by the driver once a task returned), the cancel
flags the tasks check and the resume after a kill are the same whichever pool runs the tasks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, CancelledError, Future, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
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


class _LocalTasks:
    """What the pools of this process (threads, forked processes) share: their handles are
    ``concurrent.futures`` futures, and each knows the keys of the tasks it is running."""

    _lock: threading.Lock

    def _running_keys(self) -> list[str]:
        raise NotImplementedError

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
                if not any(key.startswith(prefixes) for key in self._running_keys()):
                    return
            time.sleep(0.02)


class ThreadPool(_LocalTasks):
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
            return _attempts(fn, args, retries)
        finally:
            with self._lock:
                self._running.discard(key)

    def _running_keys(self) -> list[str]:
        return list(self._running)

    def close(self) -> None:
        """Drop what has not started and wait for the running tasks (they stop at a cancel flag)."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _attempts(fn: Callable[..., Any], args: tuple[Any, ...], retries: int) -> Any:
    """``fn(*args)``, tried ``1 + retries`` times at most (any error, as Dask retries a task)."""
    attempt = 0
    while True:
        try:
            return fn(*args)
        except Exception:
            if attempt >= retries:
                raise
            attempt += 1


PR_SET_PDEATHSIG = 1  # prctl(2)


def _task_process_start(parent: int) -> None:
    """In each forked task process, first: Ctrl-C is the parent's to handle (it sets the job's
    cancel flag, which the tasks check), and the process dies with the parent (Linux's
    parent-death signal; if the parent is already gone, now)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: processes are only forked there
        pass
    if os.getppid() != parent:
        os._exit(1)


def forks_tasks() -> bool:
    """Whether ``pytc run``'s local pool may fork task processes: on Linux (fork is the safe and
    cheap start there), unless ``PYTC_FORK_TASKS=0``."""
    return sys.platform.startswith("linux") and os.environ.get("PYTC_FORK_TASKS", "1") != "0"


class ProcessPool(_LocalTasks):
    """Tasks in ``processes`` processes forked from this one, started in the order submitted.

    Made before this process starts any thread (``pytc run`` makes it before it checks the job):
    every process is forked at once, here, so that none inherits a thread's half-held lock (zarr's
    event loop, a logging handler). The task functions and their arguments are pickled to them,
    their results and errors back. A task waits here until a process is free (the executor would
    queue one more ahead, where a cancel no longer reaches it)."""

    def __init__(self, processes: int) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.processes = processes
        self._executor = ProcessPoolExecutor(
            max_workers=processes,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_task_process_start,
            initargs=(os.getpid(),),
        )
        self._lock = threading.Lock()
        self._waiting: deque[tuple[Future[Any], str, Callable[..., Any], tuple[Any, ...], int]] = deque()
        self._running: dict[Future[Any], str] = {}  # handed to a process: its key
        self.children_peak_bytes = 0
        # a fork context starts every process at the first submit, before the executor's threads
        self._executor.submit(int).result()
        self._pids = {int(pid) for pid in getattr(self._executor, "_processes", None) or {}}

    @property
    def workers(self) -> int:
        return self.processes

    def submit(self, key: str, fn: Callable[..., Any], *args: Any, retries: int, priority: int) -> Any:
        handle: Future[Any] = Future()
        with self._lock:
            self._waiting.append((handle, key, fn, args, retries))
        self._start_next()
        return handle

    def _start_next(self) -> None:
        """Hand waiting tasks to free processes (a cancelled one is dropped here)."""
        while True:
            with self._lock:
                if len(self._running) >= self.processes or not self._waiting:
                    return
                handle, key, fn, args, retries = self._waiting.popleft()
                if not handle.set_running_or_notify_cancel():
                    continue
                self._running[handle] = key
            try:
                inner = self._executor.submit(_attempts, fn, args, retries)
            except Exception as err:  # the pool broke (a process killed): this task fails with it
                self._settle(handle, err)
                continue
            inner.add_done_callback(partial(self._settle, handle))

    def _settle(self, handle: Future[Any], outcome: Future[Any] | BaseException) -> None:
        """``handle`` takes the result or error of the process's future (or the error that kept the
        task from a process); the freed process takes the next waiting task."""
        with self._lock:
            self._running.pop(handle, None)
        if isinstance(outcome, BaseException):
            error: BaseException | None = outcome
        elif outcome.cancelled():  # dropped by the executor's shutdown before a process took it
            error = CancelledError("the pool closed before the task ran")
        else:
            error = outcome.exception()
        if error is not None:
            handle.set_exception(error)
        else:
            assert isinstance(outcome, Future)
            handle.set_result(outcome.result())
        self._start_next()

    def _running_keys(self) -> list[str]:
        return list(self._running.values())

    def close(self) -> None:
        """Drop what has not started, wait for the running tasks (they stop at a cancel flag) and
        end the processes. Their peak resident memory, summed, is kept in ``children_peak_bytes``
        (read as the pool closes: after the driver has waited for its tasks)."""
        with self._lock:
            waiting = [handle for handle, *_ in self._waiting]
            self._waiting.clear()
        for handle in waiting:
            handle.cancel()
        self.children_peak_bytes = sum(_peak_rss(pid) for pid in self._pids)
        self._executor.shutdown(wait=True, cancel_futures=True)


def _peak_rss(pid: int) -> int:
    """A live process's peak resident memory (``VmHWM``), 0 where /proc does not tell."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0
