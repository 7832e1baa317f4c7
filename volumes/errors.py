"""Errors of the data plane. Each also subclasses the matching builtin."""


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
