"""What an array's metadata must say before anything is built from it.

A store's metadata is data like any other: a ``zarr.json`` or ``attributes.json`` can be hand-written,
truncated or hostile. Whatever a library makes of a malformed one (a KeyError for a missing
``data_type``, a TypeError for a shape that is a string, an unknown codec) becomes one
:class:`~volumes.errors.VolumeFormatError` naming the file, and the values it claims are checked:
a non-negative shape, positive chunks of the same rank, a numeric or boolean dtype (an object or
structured array holds no voxels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from volumes.errors import VolumeFormatError

MAX_NDIM = 32  # numpy's own limit is 64; a volume has 3 or 4

# What zarr-python and tensorstore raise for metadata they cannot read (zarr's own errors subclass these).
METADATA_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, NotImplementedError)


def check_array_meta(where: str, shape: Sequence[int], chunks: Sequence[int], dtype: np.dtype) -> None:
    """``shape``, ``chunks`` and ``dtype`` as read from the metadata at ``where``; else a
    VolumeFormatError naming it and the value."""
    if len(shape) > MAX_NDIM or any(int(s) < 0 for s in shape):
        raise VolumeFormatError(f"{where} claims shape {list(shape)}: expected at most {MAX_NDIM} sizes >= 0")
    if len(chunks) != len(shape) or any(int(c) < 1 for c in chunks):
        raise VolumeFormatError(
            f"{where} claims chunks {list(chunks)} for shape {list(shape)}: expected one size >= 1 per axis"
        )
    if dtype.kind not in "biuf":
        raise VolumeFormatError(
            f"{where} claims dtype {dtype}: expected booleans, integers or floats (no objects, "
            "strings or structured records)"
        )
