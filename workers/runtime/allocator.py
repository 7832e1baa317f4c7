"""glibc's allocator, set for 3D convolutions: big buffers reused, not mapped afresh per forward.

A 3D network's activations are tens of MiB per layer (the demo ``unet3d`` on a batch of 4 windows
of 17x129x129: 36 MiB for one 8-channel feature map). glibc serves any request above its mmap
threshold (at most 32 MiB when it adapts it, 128 KiB when anything has fixed a malloc option, as
Dask's nanny does with ``MALLOC_TRIM_THRESHOLD_=65536``) with a fresh ``mmap`` and unmaps it on
``free``, so every forward pass faults in every page of every big activation again. Measured on
this 2-core machine with the demo model: 0.52 s per batch, 3.4 s of kernel time and 2.1 million
page faults per 8 batches with glibc's defaults; 0.26 s per batch, no kernel time and 18 thousand
faults with the settings below. The memory is kept and reused: a worker's resident memory stays at
the peak of the largest block it has run (the block and model bound it, not the volume), which is
what Dask's memory limit is meant to watch. Segmentation steps call it too (a block's labels, runs
and chunk buffers are tens of MiB, allocated afresh at every step): ``pytc run`` of
affinity_connected at 128x1024x1024, three runs each, alternating: 0.68-1.04 s of kernel time
untuned, 0.49-0.66 s tuned (wall 3.71-4.13 s against 3.77-3.91 s: within this machine's noise).

:func:`tune_allocator` sets them with ``mallopt`` at run time, so it works in any worker process
however it was started (``pytc-worker``, a ``LocalCluster``, a lab's own ``dask worker``). It is a
no-op off glibc, and ``PYTC_TUNE_MALLOC=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading

log = logging.getLogger(__name__)

# mallopt(3) parameters
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

SETTINGS = {
    M_MMAP_THRESHOLD: 1 << 30,  # requests up to 1 GiB come from the heap, reused after free
    M_TRIM_THRESHOLD: 1 << 30,  # give the top of the heap back only when 1 GiB of it is free
    M_TOP_PAD: 64 << 20,  # grow the heap in 64 MiB steps
}

_lock = threading.Lock()
_state: dict[str, bool] = {}


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` once per process; True when glibc took all of them."""
    with _lock:
        if "tuned" not in _state:
            _state["tuned"] = _apply()
        return _state["tuned"]


def _apply() -> bool:
    if os.environ.get("PYTC_TUNE_MALLOC", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt): nothing to tune
        return False
    taken = all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
    if not taken:
        log.warning("glibc refused some malloc settings; 3D convolutions may page-fault on every forward")
    return taken
