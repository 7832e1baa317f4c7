"""Pieces of objects (one block's labels) joined into objects, numbered and filtered.

Every piece has a provisional number: its block's offset (the pieces of the blocks before it, in
block order) plus its local label. The links found across block faces are edges between those
numbers; the objects are the connected components of that graph (:func:`join`, a union-find in
numpy: scipy's csgraph gave the same partition but cost a job 0.2 s of start-up to import), whose
nodes are only the pieces named in a link: those that touch a piece of another block. A piece with
no link is an object on its own and never enters the graph, so the graph (and its union state) grows
with the objects at block faces, never with the objects inside blocks or with voxels. An object's
first voxel is the first of its pieces' first voxels (raster order is the same inside a block and in
the volume), its size the sum of theirs. Numbering and the table still need one row per object (its
first voxel, size, box and centroid sums): what the object table holds anyway.

PyTC's numbers are the objects' ranks in raster order of their first voxels (what ``label`` gives on
the whole volume). :func:`final_ids` then applies the size filter to whole objects and the
numbering the job asks for: PyTC's (``relabel: none``, gaps where objects were removed) or 1..N in
the same order (``relabel: sequential``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from volumes.labels.decoders import Decoder, check_background

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


def join(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pieces named in links (``a[i]`` touches ``b[i]``, provisional numbers) and the component
    of each: (nodes, sorted; component of ``nodes[j]``, 0..c-1). Only pieces that touch a piece of
    another block are nodes: the graph is as large as the objects at block faces, never larger."""
    nodes, ends = np.unique(np.concatenate([a, b]), return_inverse=True)
    roots = components_of_edges(nodes.shape[0], ends[: a.shape[0]], ends[a.shape[0] :])
    _, component = np.unique(roots, return_inverse=True)
    return nodes.astype(np.int64), component.reshape(-1).astype(np.int64)


def components_of_edges(m: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The connected components of the undirected graph on nodes 0..m-1 with edges (u[i], v[i]):
    each node's root, the smallest node of its component.

    A union-find done a round at a time over all edges: every edge whose ends have different roots
    hooks the larger root under the smaller (``parent[x] <= x`` always, so no cycle forms), then
    pointer jumping flattens every tree to depth one. Each round joins at least the two roots of
    every edge still between components, and a round is a few passes over the edges."""
    parent = np.arange(m, dtype=np.int64)
    u, v = u.astype(np.int64), v.astype(np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        apart = pu != pv
        if not apart.any():
            return parent
        pu, pv = pu[apart], pv[apart]
        low = np.minimum(pu, pv)
        np.minimum.at(parent, np.maximum(pu, pv), low)
        while True:  # flatten: every node points at its root
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up


def number(
    nodes: np.ndarray, component: np.ndarray, first: np.ndarray, drop: np.ndarray | None = None
) -> np.ndarray:
    """PyTC's number of each provisional number 1..total (row i - 1): the rank of its object's first
    voxel in raster order, 1-based. ``first`` holds each piece's first voxel; a piece outside the
    graph (:func:`join`) is an object of its own, whose first voxel is its own. Pieces in ``drop``
    (outside the graph) are no objects: 0."""
    object_first = first.astype(np.int64, copy=True)
    if nodes.size:
        comp_first = np.full(int(component.max()) + 1, NO_VOXEL, dtype=np.int64)
        np.minimum.at(comp_first, component, first[nodes - 1])
        object_first[nodes - 1] = comp_first[component]
    dropped = drop is not None and bool(drop.any())
    if dropped:
        object_first[drop] = NO_VOXEL  # above every voxel: ranked after every object, then 0
    # an object's first voxel is its own: the objects are the distinct values, in raster order;
    # their ranks from one sort (np.unique's inverse: numpy 2's hashed np.unique of the values
    # alone, then a binary search, took 10 times longer for a few hundred thousand pieces)
    _, rank = np.unique(object_first, return_inverse=True)
    ids = rank.reshape(-1).astype(np.int64) + 1
    if dropped:
        ids[drop] = 0
    return ids


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
    out_first = np.full(k, NO_VOXEL, dtype=np.int64)
    out_lo = np.full((k, 3), NO_VOXEL, dtype=np.int64)
    out_hi = np.zeros((k, 3), dtype=np.int64)
    # sums by bincount (float64 adds, as np.add.at's; exact for counts below 2**53), minima and
    # maxima by ufunc.at: an affinity map's blocks have hundreds of thousands of pieces
    out_count = np.bincount(rows, weights=count, minlength=k)[:k].astype(np.int64)
    out_sums = np.zeros((k, 3), dtype=np.float64)
    for a in range(sums.shape[1] if sums.ndim == 2 else 0):
        out_sums[:, a] = np.bincount(rows, weights=sums[:, a], minlength=k)[:k]
    np.minimum.at(out_first, rows, first)
    np.minimum.at(out_lo, rows, lo)
    np.maximum.at(out_hi, rows, hi)
    return Objects(out_count, out_first, out_lo, out_hi, out_sums)


def slice_filter(
    decoder: Decoder, ids: np.ndarray, k: int, rows: dict[str, np.ndarray], plane_voxels: int, depth: int
) -> tuple[Objects, np.ndarray]:
    """The per-slice size filter (``background_2d``, ``neighbor_2d``) over the rows of
    :func:`volumes.labels.blockcc.slice_pieces` of every block, ``ids`` each row's object (1..k):
    an object's voxels in a z slice are dropped where it has fewer than ``thres_small`` there.
    Returns the kept voxels' statistics per object (an object with none left has count 0) and the
    dropped (object, z) pairs as sorted keys ``id * depth + z``."""
    key = ids.astype(np.int64) * depth + rows["z"]
    keys, inverse = np.unique(key, return_inverse=True)
    m = keys.shape[0]
    count = np.zeros(m, dtype=np.int64)
    lo = np.full((m, 2), NO_VOXEL, dtype=np.int64)
    hi = np.zeros((m, 2), dtype=np.int64)
    sums = np.zeros((m, 2), dtype=np.float64)
    np.add.at(count, inverse, rows["count"])
    np.minimum.at(lo, inverse, rows["lo"])
    np.maximum.at(hi, inverse, rows["hi"])
    np.add.at(sums, inverse, rows["sums"])
    z = keys % depth
    filled = np.bincount(z, weights=count, minlength=depth).astype(np.int64)
    for b in plane_voxels - filled[filled > 0]:  # a slice without objects is left as it is
        check_background(decoder, int(b))
    kept = count >= decoder.thres_small
    zk = z[kept]
    objects = aggregate(
        keys[kept] // depth,
        k,
        count[kept],
        np.zeros(int(kept.sum()), dtype=np.int64),
        np.column_stack([zk, lo[kept]]),
        np.column_stack([zk + 1, hi[kept]]),
        np.column_stack([zk * count[kept], sums[kept]]).astype(np.float64),
    )
    return objects, keys[~kept]


def final_ids(decoder: Decoder, objects: Objects, relabel: str, voxels: int | None = None) -> np.ndarray:
    """The written number of each PyTC number 0..K (0 stays 0; removed objects and objects that
    vanished under the dilation become 0). ``voxels``: the volume's, to check the background's size
    under ``neighbor`` (:func:`volumes.labels.decoders.check_background`)."""
    if voxels is not None and not decoder.per_slice:  # per slice: checked by slice_filter
        check_background(decoder, voxels - int(objects.count.sum()))
    keep = (objects.count > 0) & ~decoder.removes(objects.count)
    out = np.zeros(objects.n + 1, dtype=np.int64)
    if relabel == "sequential":
        out[1:] = np.cumsum(keep) * keep
    else:
        out[1:] = np.arange(1, objects.n + 1) * keep
    return out


def narrow_dtype(top: int) -> np.dtype:
    """The narrowest unsigned integer type that holds 0..``top``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


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
