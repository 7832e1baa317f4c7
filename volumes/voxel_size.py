"""Voxel sizes as metadata writes them: lengths in some unit, over some axes; ours are (z, y, x) in nm."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from volumes.volume import VoxelSize

# Lengths in metadata are converted to nanometres; an absent or unknown unit is taken as given.
NM_PER_UNIT = {"nanometer": 1.0, "nm": 1.0, "angstrom": 0.1, "micrometer": 1e3, "um": 1e3, "µm": 1e3}
NM_PER_UNIT |= {"millimeter": 1e6, "mm": 1e6}


def nm_per(unit: object) -> float:
    """How many nanometres one ``unit`` is (1 for an absent or unknown unit)."""
    return NM_PER_UNIT.get(str(unit), 1.0)


def spatial(values: Sequence[Any] | None) -> VoxelSize | None:
    """The last three (spatial z, y, x) of ``values`` as floats, or None when there are fewer."""
    if not isinstance(values, list | tuple) or len(values) < 3:
        return None
    z, y, x = (float(v) for v in values[-3:])
    return z, y, x
