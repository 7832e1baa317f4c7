"""Which tasks a worker is still running, as the worker sees it.

The scheduler forgets a task the moment a client cancels it, while the worker's thread goes on
running it (Python threads cannot be stopped): a block task cancelled mid-run can still write its
chunks, partial sums and marker for a while. Whoever must wait until a job's tasks wrote their
last byte asks the workers (``client.run(running_keys, prefixes)``), not the scheduler.
"""

from __future__ import annotations

from typing import Any

# A compute task's states while its function may still be running on a thread of the worker.
RUNNING_STATES = frozenset({"executing", "long-running", "cancelled", "resumed"})


def running_keys(prefixes: tuple[str, ...], dask_worker: Any = None) -> list[str]:
    """The keys starting with one of ``prefixes`` whose function may still run on this worker
    (cancelled ones included); ``dask_worker`` is given by ``client.run``."""
    tasks = list(dask_worker.state.tasks.values())
    return [str(t.key) for t in tasks if t.state in RUNNING_STATES and str(t.key).startswith(prefixes)]
