"""Small stores written as their own tools lay them out, for the volume tests."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import zarr

SHAPE, CHUNKS = (4, 6, 8), (2, 3, 4)


def make_zarr(path: Path, name: str, zarr_format: int, **kw: object) -> zarr.Array:
    """A uint16 (4, 6, 8) array of 0, 1, 2, ... in chunks of (2, 3, 4), inside the group at ``path``."""
    group = zarr.open_group(str(path), mode="a", zarr_format=zarr_format)  # type: ignore[arg-type]
    array = group.create_array(name, shape=SHAPE, dtype="uint16", chunks=CHUNKS, **kw)  # type: ignore[arg-type]
    array[:] = np.arange(int(np.prod(SHAPE)), dtype="uint16").reshape(SHAPE)
    return array


def make_n5(path: Path, name: str, attrs: Mapping[str, object] | None = None) -> Path:
    """An N5 dataset's metadata as N5 writers lay it out (x first); no chunks: they read as 0."""
    (path / name).mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "4.0.0"}))
    meta = {
        "dimensions": list(SHAPE[::-1]),
        "blockSize": list(CHUNKS[::-1]),
        "dataType": "uint8",
        "compression": {"type": "raw"},
    }
    (path / name / "attributes.json").write_text(json.dumps({**meta, **(attrs or {})}))
    return path
