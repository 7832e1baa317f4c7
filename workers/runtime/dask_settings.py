"""Dask settings for the processes that run block tasks.

A block task's forward passes keep every core busy, and a torch thread needs the GIL between
operations; a Dask event loop's periodic work, on a thread of the same process, takes both. With
Dask's defaults an embedded ``pytc run`` worker (scheduler and worker on one event loop) held the
GIL for 1.2 s of a 33 s job on 2 cores: every server checks its loop's health every 20 ms, the
worker reads its memory every 100 ms and samples every thread's stack every 10 ms for the
dashboard's profile page. The settings below keep what each one is for at a rate a block task
does not feel (0.2 to 0.5 s of GIL over the same job):

- the stack sampler is off: block tasks are timed by their own figures (``pytc run --report``);
- the loop-health tick runs every second: Dask warns about a loop blocked for 3 s or more
  (``distributed.admin.tick.limit``), which a 1 s tick still sees;
- a worker reads its memory every 0.5 s: its memory is the block's and the model's, and it grows
  with a block, not between two reads;
- the host's CPU, network and disk figures for the dashboard are read every 2 s.

A setting the user's environment makes (``DASK_DISTRIBUTED__...``, as Dask reads it) is kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

PROFILE_KEY = "distributed.worker.profile.enabled"
TICK_KEY = "distributed.admin.tick.interval"
MEMORY_MONITOR_KEY = "distributed.worker.memory.monitor-interval"
SYSTEM_MONITOR_KEY = "distributed.admin.system-monitor.interval"

SETTINGS: dict[str, Any] = {
    PROFILE_KEY: False,
    TICK_KEY: "1s",
    MEMORY_MONITOR_KEY: "500ms",
    SYSTEM_MONITOR_KEY: "2s",
}


def env_name(key: str) -> str:
    """The environment variable Dask reads for ``key`` (``a.b-c`` -> ``DASK_A__B_C``)."""
    return "DASK_" + "__".join(part.replace("-", "_") for part in key.split(".")).upper()


PROFILE_ENV = env_name(PROFILE_KEY)


def worker_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config to set (``dask.config.set``) before starting workers and, for an embedded cluster,
    its scheduler; a Nanny hands it to its worker process."""
    env = os.environ if environ is None else environ
    return {key: value for key, value in SETTINGS.items() if env_name(key) not in env}
