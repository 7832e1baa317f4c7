"""Where a job keeps its run folder (done markers, scratch) when its output is in an object store.

A local output keeps it beside itself (``<output.path>/.pytc-run/...``, :mod:`workers.inference.rundir`).
An output at ``s3://bucket/key`` keeps it on a local or shared file system instead, under
``$PYTC_SCRATCH_DIR/s3/<bucket>/<key>``: atomic renames and cheap small files are what the
bookkeeping needs, and an object store has neither. Every worker of the job must see the same
folder (a shared file system when workers run on several machines), and it must lie inside a local
data root (the engine confines the run folder as it does every other path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from volumes.urls import is_url, normalise_url, split_url
from workers.errors import SpecError

SCRATCH_ENV = "PYTC_SCRATCH_DIR"


def run_base(output_path: str, environ: Mapping[str, str] = os.environ) -> Path:
    """The folder that holds ``.pytc-run`` for the output container at ``output_path``."""
    if not is_url(output_path):
        return Path(output_path)
    bucket, key = split_url(normalise_url(output_path))
    return scratch_dir(environ) / "s3" / bucket / key


def scratch_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$PYTC_SCRATCH_DIR``, absolute; a SpecError naming ``output.path`` when it is not set."""
    value = environ.get(SCRATCH_ENV, "")
    if not value:
        raise SpecError(
            "output.path",
            f"an output in an object store keeps its run folder (done markers, scratch) on a file "
            f"system: set {SCRATCH_ENV} to a shared folder inside a data root",
        )
    return Path(value).resolve(strict=False)
