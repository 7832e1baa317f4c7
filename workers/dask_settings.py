"""Dask settings for the processes that run block tasks.

A Dask worker samples the stack of every thread in its process every 10 ms (for the dashboard's
profile page), on its event loop. Beside a model that keeps every core busy, that sampling and
the event loop's other periodic work take CPU from the forward passes; with the sampler off, the
event loop of an embedded ``pytc run`` used 1.8 s of CPU instead of 2.6 s over a 30 s job on 2
cores. Block tasks are profiled by their own figures (``pytc run --report``), so the sampler is off
in every worker this project starts, unless the user's environment sets
``DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED`` (then theirs is kept).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

PROFILE_KEY = "distributed.worker.profile.enabled"
PROFILE_ENV = "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"


def worker_settings(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Config to set (``dask.config.set``) before starting workers; a Nanny hands it to its worker
    process."""
    env = os.environ if environ is None else environ
    return {} if PROFILE_ENV in env else {PROFILE_KEY: False}
