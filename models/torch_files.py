"""Whether a file can be one that torch wrote, told from its bytes without torch.

``torch.save`` (since 1.6), ``torch.jit.save`` and ``torch.export.save`` write zip archives; older
``torch.save`` files are a pickle. The control plane looks at a job's model files with this before
any worker loads them, so that an empty, truncated or foreign file is refused at once, with no
cluster started and no torch imported; what only loading can tell (a pickle that asks for a class,
weights that do not fit) is left to the workers (:mod:`models.checkpoint`).

It also bounds what loading may cost. torch reads a zip member into a buffer of the size the zip's
central directory declares, so a 2 MB archive declaring gigabytes of zeros (a zip bomb) takes
gigabytes and tens of seconds before anything can be refused. From the directory alone, nothing
decompressed: the archive may declare at most ``PYTC_MAX_MODEL_BYTES`` (default 4 GiB) in all and
``MAX_EXPANSION`` times its own size (torch stores members uncompressed, so a file torch wrote
declares about its own size), and hold at most ``MAX_MEMBERS`` members; a pickle (the legacy
format, read whole) may be at most ``PYTC_MAX_MODEL_BYTES`` on disk.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format is a pickle, which starts with PROTO from protocol 2 on (torch's
# default; protocols 0 and 1 do not load with weights_only=True anyway).
_LEGACY_START = b"\x80"

DEFAULT_MAX_MODEL_BYTES = 4 * 2**30
MAX_MODEL_BYTES_VARIABLE = "PYTC_MAX_MODEL_BYTES"
# Declared bytes per byte on disk past which an archive is a bomb, once it declares over EXPANSION_FLOOR.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 64 * 2**20
# A TorchScript file holds a member per tensor and per code file: thousands; its directory is parsed whole.
MAX_MEMBERS = 200_000


def max_model_bytes(environ: Mapping[str, str] | None = None) -> int:
    """``PYTC_MAX_MODEL_BYTES`` (bytes; ``4GiB``, ``512MiB`` and such are read too), else 4 GiB.
    Read when a file is looked at, by the service, ``pytc run`` and the workers alike."""
    text = (os.environ if environ is None else environ).get(MAX_MODEL_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_MODEL_BYTES
    units = {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "kb": 10**3, "mb": 10**6, "gb": 10**9}
    lowered = text.lower().replace(" ", "")
    factor = next((f for unit, f in units.items() if lowered.endswith(unit)), 1)
    number = lowered.rstrip("kmgtib") if factor != 1 else lowered
    try:
        value = int(float(number) * factor)
    except ValueError:
        raise ValueError(
            f"{MAX_MODEL_BYTES_VARIABLE}={text!r} is not a size in bytes (e.g. 4294967296 or 4GiB)"
        ) from None
    if value <= 0:
        raise ValueError(f"{MAX_MODEL_BYTES_VARIABLE}={text!r} must be positive")
    return value


def torch_file_problem(path: str | os.PathLike[str], max_bytes: int | None = None) -> str | None:
    """Why the file at ``path`` cannot be one torch wrote, or may not be loaded (a phrase that
    follows its name), or None when it may be one. The zip's directory, at the end of the file, is
    read, so a copy cut short is found; the members are not. ``max_bytes``: the most a model may
    take when loaded; default :func:`max_model_bytes`."""
    limit = max_model_bytes() if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
            size = os.fstat(handle.fileno()).st_size
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "is empty (0 bytes): copy or save it again"
    if head.startswith(_ZIP_MAGIC):
        return _archive_problem(path, size, limit)
    if head.startswith(_LEGACY_START):
        return _over(size, "is", limit) if size > limit else None
    return (
        "is not a file torch wrote (neither a zip archive nor a pickle), or it is damaged: "
        "copy or save it again"
    )


def _archive_problem(path: str | os.PathLike[str], size: int, limit: int) -> str | None:
    """A zip archive: readable, and declaring no more than the bounds (see the module's docstring)."""
    try:
        with open(path, "rb") as handle:
            end = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # the directory's size, unparsed
        members = 0 if end is None else end[zipfile._ECD_ENTRIES_TOTAL]  # type: ignore[attr-defined]
        if members > MAX_MEMBERS:
            return (
                f"is a zip archive of {members:,} members, more than a model holds ({MAX_MEMBERS:,}); refused"
            )
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError) as err:
        return f"is truncated or damaged (its zip archive cannot be read: {err}): copy or save it again"
    if declared > limit:
        return _over(declared, "is a zip archive whose members declare", limit)
    if declared > EXPANSION_FLOOR and declared > MAX_EXPANSION * size:
        return (
            f"is a zip archive of {size:,} bytes whose members declare {declared:,} bytes, more than "
            f"{MAX_EXPANSION} times its size (torch stores its members uncompressed): a zip bomb or "
            "not a file torch wrote; refused unread"
        )
    return None


def _over(size: int, what: str, limit: int) -> str:
    return (
        f"{what} {size:,} bytes, more than the {limit:,} a model may take ({MAX_MODEL_BYTES_VARIABLE}); "
        "refused unread"
    )
