"""The one LRU: bounds by count and by size, eviction order, one load per key, pickles empty."""

from __future__ import annotations

import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from volumes.lru import LRU


def test_count_bound_drops_the_least_recently_used() -> None:
    lru: LRU[str] = LRU(2)
    assert lru.put("a", "A") == [] and lru.put("b", "B") == []
    assert lru.get("a") == "A"  # now b is the least recently used
    assert lru.put("c", "C") == ["B"]
    assert lru.keys() == ["a", "c"] and "b" not in lru and lru.get("b") is None
    assert lru.get("b", "default") == "default"


def test_size_bound_and_a_value_too_large_to_keep() -> None:
    lru: LRU[bytes] = LRU(max_size=10, size_of=len)
    lru.put("a", b"aaaa")
    lru.put("b", b"bbbb")
    assert lru.size == 8
    assert lru.put("c", b"cccc") == [b"aaaa"]  # 12 > 10: the oldest goes
    assert lru.keys() == ["b", "c"] and lru.size == 8
    assert lru.put("big", b"x" * 11) == [b"x" * 11]  # alone larger than the bound: not kept
    assert "big" not in lru and lru.size == 8
    assert lru.put("b", b"y" * 11) == [b"bbbb", b"y" * 11]  # nor does it leave the old value behind
    assert lru.keys() == ["c"] and lru.size == 4


def test_replacing_a_key_updates_its_size_and_order() -> None:
    lru: LRU[bytes] = LRU(3, max_size=100, size_of=len)
    lru.put("a", b"1")
    lru.put("b", b"22")
    lru.put("a", b"333")
    assert lru.keys() == ["b", "a"] and lru.size == 5
    assert lru.pop("a") == b"333" and lru.pop("a") is None and lru.size == 2
    lru.clear()
    assert len(lru) == 0 and lru.size == 0


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="max_entries=0"):
        LRU(0)
    with pytest.raises(ValueError, match="size_of"):
        LRU(max_size=10)


def test_get_or_load_loads_once_under_concurrent_callers() -> None:
    lru: LRU[object] = LRU(4)
    loads = []
    start = threading.Barrier(8)

    def load() -> object:
        loads.append(1)
        time.sleep(0.05)  # long enough for every other caller to arrive meanwhile
        return object()

    def call(_: int) -> object:
        start.wait()
        return lru.get_or_load("model", load)[0]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(8)))
    assert len(loads) == 1 and all(r is results[0] for r in results)
    assert lru.get_or_load("model", load) == (results[0], [])


def test_get_or_load_reports_what_it_evicted() -> None:
    lru: LRU[int] = LRU(1)
    lru.get_or_load("a", lambda: 1)
    assert lru.get_or_load("b", lambda: 2) == (2, [1])


def test_pickles_as_an_empty_cache_with_the_same_bounds() -> None:
    lru: LRU[bytes] = LRU(3, max_size=10, size_of=len)
    lru.put("a", b"aaa")
    clone = pickle.loads(pickle.dumps(lru))
    assert len(clone) == 0 and clone.size == 0
    assert (clone.max_entries, clone.max_size, clone.size_of) == (3, 10, len)
    clone.put("b", b"bbb")
    assert clone.keys() == ["b"]
