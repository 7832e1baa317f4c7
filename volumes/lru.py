"""One least-recently-used map for every cache of this project: decoded chunks and tiles, loaded
models, file hashes, model checks.

Bounded by the number of entries, by the total size of the values (``size_of``), or both. Safe to
share between threads. :meth:`LRU.get_or_load` holds the lock while it loads, so two threads that
miss the same key load it once (what a model cache wants); callers that must not serialise their
loads (many reader threads decoding chunks) use :meth:`LRU.get` and :meth:`LRU.put` instead, and a
key two of them load at once is kept once. An evicted value is only dropped from the map: whoever
still holds it keeps it alive. A cache pickles as an empty cache with the same bounds (values never
travel between processes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    def __init__(
        self,
        max_entries: int | None = None,
        *,
        max_size: int | None = None,
        size_of: Callable[[V], int] | None = None,
    ) -> None:
        if max_entries is not None and max_entries < 1:
            raise ValueError(f"an LRU needs room for at least one entry, got max_entries={max_entries}")
        if max_size is not None and size_of is None:
            raise ValueError("max_size needs size_of, the size of one value")
        self.max_entries, self.max_size, self.size_of = max_entries, max_size, size_of
        self._entries: OrderedDict[Hashable, V] = OrderedDict()
        self._sizes: dict[Hashable, int] = {}
        self.size = 0  # the values' total size by ``size_of`` (0 without it)
        self._lock = threading.RLock()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_empty, (self.max_entries, self.max_size, self.size_of))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def keys(self) -> list[Hashable]:
        """Keys from least to most recently used."""
        with self._lock:
            return list(self._entries)

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        """The value under ``key`` (now the most recently used), else ``default``."""
        with self._lock:
            if key not in self._entries:
                return default
            self._entries.move_to_end(key)
            return self._entries[key]

    def put(self, key: Hashable, value: V) -> list[V]:
        """Store ``value`` under ``key``; returns the values evicted to make room, least recently used
        first. A value larger than ``max_size`` on its own is not kept (it is returned as evicted, and
        so is a value it would have replaced)."""
        size = self.size_of(value) if self.size_of is not None else 0
        if self.max_size is not None and size > self.max_size:
            stale = self.pop(key)  # an older value under the same key would now be wrong
            return [value] if stale is None else [stale, value]
        evicted: list[V] = []
        with self._lock:
            if key in self._entries:
                self.size -= self._sizes.pop(key)
                del self._entries[key]
            self._entries[key] = value
            self._sizes[key] = size
            self.size += size
            while self._over():
                old_key, old = self._entries.popitem(last=False)
                self.size -= self._sizes.pop(old_key)
                evicted.append(old)
        return evicted

    def _over(self) -> bool:
        return (self.max_entries is not None and len(self._entries) > self.max_entries) or (
            self.max_size is not None and self.size > self.max_size
        )

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            if key not in self._entries:
                return None
            self.size -= self._sizes.pop(key)
            return self._entries.pop(key)

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> tuple[V, list[V]]:
        """The value under ``key``, loaded (once, under the lock) on a miss; and the values evicted."""
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key], []
            value = load()
            return value, self.put(key, value)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self.size = 0


def _empty(max_entries: int | None, max_size: int | None, size_of: Callable[[Any], int] | None) -> LRU[Any]:
    return LRU(max_entries, max_size=max_size, size_of=size_of)
