"""Pieces of objects (one block's labels) joined into objects, numbered and filtered.

Every piece has a provisional number: its block's offset (the pieces of the blocks before it, in
block order) plus its local label. The links found across block faces are edges between those
numbers; the objects are the connected components of that graph (``scipy.sparse.csgraph``): the
state is one entry per piece, never per voxel. An object's first voxel is the first of its pieces'
first voxels (raster order is the same inside a block and in the volume), its size the sum of theirs.

PyTC's numbers are the objects' ranks in raster order of their first voxels (what ``label`` gives on
the whole volume). :func:`final_ids` then applies the size filter to whole objects and the
numbering the job asks for: PyTC's (``relabel: none``, gaps where objects were removed) or 1..N in
the same order (``relabel: sequential``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from volumes.labels.decoders import Decoder

NO_VOXEL = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Objects:
    """Per object 1..K (row k - 1, PyTC's number k): size, first voxel, box and coordinate sums."""

    count: np.ndarray
    first: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    sums: np.ndarray

    @property
    def n(self) -> int:
        return int(self.count.shape[0])


def join(total: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The component of each provisional number 0..total (0 the background, alone)."""
    ones = np.ones(a.shape[0], dtype=np.int8)
    graph = coo_matrix((ones, (a, b)), shape=(total + 1, total + 1))
    _, component = connected_components(graph, directed=False)
    return component.astype(np.int64)


def number(component: np.ndarray, first: np.ndarray) -> np.ndarray:
    """PyTC's number of each provisional number 1..total (row i - 1): the rank of its object's first
    voxel in raster order, 1-based. ``first`` holds each piece's first voxel."""
    comps = component[1:]
    k = int(component.max(initial=0)) + 1
    obj_first = np.full(k, NO_VOXEL, dtype=np.int64)
    np.minimum.at(obj_first, comps, first)
    real = np.flatnonzero(obj_first != NO_VOXEL)
    rank = np.zeros(k, dtype=np.int64)
    rank[real[np.argsort(obj_first[real], kind="stable")]] = np.arange(1, real.shape[0] + 1)
    return rank[comps]


def aggregate(
    ids: np.ndarray,
    k: int,
    count: np.ndarray,
    first: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    sums: np.ndarray,
) -> Objects:
    """Statistics of pieces (or of blocks' parts of objects) summed per object ``ids`` (1..k)."""
    rows = ids - 1
    out_count = np.zeros(k, dtype=np.int64)
    out_first = np.full(k, NO_VOXEL, dtype=np.int64)
    out_lo = np.full((k, 3), NO_VOXEL, dtype=np.int64)
    out_hi = np.zeros((k, 3), dtype=np.int64)
    out_sums = np.zeros((k, 3), dtype=np.float64)
    np.add.at(out_count, rows, count)
    np.minimum.at(out_first, rows, first)
    np.minimum.at(out_lo, rows, lo)
    np.maximum.at(out_hi, rows, hi)
    np.add.at(out_sums, rows, sums)
    return Objects(out_count, out_first, out_lo, out_hi, out_sums)


def final_ids(decoder: Decoder, objects: Objects, relabel: str) -> np.ndarray:
    """The written number of each PyTC number 0..K (0 stays 0; removed objects and objects that
    vanished under the dilation become 0)."""
    keep = (objects.count > 0) & ~decoder.removes(objects.count)
    out = np.zeros(objects.n + 1, dtype=np.int64)
    if relabel == "sequential":
        out[1:] = np.cumsum(keep) * keep
    else:
        out[1:] = np.arange(1, objects.n + 1) * keep
    return out


def label_dtype(max_id: int) -> np.dtype:
    """uint32 when the numbers fit, else uint64."""
    return np.dtype(np.uint32) if max_id <= np.iinfo(np.uint32).max else np.dtype(np.uint64)


def table_rows(objects: Objects, final: np.ndarray) -> np.ndarray:
    """One row per written object, by id: id, voxels, box (z0 y0 x0 z1 y1 x1, end exclusive),
    centroid (z y x)."""
    written = np.flatnonzero(final[1:])
    ids = final[1:][written]
    order = np.argsort(ids, kind="stable")
    written, ids = written[order], ids[order]
    count = objects.count[written]
    centroid = objects.sums[written] / np.maximum(count, 1)[:, None]
    return np.column_stack(
        [ids.astype(np.float64), count, objects.lo[written], objects.hi[written], centroid]
    )


TABLE_HEADER = "id,voxels,z0,y0,x0,z1,y1,x1,centroid_z,centroid_y,centroid_x"
TABLE_FORMAT = ["%d"] * 8 + ["%.3f"] * 3
