"""CPU cores per worker: ``pytc-worker --cpu-cores 0-15`` splits a node's cores among its workers.

Each worker process is pinned (every thread, and so every thread it starts later) to its own
contiguous share, and torch gets one intra-op thread per core of it. Workers then never compete
for a core: on a CPU-only node one worker's reading and writing cannot slow another's model, and
on a GPU node each GPU's feeder stays on its own cores (NUMA locality when the list follows it).
Without the flag nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

ENV = "PYTC_CPU_CORES"


class CoreListError(ValueError):
    pass


def parse_cores(text: str) -> list[int]:
    """``"0-3,8,10-11"`` -> ``[0, 1, 2, 3, 8, 10, 11]`` (sorted, without repeats)."""
    cores: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise CoreListError(f"--cpu-cores: {part!r} is not a core number or a range like 0-3") from None
        if low < 0 or high < low:
            raise CoreListError(f"--cpu-cores: {part!r} is not a valid range")
        cores.update(range(low, high + 1))
    if not cores:
        raise CoreListError("--cpu-cores: no cores given")
    return sorted(cores)


def split_cores(cores: Sequence[int], workers: int) -> list[list[int]]:
    """Contiguous, equal shares (the first ones one core larger when it does not divide)."""
    if len(cores) < workers:
        raise CoreListError(f"--cpu-cores: {len(cores)} core(s) for {workers} workers; each needs one")
    size, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for i in range(workers):
        end = start + size + (1 if i < extra else 0)
        shares.append(list(cores[start:end]))
        start = end
    return shares


def usable_cores() -> set[int]:
    """The cores the calling thread may run on: its affinity (cgroup cpusets, ``--cpu-cores``)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def check_available(cores: Sequence[int]) -> None:
    """Every core in ``cores`` is one this process may run on (its affinity, cgroup cpusets)."""
    if not hasattr(os, "sched_getaffinity"):
        return  # nothing to check against, and nothing will be pinned
    outside = sorted(set(cores) - usable_cores())
    if outside:
        raise CoreListError(f"--cpu-cores: core(s) {outside} are not available to this process")


def pin_this_process(cores: Sequence[int]) -> None:
    """Pin every thread of this process to ``cores`` (Linux affinity is per thread; threads started
    later inherit it from the thread that starts them)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    tasks = Path("/proc/self/task")
    for tid in [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]:
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(tid, set(cores))


def pin_from_environment() -> list[int] | None:
    """In a worker process: apply ``PYTC_CPU_CORES`` if ``pytc-worker`` set it; the cores, or None."""
    text = os.environ.get(ENV)
    if not text:
        return None
    cores = parse_cores(text)
    pin_this_process(cores)
    return cores


def torch_threads() -> int:
    """Intra-op threads for torch on this worker: ``PYTC_TORCH_THREADS`` or all cores."""
    return int(os.environ.get("PYTC_TORCH_THREADS", "0")) or (os.cpu_count() or 1)
