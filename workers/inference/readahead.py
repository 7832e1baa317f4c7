"""Reading the next block's input while the current block computes (one block ahead, per worker).

A block task reads its input in z-slabs on a background thread
(:class:`workers.inference.pipeline.SlabReader`)
and writes finished chunks behind the forward passes, but its first slab used to be read with the
model idle. Once the current block's own input is all read, :func:`start_next` looks at the block
tasks queued on this worker (Dask's worker state: a task waiting for the ``GPU`` resource sits in
``constrained``, one ready to run in ``ready``), and if the next one is pass 1 of the same job it
starts that block's reader. The next task takes it over (:func:`take`) instead of starting its own,
so its first batch finds its input read. At most one block is read ahead, so a worker's memory
grows by one block's input at most; a read-ahead nobody takes is dropped. It is an optimisation
only: anything unexpected (no worker, another job next, a Dask version whose state looks
different) means no read-ahead, never an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from volumes.blocks import Index
from volumes.box import Box
from workers.runtime.state import worker_state

log = logging.getLogger(__name__)


def task_prefix(layout_key: str, attempt: str) -> str:
    """What the Dask keys of one run of a job begin with: ``pytc-<layout key>-<attempt>-``.

    The attempt (a token each run draws, :class:`workers.inference.run.InferenceRun`) keeps the
    keys of a job run again apart from those of its earlier runs: Dask hands back the result of a
    key it still holds, so a job resubmitted after a failure or a cancel would otherwise get the
    old error back at once without running."""
    return f"pytc-{layout_key}-{attempt}-" if attempt else f"pytc-{layout_key}-"


def task_key(layout_key: str, phase: int, block: Index, attempt: str = "") -> str:
    """The Dask key of a block task (the inference kind submits with it)."""
    return f"{task_prefix(layout_key, attempt)}p{phase}-{'_'.join(map(str, block))}"


def next_queued_block(layout_key: str, attempt: str = "") -> Index | None:
    """The pass-1 block of this job that this worker runs next, if that is what its queue holds."""
    try:
        from distributed import get_worker

        state = get_worker().state
        queued = [*state.constrained.peekn(2), *state.ready.peekn(2)]
    except Exception:  # not on a worker, or a worker state of another shape
        return None
    prefix = f"{task_prefix(layout_key, attempt)}p1-"
    for task in sorted(queued, key=lambda t: t.priority or ()):
        key = str(task.key)
        if key.startswith(prefix):
            try:
                return tuple(int(i) for i in key[len(prefix) :].split("_"))
            except ValueError:
                return None
        return None  # the next task is something else: leave the IO to it
    return None


def start_next(
    layout_key: str, make_reader: Callable[[Index], tuple[Box, Any] | None], attempt: str = ""
) -> None:
    """Start reading the next queued block of this run, unless one is read ahead already."""
    block = next_queued_block(layout_key, attempt)
    if block is None:
        return
    slot = worker_state().readahead  # ((layout_key, attempt, block, read_box), reader) or None
    with slot.lock:
        if slot.pending is not None:
            return
        made = make_reader(block)
        if made is None:
            return
        read_box, reader = made
        slot.pending = ((layout_key, attempt, block, read_box), reader)
        slot.counts["started"] += 1
    log.debug("reading block %s ahead", block)


def take(layout_key: str, block: Index, read_box: Box, attempt: str = "") -> Any | None:
    """The reader started ahead for exactly this block's input in this run, or None (a stale one,
    of another job or of an earlier run of this one that may have failed, is dropped)."""
    slot = worker_state().readahead
    with slot.lock:
        if slot.pending is None:
            return None
        (key, reader), slot.pending = slot.pending, None
        if key == (layout_key, attempt, block, read_box):
            slot.counts["taken"] += 1
            return reader
        slot.counts["dropped"] += 1
        return None
