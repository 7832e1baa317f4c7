"""The data roots hold while a job runs, not only when it is admitted.

Admission resolves every path a job names, symlinks followed, inside the data roots
(``service.documents.sections.resolve_path``). A directory can be swapped for a symlink afterwards,
while the job runs: without a second look the job would read another volume into an output marked
complete, or write its chunks outside the roots. So the engine looks again each time it opens a
path on a worker (the input for each block's reader, the output and the run folder for each block
task, the output again before each chunk it writes and before it is marked complete): the path is
resolved, every symlink followed, and must still lie inside one of the job's roots.

What this cannot see is a swap inside the instant between the look and the open (the files are
opened by path by the storage libraries); a swap between blocks, or between chunks, is caught.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from workers.errors import PathEscapeError


def confined(path: str | os.PathLike[str], roots: Sequence[str]) -> Path:
    """``path`` resolved (every symlink followed) when it lies inside one of ``roots``, which are
    resolved already; :class:`PathEscapeError` naming the path otherwise. No roots: no confinement
    (a job built in a test or a debugger)."""
    if not roots:
        return Path(path)
    try:
        resolved = Path(path).resolve(strict=False)
    except (OSError, RuntimeError) as err:  # a symlink loop swapped in
        raise PathEscapeError(f"{path} cannot be resolved any more: {err}") from err
    if not any(resolved.is_relative_to(root) for root in roots):
        raise PathEscapeError(
            f"{path} now resolves to {resolved}, outside the data roots ({', '.join(roots)}): "
            "a symlink was put in its way after the job was admitted"
        )
    return resolved


def node(path: str, dataset: str | None) -> Path:
    """The directory (or file) of an array: its container joined with its dataset."""
    return Path(path, dataset or "")
