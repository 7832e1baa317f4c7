"""Errors of the data plane. Each also subclasses the matching builtin."""

from __future__ import annotations


class VolumeError(Exception):
    """Base of every error raised by :mod:`volumes`."""


class VolumeNotFoundError(VolumeError, FileNotFoundError):
    """A container or dataset that should exist does not."""


class VolumeFormatError(VolumeError, ValueError):
    """A store whose format is unknown, or whose metadata is not what we expect."""


class VolumeExistsError(VolumeError, FileExistsError):
    """An output exists and may not be overwritten."""


class GeometryError(VolumeError, ValueError):
    """Boxes, windows or blocks that do not fit together."""


class VolumeReadOnlyError(VolumeError, PermissionError):
    """A write or attribute update on a volume opened read-only (or a format we only read)."""


class OversizedChunkError(VolumeFormatError):
    """A stored chunk that decodes (or says it decodes) to more than its nominal size: damaged, or a
    decompression bomb. Raised by the decoder with the bound; the reader adds the array and chunk."""

    def __init__(self, limit: int, found: str, where: str | None = None, chunk: str | None = None) -> None:
        self.limit, self.found, self.where, self.chunk = limit, found, where, chunk
        place = " ".join(filter(None, [where, f"chunk {chunk!r}" if chunk else "a chunk"]))
        super().__init__(
            f"{place} {found}; a chunk of it holds {limit:,} bytes (chunk shape x itemsize): damaged, or a "
            "decompression bomb; refused without decoding it further"
        )

    def __reduce__(self) -> tuple[type, tuple[int, str, str | None, str | None]]:
        return OversizedChunkError, (self.limit, self.found, self.where, self.chunk)

    def located(self, *, where: str | None = None, chunk: str | None = None) -> OversizedChunkError:
        """The same error naming the array (``where``) and the chunk's key, where known."""
        return OversizedChunkError(self.limit, self.found, where or self.where, chunk or self.chunk)
