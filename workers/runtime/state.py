"""The per-worker model cache, owned by a Dask ``WorkerPlugin``.

A worker keeps a few loaded models (least recently used first out) so that consecutive blocks of
one job, and jobs that alternate between models, load each model once per worker. The plugin is
handed to every worker by ``pytc-worker`` (``Nanny(..., plugins=...)``); ``workers.inference.model_cache``
finds it through ``distributed.get_worker().plugins`` and falls back to a process-level cache when
it runs outside such a worker (tests, an embedded cluster started without the plugin).

This module imports neither torch nor the models: the ``pytc-worker`` parent process imports it to
build the plugin, and the plugin is unpickled in each worker process *before* the worker's
environment (``CUDA_VISIBLE_DEVICES``) is applied, so it must not touch CUDA.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from distributed import WorkerPlugin

logger = logging.getLogger(__name__)

PLUGIN_NAME = "pytc-model-cache"
DEFAULT_MAX_MODELS = 4

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A small thread-safe least-recently-used map whose values are built on a miss.

    ``get_or_load`` holds the lock while it loads, so two threads asking for the same missing
    model load it once; a worker runs one task at a time, so nothing waits in practice. An evicted
    value is only dropped from the map: a task still holding it keeps it alive until it returns.
    It pickles as an empty cache of the same capacity (values never travel between processes).
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"a cache needs room for at least one entry, got max_entries={max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.RLock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.max_entries,))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value: V) -> list[V]:
        """Store ``value``; returns the values evicted to make room (least recently used first)."""
        evicted: list[V] = []
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                old_key, old_value = self._entries.popitem(last=False)
                logger.info("cache full (%d entries): dropping %.80r", self.max_entries, old_key)
                evicted.append(old_value)
        return evicted

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._entries.pop(key, None)

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> tuple[V, list[V]]:
        """The value under ``key``, loaded on a miss; and the values evicted for it."""
        with self._lock:
            cached = self.get(key)
            if cached is not None:
                return cached, []
            value = load()
            return value, self.put(key, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class ModelCachePlugin(WorkerPlugin):
    """Owns the models one Dask worker has loaded, keyed by (model identity, device): the most
    recent ``capacity`` of them, so one worker serves blocks of several jobs and models without
    reloading.

    ``pytc-worker`` installs it in every worker at start (``Nanny(..., plugins=...)``); a client can
    also install it cluster-wide (``client.register_plugin(ModelCachePlugin())``). The name is
    fixed, so registering again replaces the old plugin and drops its models.
    """

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, capacity: int = DEFAULT_MAX_MODELS) -> None:
        self.capacity = capacity
        self.cache: LRUCache[Any] = LRUCache(capacity)
        self.worker_name: str | None = None

    def setup(self, worker: Any) -> None:
        from workers.runtime.affinity import pin_from_environment

        self.worker_name = str(worker.name)
        cores = pin_from_environment()  # pytc-worker --cpu-cores: this worker's share
        logger.info(
            "worker %s: model cache ready (at most %d models)%s",
            worker.name,
            self.capacity,
            f", pinned to cores {cores}" if cores else "",
        )

    def teardown(self, worker: Any) -> None:
        self.cache.clear()

    def get(self, key: Hashable) -> Any:
        return self.cache.get(key)

    def put(self, key: Hashable, model: Any) -> list[Any]:
        return self.cache.put(key, model)


def worker_plugin() -> ModelCachePlugin | None:
    """The model cache plugin of the Dask worker running this code, if any."""
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:  # not inside a Dask worker
        return None
    plugin = worker.plugins.get(PLUGIN_NAME)
    return plugin if isinstance(plugin, ModelCachePlugin) else None
