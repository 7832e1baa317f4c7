"""The table of objects of a labels image.

The labels themselves are an output image like a prediction's (:func:`volumes.output.create_output`
with ``label=True``): ``<path>/<dataset>/`` a group with its own ``multiscales`` and ``image-label``,
level ``0`` the (z, y, x) labels, coarser levels from the label pyramid.

The table of objects is a CSV file beside the image, ``<dataset>.objects.csv`` in the container: a
row per object (id, voxels, bounding box with exclusive ends, centroid), written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from volumes.detect import clean_dataset
from volumes.files import atomic_write
from volumes.labels.merge import TABLE_FORMAT, TABLE_HEADER


def table_path(path: str | os.PathLike[str], dataset: str) -> Path:
    """``<dataset>.objects.csv`` beside the array in its container."""
    return Path(path) / f"{clean_dataset(dataset)}.objects.csv"


def write_table(target: Path, rows: np.ndarray) -> None:
    """The table of objects (rows from :func:`volumes.labels.merge.table_rows`), atomically."""
    buffer = io.StringIO()
    np.savetxt(buffer, rows, fmt=TABLE_FORMAT, delimiter=",", header=TABLE_HEADER, comments="")
    data = buffer.getvalue().encode()
    atomic_write(target, lambda h: h.write(data))


def read_table(target: Path) -> np.ndarray:
    """The table as a (n, 11) float array (ids and counts exact below 2**53)."""
    return np.loadtxt(target, delimiter=",", skiprows=1, ndmin=2)
