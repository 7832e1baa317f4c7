"""One block's connected components, their statistics and faces, and the links across block faces.

A block's labels are local (1..n, in raster order of each piece's first voxel inside the block).
Its six faces (the first and last layer along each axis) are kept apart, so that the links to its
neighbours are found from faces alone, never from a neighbour's whole block::

    block B, neighbour N = B + n (n in {-1, 0, 1}^3, one of the 13 that come before B)
    along an axis with n_i = -1: B's first layer meets N's last one (n_i = +1: B's last, N's first)
    along an axis with n_i = 0: both extents are the same; a voxel offset d_i of -1, 0 or +1

Two foreground voxels q (in B) and q + d (in N) touch when d has at most 1 (6-connectivity), 2 (18)
or 3 (26) non-zero components, with d_i = n_i wherever n_i != 0: faces (one n_i != 0), edges (two)
and corners (three). Affinity graphs join only face neighbours, where the affinity of the voxel in
the later block (channel a, its first layer along a) says whether they are joined.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from volumes.labels.decoders import Decoder, above, foreground, structure

Index = tuple[int, ...]
# The 13 neighbour offsets that come before a block in raster order: each pair of blocks once.
EARLIER = tuple(n for n in itertools.product((-1, 0, 1), repeat=3) if n < (0, 0, 0))


@dataclass(frozen=True)
class Pieces:
    """Per local label 1..n of one block (row l - 1): voxel count, the global raster index of its
    first voxel, bounding box (inclusive min, exclusive max, global) and coordinate sums."""

    count: np.ndarray  # int64 (n,)
    first: np.ndarray  # int64 (n,)
    lo: np.ndarray  # int64 (n, 3)
    hi: np.ndarray  # int64 (n, 3)
    sums: np.ndarray  # float64 (n, 3)
    # affinities: pieces that are objects only if a link names them (bool (n,); None: none such):
    # voxels of a high face with no edge inside the block, whose edge to the next block (read by
    # that block, never by this one) decides whether they are foreground
    maybe: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.count.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"count": self.count, "first": self.first, "lo": self.lo, "hi": self.hi, "sums": self.sums}
        return out if self.maybe is None else {**out, "maybe": self.maybe}


Runs = tuple[np.ndarray, np.ndarray, np.ndarray]  # a block's runs along x (:func:`runs`)
# given a block's runs (labels 1..n in raster order), each label's new number 0..m (0: dropped;
# the kept ones in the same order), or None to keep them all
Renaming = Callable[[Runs], np.ndarray | None]


def label_block(
    decoder: Decoder,
    pred: np.ndarray,
    core: tuple[int, ...],
    at_start: tuple[bool, ...],
    at_end: tuple[bool, ...],
    keep: Renaming | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], Runs | None, np.ndarray | None]:
    """Local labels (uint32, raster order) of a block whose prediction ``pred`` covers the block
    (``core``; for affinities it may hold one more voxel on each high side that is not the volume's
    end, see :func:`affinity_labels_runs`). Also, for affinities, the edges across the block's low
    faces (``edge<a>``, bool), else nothing; the labels' runs where the labelling found them
    (affinities), else None; and the affinities' pieces kept only if linked (``maybe``), or None.
    ``keep``: where the labelling finds the runs before it writes the labels (affinities), it
    renames (or drops) the labels in the same pass; None where it was not asked (other decoders):
    the caller renames them itself."""
    if decoder.name == "affinity_connected":
        labels, edges, found, maybe = affinity_labels_runs(pred, decoder, core, at_start, at_end, keep)
        faces = {f"edge{a}": np.ascontiguousarray(edges[a].take(0, axis=a)) for a in range(3)}
        return labels, faces, found, maybe
    mask = foreground(decoder, pred[:, : core[0], : core[1], : core[2]])
    return components(mask, decoder.connectivity), {}, None, None


def components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Connected components of a boolean (z, y, x) mask, numbered 1..n in raster order (uint32):
    ``skimage.measure.label``'s and ``scipy.ndimage.label``'s numbers."""
    import cc3d  # connected-components-3d

    if sum(1 for s in mask.shape if s > 1) <= 1:  # cc3d 4.1 fails on some lines of voxels
        return _scipy_components(mask, connectivity)
    try:
        # cc3d scans its first axis fastest: on the transposed view it numbers in C raster order
        labels = cc3d.connected_components(mask.T, connectivity=connectivity, binary_image=True).T  # type: ignore[call-overload]
    except RuntimeError:  # cc3d 4.1 misjudges its union-find size on some tiny masks
        return _scipy_components(mask, connectivity)
    return np.ascontiguousarray(labels, dtype=np.uint32)


def _scipy_components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    from scipy import ndimage  # here, not at import: a job's start-up does without scipy.ndimage

    labels, _ = ndimage.label(mask, structure(connectivity))
    return np.ascontiguousarray(labels, dtype=np.uint32)


def affinity_labels(
    aff: np.ndarray,
    decoder: Decoder,
    core: tuple[int, ...],
    at_start: tuple[bool, ...],
    at_end: tuple[bool, ...],
) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`affinity_labels_runs` without the runs (``aff`` covering the core and one more voxel
    on the high sides that are not the volume's end, or the whole volume)."""
    labels, edges, _, _ = affinity_labels_runs(aff, decoder, core, at_start, at_end)
    return labels, edges


def affinity_labels_runs(
    aff: np.ndarray,
    decoder: Decoder,
    core: tuple[int, ...],
    at_start: tuple[bool, ...],
    at_end: tuple[bool, ...],
    keep: Renaming | None = None,
) -> tuple[np.ndarray, list[np.ndarray], Runs, np.ndarray | None]:
    """Components of the graph of affinities above the threshold over ``core``; ``aff`` may hold one
    more voxel on high sides (the edges to the next block, which make a voxel foreground). Returns
    the compact labels, the edge masks (channel a: the edge to ``v - e_a``) over the core (an
    edge out of the volume, the first layer of a block at the volume's start, joins nothing) and
    the labels' runs (:func:`raster_ordered_runs`).

    Where ``aff`` stops at the core on a high side that is not the volume's end, the voxels of the
    last layer there with no edge inside the block are labelled, each a piece of its own, and
    listed in ``maybe`` (per label 0..n, bool): the next block's first layer says whether they are
    joined to it, and the merge keeps them only where a link names them (they are the block's
    "touched" voxels that only the next block's affinities can tell). Else ``maybe`` is None.

    ``keep`` (see :func:`label_block`) may drop pieces before the one pass that writes the labels.

    cc3d's graph has a bit per direction; an edge's two bits are ORed in as the edge mask times the
    bit (one plain pass each: numpy's masked ``where=`` OR took 4 times longer)."""
    import cc3d

    t = decoder.thresholds[0]
    cz, cy, cx = core
    edges = [above(aff[a, :cz, :cy, :cx], t) for a in range(3)]
    for a in range(3):
        if at_start[a]:
            first = [slice(None)] * 3
            first[a] = slice(0, 1)
            edges[a][tuple(first)] = False
    graph = np.zeros(core, dtype=np.uint8)
    touched = np.zeros(core, dtype=bool)
    for a in range(3):
        inner = [slice(None)] * 3
        inner[a] = slice(1, None)
        joined = edges[a][tuple(inner)]  # edge between v (index >= 1) and v - e_a, both in the core
        before = [slice(None)] * 3
        before[a] = slice(0, core[a] - 1)
        plus, minus = _bits(a)
        later, earlier = graph[tuple(inner)], graph[tuple(before)]  # views: ORed in place
        as_bytes = joined.view(np.uint8)  # 1 where joined, else 0
        later |= as_bytes * np.uint8(minus)
        earlier |= as_bytes * np.uint8(plus)
        touched |= edges[a]  # an edge to v - e_a (inside or across the low face)
        touched[tuple(before)] |= joined
        if aff.shape[a + 1] > core[a] and not at_end[a]:  # the edge from the next block's first layer
            nxt: list[Any] = [a, slice(0, cz), slice(0, cy), slice(0, cx)]
            nxt[a + 1] = slice(core[a], core[a] + 1)
            last = [slice(None)] * 3
            last[a] = slice(core[a] - 1, core[a])
            touched[tuple(last)] |= above(aff[tuple(nxt)], t)
    open_faces = [a for a in range(3) if aff.shape[a + 1] == core[a] and not at_end[a]]
    maybe_at: list[tuple[np.ndarray, ...]] = []
    for a in open_faces:  # untouched voxels of a high face the next block may join: pieces, maybe
        last = [slice(None)] * 3
        last[a] = slice(core[a] - 1, core[a])
        layer = touched[tuple(last)]
        where = np.nonzero(~layer)
        maybe_at.append(tuple(w + (core[a] - 1 if d == a else 0) for d, w in enumerate(where)))
        layer[...] = True
    colored = np.ascontiguousarray(cc3d.color_connectivity_graph(graph.T, connectivity=6).T)
    colored[~touched] = 0
    table, starts, lengths, values = raster_table(colored)
    assert table is not None  # cc3d numbers at most one label per voxel
    renamed = keep((starts, lengths, values)) if keep is not None else None
    if renamed is not None:  # pieces dropped: one table from cc3d's numbers to the kept ones
        table, values = renamed[table], renamed[values]
        alive = values != 0
        starts, lengths, values = starts[alive], lengths[alive], values[alive]
    labels = table[colored]
    maybe = None
    if open_faces:
        maybe = np.zeros(int(values.max(initial=0)) + 1, dtype=bool)
        for where in maybe_at:
            maybe[labels[where]] = True
        maybe[0] = False
    return labels, edges, (starts, lengths, values), maybe


def _bits(axis: int) -> tuple[int, int]:
    """cc3d's bits for +axis and -axis of a C-order (z, y, x) array given to it transposed."""
    base = 2 * (2 - axis)
    return 1 << base, 1 << (base + 1)


def raster_ordered(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in raster order of their first voxels (uint32)."""
    return raster_ordered_runs(labels)[0]


def raster_ordered_runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels renumbered 1..n in raster order of their first voxels (uint32), and their runs
    (:func:`runs`: starts, lengths and the new numbers), which are those of the labels given.

    cc3d numbers components as its scan meets them, and labels every voxel of its graph (those left
    out are then zeroed), so its numbers have gaps and may be out of order. Each label's first
    voxel starts one of the block's runs: where the runs' labels first appear in rising order
    (each label's first run exceeds every label before it: cc3d's scan order, checked), the new
    numbers are a running count of the labels present; else the labels are ordered by their first
    run (a sort of the runs' labels, tens of times fewer than the voxels). Then one pass through a
    table (:func:`raster_table`; or a binary search, for ids far above the block's size) writes
    the new numbers."""
    table, starts, lengths, values = raster_table(labels)
    if table is not None:
        return table[labels], starts, lengths, values
    ids, first_run = np.unique(values, return_index=True)
    n = ids.shape[0]
    rank = np.empty(n, dtype=np.uint32)
    rank[np.argsort(first_run, kind="stable")] = np.arange(1, n + 1, dtype=np.uint32)
    out = np.zeros(labels.shape, dtype=np.uint32)
    inside = labels != 0
    out[inside] = rank[np.searchsorted(ids, labels[inside])]
    return out, starts, lengths, rank[np.searchsorted(ids, values)]


def raster_table(labels: np.ndarray) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """The table that renumbers ``labels`` 1..n in raster order of their first voxels
    (``table[labels]``, uint32; None when the labels reach twice the block's voxel count, too many
    for a table) and the labels' runs (:func:`runs`) with their new numbers (the old ones when
    the table is None): :func:`raster_ordered_runs` without its pass over the voxels, for a caller
    that renames the labels again before it writes them."""
    starts, lengths, values = runs(labels)
    if values.size == 0:
        return np.zeros(1, dtype=np.uint32), starts, lengths, values.astype(np.uint32)
    top = int(values.max())
    if top >= 2 * labels.size:
        return None, starts, lengths, values
    present = np.zeros(top + 1, dtype=bool)
    present[values] = True
    n = int(np.count_nonzero(present))
    if _records(values).size == n:  # first appearances rising: the rank is a running count
        table = np.cumsum(present, dtype=np.uint32)  # table[0] == 0: 0 is never a run's label
    else:
        ids, first_run = np.unique(values, return_index=True)
        table = np.zeros(top + 1, dtype=np.uint32)
        table[ids[np.argsort(first_run, kind="stable")]] = np.arange(1, n + 1, dtype=np.uint32)
    return table, starts, lengths, table[values]


def _records(values: np.ndarray) -> np.ndarray:
    """The ``values`` that exceed every value before them (the first counts), in order: for a
    block's run labels (:func:`runs`), each label's first appearance where they rise."""
    if values.size == 0:
        return values
    before = np.maximum.accumulate(values)
    return np.concatenate([values[:1], values[1:][values[1:] > before[:-1]]])


def runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The runs of one label along x (the last axis) of a C-order block, in raster order, background
    left out: each run's first voxel (flat index in the block), length and label.

    A label's first voxel in raster order starts one of its runs, and its voxels are the union of
    its runs, so counts, boxes, coordinate sums and first voxels follow from the runs alone: one
    vectorised comparison over the block's voxels, then work in proportion to the runs (tens of
    times fewer than the voxels for blob-like objects)."""
    flat = labels.ravel()
    size = flat.size
    if size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), np.zeros(0, dtype=flat.dtype)
    change = np.empty(size, dtype=bool)
    change[0] = True
    np.not_equal(flat[1:], flat[:-1], out=change[1:])
    change[:: labels.shape[-1]] = True  # every row starts a run
    starts = np.flatnonzero(change)
    lengths = np.diff(starts, append=size)
    values = flat[starts]
    keep = values != 0
    return starts[keep], lengths[keep], values[keep]


def pieces(
    labels: np.ndarray, origin: tuple[int, ...], volume: tuple[int, ...], raster: bool = True
) -> Pieces:
    """The statistics of local labels 1..n (every one present). ``raster``: they are numbered in
    raster order (as :func:`label_block` numbers them; else ValueError) and their first voxels are
    wanted; else ``first`` is 0. Computed from the block's runs (:func:`runs`, :func:`run_pieces`):
    what ``cc3d.statistics`` and a running maximum gave, 5 times faster."""
    n = int(labels.max(initial=0))
    starts, lengths, values = runs(labels)
    return run_pieces(starts, lengths, values.astype(np.intp), n, labels.shape, origin, volume, raster)


def run_pieces(
    starts: np.ndarray,
    lengths: np.ndarray,
    ids: np.ndarray,
    n: int,
    shape: tuple[int, ...],
    origin: tuple[int, ...],
    volume: tuple[int, ...],
    raster: bool = True,
) -> Pieces:
    """The statistics of labels 1..n (every one present; else ValueError) from the runs of a block
    of ``shape`` (:func:`runs`; ``ids``: each run's label, 1..n): voxel counts, boxes and coordinate
    sums as exact integers, and with ``raster`` each label's first voxel (they must come in the
    labels' order: else ValueError), else 0. Work in proportion to the runs, not the voxels."""
    if n == 0:
        empty = np.zeros((0, 3), dtype=np.int64)
        return Pieces(np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty.copy(), np.zeros((0, 3)))
    _, ny, nx = shape
    z, rest = np.divmod(starts, ny * nx)
    y, x = np.divmod(rest, nx)
    count = np.bincount(ids, weights=lengths, minlength=n + 1)[1:].astype(np.int64)
    if count.shape[0] != n or not count.all():
        raise ValueError(f"labels 1..{n} are not all present (or exceed {n})")
    lo = np.full((n + 1, 3), np.iinfo(np.int64).max, dtype=np.int64)
    hi = np.full((n + 1, 3), -1, dtype=np.int64)
    for a, (first_at, last_at) in enumerate(((z, z), (y, y), (x, x + lengths - 1))):
        np.minimum.at(lo[:, a], ids, first_at)
        np.maximum.at(hi[:, a], ids, last_at)
    at = np.asarray(origin, dtype=np.int64)
    # coordinate sums: z and y once per voxel of a run, x summed over the run (an integer); exact
    # in float64 below 2**53, as a block's sums always are
    x_sums = lengths * x + lengths * (lengths - 1) // 2
    weights = (lengths * z, lengths * y, x_sums)
    sums = np.stack([np.bincount(ids, weights=w, minlength=n + 1)[1:] for w in weights], axis=1)
    sums += count[:, None] * at.astype(np.float64)
    if raster:
        first_local = np.full(n + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(first_local, ids, starts)
        first = _global_first(first_local[1:], shape, origin, volume)
    else:
        first = np.zeros(n, dtype=np.int64)
    return Pieces(count, first, lo[1:] + at, hi[1:] + at + 1, sums)


def _global_first(
    first_local: np.ndarray, shape: tuple[int, ...], origin: tuple[int, ...], volume: tuple[int, ...]
) -> np.ndarray:
    """Labels' first voxels (flat indices in the block) as global raster indices; they must grow
    with the label (raster order), else ValueError."""
    if first_local.size > 1 and not bool((np.diff(first_local) > 0).all()):
        raise ValueError("labels are not numbered in raster order")
    z, y, x = np.unravel_index(first_local, shape)
    return np.ravel_multi_index((z + origin[0], y + origin[1], x + origin[2]), volume).astype(np.int64)


def is_raster_ordered(labels: np.ndarray) -> bool:
    """Whether labels 1..max all occur, each first seen after the one before in raster order."""
    n = int(labels.max(initial=0))
    return bool(np.array_equal(_records(runs(labels)[2]), np.arange(1, n + 1, dtype=labels.dtype)))


def first_voxels(labels: np.ndarray, n: int, origin: tuple[int, ...], volume: tuple[int, ...]) -> np.ndarray:
    """The global raster index of each label's first voxel; labels must be 1..n in raster order
    (else ValueError): :func:`pieces`' ``first``."""
    if int(labels.max(initial=0)) != n:
        raise ValueError(f"labels are not numbered 1..{n} in raster order")
    return pieces(labels, origin, volume).first


def faces(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The first (``lo<a>``) and last (``hi<a>``) layer of the labels along each axis."""
    out = {}
    for a in range(3):
        out[f"lo{a}"] = np.ascontiguousarray(labels.take(0, axis=a))
        out[f"hi{a}"] = np.ascontiguousarray(labels.take(labels.shape[a] - 1, axis=a))
    return out


def _contact(face_set: Mapping[str, np.ndarray], n: Index, mine: bool) -> np.ndarray:
    """The layer of a block that touches its neighbour at offset ``n`` (``mine``) or, seen from the
    other side, the neighbour's layer that touches the block: 3-D, extent 1 where n_i != 0."""
    axes = [a for a in range(3) if n[a] != 0]
    first = axes[0]
    low_side = (n[first] == -1) == mine
    layer = np.expand_dims(face_set[f"{'lo' if low_side else 'hi'}{first}"], first)
    for a in axes[1:]:
        low = (n[a] == -1) == mine
        idx = 0 if low else layer.shape[a] - 1
        layer = np.take(layer, [idx], axis=a)
    return layer


def links(
    decoder: Decoder,
    mine: Mapping[str, np.ndarray],
    neighbours: Mapping[Index, Mapping[str, np.ndarray]],
) -> list[tuple[Index, np.ndarray, np.ndarray]]:
    """Pairs of touching labels between a block and each earlier neighbour it has: for each
    neighbour offset n, (n, labels in the block, labels in the neighbour), unique pairs."""
    out = []
    for n, theirs in neighbours.items():
        if decoder.name == "affinity_connected":
            if sum(map(abs, n)) != 1:
                continue
            a = next(i for i in range(3) if n[i])
            edge = mine[f"edge{a}"]
            b, c = mine[f"lo{a}"][edge], theirs[f"hi{a}"][edge]
        else:
            b, c = _touching(_contact(mine, n, True), _contact(theirs, n, False), n, decoder.connectivity)
        if b.size:
            out.append((n, *_unique_pairs(b.astype(np.int64), c.astype(np.int64))))
    return out


def _unique_pairs(b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pairs (b[i], c[i]) of non-negative labels, sorted by b then c: ``np.unique``
    of the stacked pairs along axis 0, through one int64 key per pair when the keys fit: a table
    of the keys seen when it stays small (a block's labels, always), else a 1-D sort, not a sort
    of rows."""
    width = int(c.max()) + 1
    top = (int(b.max()) + 1) * width
    if top >= 1 << 63:  # keys would overflow: the pairs sorted as rows
        pairs = np.unique(np.stack([b, c], axis=1), axis=0)
        return pairs[:, 0], pairs[:, 1]
    keys = b * width + c
    if top <= max(1 << 22, 8 * keys.size):
        seen = np.zeros(top, dtype=bool)
        seen[keys] = True
        found = np.flatnonzero(seen).astype(np.int64)
    else:
        found = np.unique(keys)
    return found // width, found % width


def _touching(
    mine: np.ndarray, theirs: np.ndarray, n: Index, connectivity: int
) -> tuple[np.ndarray, np.ndarray]:
    free = [a for a in range(3) if n[a] == 0]
    fixed = 3 - len(free)
    found_b, found_c = [np.zeros(0, mine.dtype)], [np.zeros(0, theirs.dtype)]
    for shift in itertools.product((-1, 0, 1), repeat=len(free)):
        if fixed + sum(1 for s in shift if s) > {6: 1, 18: 2, 26: 3}[connectivity]:
            continue
        src = [slice(None)] * 3
        dst = [slice(None)] * 3
        for a, s in zip(free, shift, strict=True):
            size = mine.shape[a]
            src[a] = slice(max(0, -s), size - max(0, s))
            dst[a] = slice(max(0, s), size - max(0, -s))
        b, c = mine[tuple(src)], theirs[tuple(dst)]
        both = (b != 0) & (c != 0)
        found_b.append(b[both])
        found_c.append(c[both])
    return np.concatenate(found_b), np.concatenate(found_c)


def slice_pieces(labels: np.ndarray, origin: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Per (local label, z slice) of a block: ``label``, ``z`` (global), ``count``, ``lo`` and
    ``hi`` (y, x; global, end exclusive) and ``sums`` (y, x): what the per-slice size filters
    (``remove_small_mode: background_2d``) add up across the blocks of a slice."""
    import cc3d

    n = int(labels.max(initial=0))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("label", "z", "count", "lo", "hi", "sums")}
    at = np.asarray(origin[1:], dtype=np.int64)
    for z in range(labels.shape[0]):
        plane = labels[z]
        values: np.ndarray | None = None
        if n >= plane.size:  # cc3d's statistics want labels below the voxel count: compact them
            values, inverse = np.unique(plane, return_inverse=True)
            plane = inverse.reshape(plane.shape).astype(np.uint32)
        stats = cc3d.statistics(plane.T, no_slice_conversion=True)
        count = np.asarray(stats["voxel_counts"], dtype=np.int64)
        present = np.flatnonzero(count)
        names = present if values is None else values[present].astype(np.int64)
        present, names = present[names != 0], names[names != 0]
        count = count[present]
        boxes = np.asarray(stats["bounding_boxes"], dtype=np.int64)[present]  # xmin xmax ymin ymax
        centroid = np.asarray(stats["centroids"], dtype=np.float64)[present][:, ::-1]  # y, x
        parts["label"].append(names.astype(np.int64))
        parts["z"].append(np.full(present.shape[0], origin[0] + z, dtype=np.int64))
        parts["count"].append(count)
        parts["lo"].append(boxes[:, [2, 0]] + at)
        parts["hi"].append(boxes[:, [3, 1]] + at + 1)
        parts["sums"].append(np.rint(centroid * count[:, None]) + count[:, None] * at.astype(np.float64))
    out = {}
    for key, chunks in parts.items():
        width = (0, 2) if key in ("lo", "hi", "sums") else (0,)
        empty = np.zeros(width, dtype=np.float64 if key == "sums" else np.int64)
        out[key] = np.concatenate([*chunks, empty])
    return out
