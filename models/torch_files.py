"""Whether a file can be one that torch wrote, told from its bytes without torch.

``torch.save`` (since 1.6), ``torch.jit.save`` and ``torch.export.save`` write zip archives; older
``torch.save`` files are a pickle. The control plane looks at a job's model files with this before
any worker loads them, so that an empty, truncated or foreign file is refused at once, with no
cluster started and no torch imported; what only loading can tell (a pickle that asks for a class,
weights that do not fit) is left to the workers (:mod:`models.checkpoint`).
"""

from __future__ import annotations

import os
import zipfile

_ZIP_MAGIC = b"PK\x03\x04"
# torch.save's legacy format is a pickle, which starts with PROTO from protocol 2 on (torch's
# default; protocols 0 and 1 do not load with weights_only=True anyway).
_LEGACY_START = b"\x80"


def torch_file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file at ``path`` cannot be one torch wrote (a phrase that follows its name), or
    None when it may be one. The zip's directory, at the end of the file, is read, so a copy cut
    short is found; the members are not."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_ZIP_MAGIC))
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "is empty (0 bytes): copy or save it again"
    if head.startswith(_ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as archive:
                archive.infolist()
        except (zipfile.BadZipFile, OSError) as err:
            return f"is truncated or damaged (its zip archive cannot be read: {err}): copy or save it again"
        return None
    if head.startswith(_LEGACY_START):
        return None
    return (
        "is not a file torch wrote (neither a zip archive nor a pickle), or it is damaged: "
        "copy or save it again"
    )
