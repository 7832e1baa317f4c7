"""Everything one worker keeps between tasks, held by one Dask ``WorkerPlugin``.

A worker runs many block tasks of a few jobs. What they share lives here, in one object per worker
instead of module globals: the loaded models (least recently used first out), the sha256 of model
files (hashed again only when a file's size or mtime changes), each job's geometry, the opened
output arrays, and the one block whose input is being read ahead (:mod:`workers.inference.readahead`).

``pytc-worker`` hands the plugin to every worker it starts (``Nanny(..., plugins=...)``) and the
embedded clusters register it (``client.register_plugin``); :func:`worker_state` finds it through
``distributed.get_worker().plugins`` and falls back to one process-level state outside such a
worker (tests, a serial run, a debugger).

This module imports neither torch nor the models: the ``pytc-worker`` parent process imports it to
build the plugin, and the plugin is unpickled in each worker process *before* the worker's
environment (``CUDA_VISIBLE_DEVICES``) is applied, so it must not touch CUDA. It pickles as its
sizes alone; a worker starts with empty caches.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from distributed import WorkerPlugin

from volumes.lru import LRU

log = logging.getLogger(__name__)

PLUGIN_NAME = "pytc-worker-state"
DEFAULT_MAX_MODELS = 4
MAX_JOBS = 64  # geometries and open outputs kept, one per job layout


class ReadAheadSlot:
    """The one block input this worker reads ahead: ``(key, reader)`` or nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: tuple[Any, Any] | None = None
        self.counts = {"started": 0, "taken": 0, "dropped": 0}


class WorkerState(WorkerPlugin):
    """One worker's models, file hashes, job geometries, open inputs and outputs and read-ahead slot.

    The name is fixed, so registering the plugin again replaces the old one (and drops its models).
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, max_models: int = DEFAULT_MAX_MODELS) -> None:
        self.max_models = max_models
        self.models: LRU[Any] = LRU(max_models)  # (model identity, device) -> loaded model
        self.file_hashes: LRU[str] = LRU(256)  # (path, mtime_ns, size) -> sha256
        self.geometries: LRU[Any] = LRU(MAX_JOBS)  # (layout key, attempt) -> JobGeometry
        self.outputs: LRU[Any] = LRU(
            MAX_JOBS
        )  # (path, dataset, layout key, attempt) -> (Volume, its ChunkFiles)
        self.inputs: LRU[Any] = LRU(MAX_JOBS)  # (path, dataset, layout key, attempt) -> Volume
        self.readahead = ReadAheadSlot()
        self.worker_name: str | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.max_models,))

    def setup(self, worker: Any) -> None:
        from workers.runtime.affinity import pin_from_environment

        self.worker_name = str(worker.name)
        cores = pin_from_environment()  # pytc-worker --cpu-cores: this worker's share
        log.info(
            "worker %s: state ready (at most %d models)%s",
            worker.name,
            self.max_models,
            f", pinned to cores {cores}" if cores else "",
        )

    def teardown(self, worker: Any) -> None:
        self.clear()

    def clear(self) -> None:
        for cache in (self.models, self.file_hashes, self.geometries, self.outputs, self.inputs):
            cache.clear()
        with self.readahead.lock:
            self.readahead.pending = None


_PROCESS_STATE = WorkerState()


def worker_state() -> WorkerState:
    """The state of the Dask worker running this code, or this process's own outside one."""
    return worker_plugin() or _PROCESS_STATE


def worker_plugin() -> WorkerState | None:
    """The :class:`WorkerState` plugin of the Dask worker running this code, if it has one."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask worker
        return None
    plugin = worker.plugins.get(PLUGIN_NAME)
    return plugin if isinstance(plugin, WorkerState) else None
