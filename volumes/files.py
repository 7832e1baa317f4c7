"""Small durable files: the one way this project replaces a file atomically and reads JSON back.

Markers, scratch, progress records, registries, checkpoints and store metadata are all written with
:func:`atomic_write`: the bytes go to a temporary file in the same folder, are flushed to disk, and
the file is renamed over the target, so a reader (on this machine or another, on a shared file
system) sees the old file or the new one, never half of one. ``durable=True`` also syncs the folder,
which makes the rename itself survive a crash of the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from volumes.errors import VolumeFormatError

# mkstemp makes owner-only files; what we write is shared (other users, the service's workers).
FILE_MODE = 0o644


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], *, durable: bool = False
) -> None:
    """Replace ``path`` with what ``write(handle)`` writes to a binary handle."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), FILE_MODE)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        sync_folder(target.parent)


def write_json_atomic(path: str | os.PathLike[str], value: Any, *, durable: bool = False) -> None:
    """Replace ``path`` with ``value`` as JSON (keys sorted, so equal values give equal bytes)."""
    data = json.dumps(value, indent=2, sort_keys=True, default=str).encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data), durable=durable)


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON value in ``path``; None when there is no such file.

    A file that exists but does not hold JSON is an error (:class:`VolumeFormatError`, a
    ``ValueError``) naming the path: what this project writes is replaced atomically, so a broken
    file is damage to report, never a half-written one to wait for.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError as err:
        raise VolumeFormatError(f"{source} is not a UTF-8 text file: {err}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise VolumeFormatError(f"{source} is not valid JSON: {err}") from err


def read_json_object(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when there is no such file. Anything but an object (a list,
    a number) is a :class:`VolumeFormatError` naming the path, as is a file that is not JSON."""
    value = read_json(path)
    if value is not None and not isinstance(value, dict):
        raise VolumeFormatError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def sync_folder(folder: str | os.PathLike[str]) -> None:
    """fsync a folder, so that renames inside it are durable; best effort where a platform or file
    system cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)
