"""``affinity_agglomerate``: fragments by a watershed on the affinity graph, a region graph scored by
affinity, and agglomeration at one or more thresholds, as PyTC's waterz tutorial does it, block by
block, with the whole volume's result.

PyTC (``docs/source/tutorials/neuron.rst``) calls ``waterz.waterz(affinities / 255, seg_thresholds,
merge_function='aff50_his256', aff_threshold=[0.05, 0.995])``: a watershed on the affinity graph
gives fragments, a region graph between touching fragments is scored ``1 - affinity statistic``
and edges are merged cheapest first while their score is below each threshold in turn. The names
here are PyTC's: ``thresholds`` (its ``seg_thresholds``), ``aff_threshold`` (low, high) and
``merge_function`` (``aff<Q>_his256``: the Q-th percentile of the affinities between two regions,
from 256-bin histograms, as waterz's ``OneMinus<HistogramQuantileAffinity<..., Q, ..., 256>>``;
``mean``: their mean, waterz's default ``OneMinus<MeanAffinity<...>>``).

Affinities: three channels z, y, x; channel ``a`` at voxel ``v`` is the affinity between ``v`` and
``v - e_a`` (waterz's and :mod:`volumes.labels.blockcc`'s convention); uint8 maps are read as
``value / 255`` (as the tutorial divides them), float maps as they are.

Blockwise, equal to the whole volume's run voxel for voxel:

- **Fragments** (each block): waterz's watershed (zwatershed's steepest ascent on the affinity
  graph) with a local rule for ties, so that a fragment is a connected component of a graph whose
  edges each depend on the affinities within two voxels (:func:`steepest_edges`). A voxel whose
  strongest edge is at most ``aff_threshold[0]`` is background; every other voxel keeps the edge to
  its strongest neighbour (one edge: among equal ones, one to a neighbour whose own strongest edge
  is stronger, a way off the plateau, if there is one; then the last in waterz's order -z, -y, -x,
  +z, +y, +x, the one waterz's plateau division gives a plateau's corner); edges of at least
  ``aff_threshold[1]`` are all kept. The fragments are that graph's connected components, numbered
  in raster order of their first voxel: the connected-components machinery of ``affinity_connected``
  (a block's edges from its affinities and two more voxels on each side; face links; one merge),
  exact for every block shape. On affinities without ties this is waterz's own watershed
  (``tests/unit/test_agglomerate.py``); with ties (uint8 maps) waterz divides a plateau by a
  breadth-first search from its corners, in an order over the whole volume, which no block can
  reproduce: the local rule stands in for it.
- **Region graph** (each block): for every pair of touching voxels ``(v - e_a, v)`` with ``v`` in
  the block (the pair across the block's low faces included, reading the lower neighbours' last
  layer of fragments) and two different non-zero fragments ``u < w``: the voxel count, the
  affinity sum and the maximum affinity of the pair. These add over blocks exactly, so the global
  graph equals the whole volume's graph, whatever the blocks.
- **Agglomeration** (once): the edges of all blocks reduced by ``(u, w)``; merged as waterz's
  ``IterativeRegionMerging`` does (cheapest edge first; an edge shared by both merged regions folds
  into the cheaper one and is rescored when it is next popped); at each threshold, ascending, the
  fragments' roots are the segment ids. One task holds the graph: three int64 / float64 columns per
  edge and one row per fragment, never voxels.
- **Relabel** (each block): fragments -> segments by the map of each threshold.

``aff<Q>_his256`` scores start, as waterz's default (``InitWithMax``) does, from the maximum
affinity of a pair of fragments (one histogram count at its bin); merged edges add histograms.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from volumes.box import Box
from volumes.labels.decoders import Decoder
from volumes.labels.merge import Objects

MERGE_FUNCTION = re.compile(r"^(mean|aff(\d{1,2})_his256)$")
BINS = 256


@dataclass(frozen=True)
class Agglomeration:
    """The decoder's parameters (PyTC's names; see the module docstring).

    ``thresholds``: the segmentation thresholds on ``1 - affinity statistic``, ascending, each in
    (0, 1]; one labels image each. ``aff_threshold``: (low, high), the fragments' levels: a voxel
    whose strongest edge is at most ``low`` is background, edges of at least ``high`` always join."""

    thresholds: tuple[float, ...] = (0.1, 0.3, 0.6)
    aff_threshold: tuple[float, float] = (0.05, 0.995)
    merge_function: str = "aff50_his256"

    def __post_init__(self) -> None:
        for problem in check(self.thresholds, self.aff_threshold, self.merge_function):
            raise ValueError(problem)

    @property
    def quantile(self) -> int | None:
        """Q of ``aff<Q>_his256``, None for ``mean``."""
        return quantile_of(self.merge_function)


# The fragments' graph: connected components of an edge mask (:func:`steepest_edges`, 0 or 255 per
# edge), taken by the exact machinery of ``affinity_connected``.
FRAGMENT_DECODER = Decoder(
    name="affinity_connected", thresholds=(0.5,), thres_small=0, remove_small_mode="none", connectivity=6
)
# How far (voxels, each side) an edge's fate looks: the strongest edges of its two voxels and of
# their neighbours, up to v - 2 e_a, whose own edge toward v - 3 e_a lies in channel a at v - 2 e_a
# but is cut off when the array starts there (an array's first layer has no edge before it).
CONTEXT = 3
# waterz's order of a voxel's six edges: -z, -y, -x, +z, +y, +x, as (axis, side)
ORDER = ((0, -1), (1, -1), (2, -1), (0, 1), (1, 1), (2, 1))


def threshold_name(threshold: float) -> str:
    """The name of a threshold's labels image in a job's group of them: ``threshold_0.3``."""
    return f"threshold_{threshold:g}"


def agglomeration_of(decoder: Decoder) -> Agglomeration:
    """The parameters of an ``affinity_agglomerate`` decoder."""
    assert decoder.name == "affinity_agglomerate" and decoder.aff_threshold is not None
    return Agglomeration(
        thresholds=decoder.thresholds,
        aff_threshold=decoder.aff_threshold,
        merge_function=decoder.merge_function or "aff50_his256",
    )


def quantile_of(merge_function: str) -> int | None:
    match = MERGE_FUNCTION.match(merge_function)
    if match is None:
        raise ValueError(f"merge_function {merge_function!r} is not 'mean' or 'aff<Q>_his256'")
    return None if match.group(2) is None else int(match.group(2))


def check(thresholds: Sequence[float], aff_threshold: Sequence[float], merge_function: str) -> list[str]:
    """What is wrong with these parameters, naming each (empty when nothing is)."""
    problems = []
    if not thresholds:
        problems.append("thresholds: at least one segmentation threshold is needed")
    if any(not 0.0 < float(t) <= 1.0 for t in thresholds):
        problems.append(f"thresholds: each must be in (0, 1], not {list(thresholds)}")
    if list(thresholds) != sorted(set(thresholds)):
        problems.append(f"thresholds: must be ascending and distinct, not {list(thresholds)}")
    if len(aff_threshold) != 2 or not 0.0 <= aff_threshold[0] < aff_threshold[1] <= 1.0:
        problems.append(f"aff_threshold: [low, high] with 0 <= low < high <= 1, not {list(aff_threshold)}")
    match = MERGE_FUNCTION.match(merge_function)
    if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 99):
        problems.append(f"merge_function: 'mean' or 'aff<Q>_his256' with Q in 1..99, not {merge_function!r}")
    return problems


def waterz_scoring(merge_function: str) -> tuple[str, int]:
    """waterz's ``scoring_function`` and ``discretize_queue`` for a merge function, as PyTC's
    waterz fork maps its names (the whole-volume library reference)."""
    q = quantile_of(merge_function)
    if q is None:
        return "OneMinus<MeanAffinity<RegionGraphType, ScoreValue>>", 0
    return f"OneMinus<HistogramQuantileAffinity<RegionGraphType, {q}, ScoreValue, 256>>", BINS


def as_affinities(pred: np.ndarray) -> np.ndarray:
    """The affinities (3, Z, Y, X) as float32 in [0, 1] (uint8 maps divided by 255)."""
    if pred.ndim != 4 or pred.shape[0] != 3:
        raise ValueError(f"affinities need 3 channels (z, y, x) of (C, Z, Y, X), not shape {pred.shape}")
    if pred.dtype == np.uint8:
        return pred.astype(np.float32) / np.float32(255.0)
    return pred.astype(np.float32, copy=False)


def _along(a: int, part: slice) -> tuple[slice, ...]:
    return tuple(part if b == a else slice(None) for b in range(3))


def steepest_edges(affs: np.ndarray, aff_threshold: Sequence[float]) -> np.ndarray:
    """The fragments' graph over ``affs`` (3, Z, Y, X), uint8 or float: which edges it keeps,
    boolean (3, Z, Y, X), channel ``a`` at ``v`` the edge between ``v`` and ``v - e_a`` (none out
    of the array: its ends are taken as the volume's).

    A voxel's strongest edge ``m`` (uint8 values compare as ``value / 255`` in float32, as waterz
    sees ``affs / 255``): at most ``aff_threshold[0]``, the voxel is background. Otherwise it keeps
    one edge of value ``m``: one to a neighbour whose own strongest edge is stronger than ``m`` (off
    a plateau) if there is one, the last such in waterz's order (-z, -y, -x, +z, +y, +x), else the
    last of value ``m`` in that order. Edges of at least ``aff_threshold[1]`` are kept, all. Each
    edge's fate depends on the affinities within :data:`CONTEXT` voxels of it."""
    if affs.ndim != 4 or affs.shape[0] != 3:
        raise ValueError(f"affinities need 3 channels (z, y, x) of (C, Z, Y, X), not shape {affs.shape}")
    values = affs if affs.dtype == np.uint8 else affs.astype(np.float32, copy=False)
    low, high = aff_threshold
    lo: Any
    hi: Any
    if values.dtype == np.uint8:  # the same comparisons on value / 255 in float32, as integers
        scale = np.arange(256, dtype=np.float32) / np.float32(255.0)
        lo = int(np.count_nonzero(scale <= np.float32(low))) - 1
        hi = int(np.count_nonzero(scale < np.float32(high)))
    else:
        lo, hi = np.float32(low), np.float32(high)
    shape = values.shape[1:]

    def edge(a: int, side: int) -> np.ndarray:  # each voxel's edge toward v + side * e_a; 0 if none
        out = np.zeros(shape, values.dtype)
        if side < 0:
            out[_along(a, slice(1, None))] = values[a][_along(a, slice(1, None))]
        else:
            out[_along(a, slice(0, -1))] = values[a][_along(a, slice(1, None))]
        return out

    def beside(x: np.ndarray, a: int, side: int) -> np.ndarray:  # x at v + side * e_a; 0 past the end
        out = np.zeros_like(x)
        if side < 0:
            out[_along(a, slice(1, None))] = x[_along(a, slice(0, -1))]
        else:
            out[_along(a, slice(0, -1))] = x[_along(a, slice(1, None))]
        return out

    strongest = np.zeros(shape, values.dtype)  # 0 stands for no edge: low >= 0, so never kept
    for a, side in ORDER:
        np.maximum(strongest, edge(a, side), out=strongest)
    foreground = strongest > lo
    pointer = np.full(shape, -1, np.int8)
    off_plateau = np.full(shape, -1, np.int8)
    for d, (a, side) in enumerate(ORDER):
        e = edge(a, side)
        top = foreground & (e == strongest)
        pointer[top] = d
        off_plateau[top & (beside(strongest, a, side) > strongest) & (e < hi)] = d
        del e, top
    pointer = np.where(off_plateau >= 0, off_plateau, pointer)
    kept = np.zeros((3, *shape), bool)
    for a in range(3):
        later, earlier = _along(a, slice(1, None)), _along(a, slice(0, -1))
        kept[a][later] = (values[a][later] >= hi) | (pointer[later] == a) | (pointer[earlier] == a + 3)
    return kept


def edge_mask(affs: np.ndarray, aff_threshold: Sequence[float]) -> np.ndarray:
    """:func:`steepest_edges` as the affinity map ``affinity_connected`` labels: 255 kept, 0 not."""
    return steepest_edges(affs, aff_threshold).view(np.uint8) * np.uint8(255)


def edge_mask_over(
    read: Callable[[Box], np.ndarray], box: Box, volume: Sequence[int], aff_threshold: Sequence[float]
) -> np.ndarray:
    """The edge mask (3, box) of a box of the volume, from the affinities ``read`` over the box grown
    by :data:`CONTEXT` (cut to the volume): the whole volume's mask there, voxel for voxel."""
    begin = [max(0, o - CONTEXT) for o in box.offset]
    end = [min(s, e + CONTEXT) for s, e in zip(volume, box.end, strict=True)]
    grown = Box.from_bounds(begin, end)
    inner = tuple(
        slice(o - g, o - g + n) for o, g, n in zip(box.offset, grown.offset, box.shape, strict=True)
    )
    return np.ascontiguousarray(edge_mask(read(grown), aff_threshold)[(slice(None), *inner)])


# --- region graph -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Edges:
    """Pairs of touching fragments ``u < w`` (sorted by (u, w), unique) and the voxel pairs'
    count, affinity sum and maximum affinity."""

    u: np.ndarray  # uint64
    w: np.ndarray  # uint64
    count: np.ndarray  # int64
    total: np.ndarray  # float64
    top: np.ndarray  # float32

    @property
    def n(self) -> int:
        return int(self.u.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.u, self.w, self.count, self.total, self.top))

    @staticmethod
    def empty() -> Edges:
        return Edges(
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint64),
            np.zeros(0, np.int64),
            np.zeros(0),
            np.zeros(0, np.float32),
        )


def reduce_edges(
    u: np.ndarray, w: np.ndarray, count: np.ndarray, total: np.ndarray, top: np.ndarray
) -> Edges:
    """Rows with the same (u, w) summed (count, total) and maxed (top)."""
    if u.size == 0:
        return Edges.empty()
    order = np.lexsort((w, u))
    u, w, count, total, top = u[order], w[order], count[order], total[order], top[order]
    start = np.flatnonzero(np.concatenate([[True], (u[1:] != u[:-1]) | (w[1:] != w[:-1])]))
    return Edges(
        u[start].astype(np.uint64),
        w[start].astype(np.uint64),
        np.add.reduceat(count, start).astype(np.int64),
        np.add.reduceat(total, start).astype(np.float64),
        np.maximum.reduceat(top, start).astype(np.float32),
    )


def merge_edges(parts: Sequence[Edges]) -> Edges:
    """The edges of several blocks as one graph."""
    if not parts:
        return Edges.empty()
    cat = [np.concatenate([getattr(p, f) for p in parts]) for f in ("u", "w", "count", "total", "top")]
    return reduce_edges(*cat)


def block_edges(fragments: np.ndarray, affs: np.ndarray, low: Sequence[int]) -> Edges:
    """The region graph's edges of one block.

    ``fragments``: (Z, Y, X) over the block and, where ``low[a]`` is 1, one more layer before it
    along axis ``a`` (the lower neighbour's last layer); ``affs``: the block's affinities (3, block
    shape), float in [0, 1]. Every voxel pair ``(v - e_a, v)`` with ``v`` in the block counts."""
    us, ws, vals = [], [], []
    for a in range(3):
        # along a: the block and its extra layer; across: the block only
        along = tuple(slice(0, None) if b == a else slice(low[b], None) for b in range(3))
        ext = fragments[along]
        prev = ext[tuple(slice(0, -1) if b == a else slice(None) for b in range(3))]
        cur = ext[tuple(slice(1, None) if b == a else slice(None) for b in range(3))]
        aff = (
            affs[a] if low[a] else affs[a][tuple(slice(1, None) if b == a else slice(None) for b in range(3))]
        )
        hit = (prev != cur) & (prev != 0) & (cur != 0)
        p, c = prev[hit].astype(np.uint64), cur[hit].astype(np.uint64)
        us.append(np.minimum(p, c))
        ws.append(np.maximum(p, c))
        vals.append(aff[hit].astype(np.float32))
    u, w, v = np.concatenate(us), np.concatenate(ws), np.concatenate(vals)
    return reduce_edges(u, w, np.ones(u.shape, np.int64), v.astype(np.float64), v)


# --- agglomeration ----------------------------------------------------------------------------


def _discretize(value: float) -> int:
    if not value > 0:
        return 0
    if value >= 1:
        return BINS - 1
    return min(int(np.float32(value) * np.float32(BINS)), BINS - 1)


class _Graph:
    """waterz's ``IterativeRegionMerging`` over a reduced region graph (see the module docstring)."""

    def __init__(self, edges: Edges, quantile: int | None) -> None:
        self.q = quantile
        self.nodes = np.unique(np.concatenate([edges.u, edges.w]))
        n = self.nodes.size
        self.parent = list(range(n))
        self.eu = np.searchsorted(self.nodes, edges.u).tolist()
        self.ew = np.searchsorted(self.nodes, edges.w).tolist()
        self.count = edges.count.astype(np.int64).tolist()
        self.total = edges.total.tolist()
        self.hist: list[dict[int, int]] = [{_discretize(float(t)): 1} for t in edges.top.tolist()]
        self.inc: list[dict[int, int]] = [{} for _ in range(n)]  # node -> {neighbour: edge}
        for e, (a, b) in enumerate(zip(self.eu, self.ew, strict=True)):
            self.inc[a][b] = e
            self.inc[b][a] = e
        m = edges.n
        self.stale, self.deleted = [False] * m, [False] * m
        self.score = [self.rescore(e) for e in range(m)]
        self.queue = [(s, e) for e, s in enumerate(self.score)]
        heapq.heapify(self.queue)

    def rescore(self, e: int) -> float:
        if self.q is None:
            return 1.0 - self.total[e] / self.count[e]
        hist = self.hist[e]
        pivot = self.q * sum(hist.values()) // 100 + 1
        seen = 0
        for b in sorted(hist):
            seen += hist[b]
            if seen >= pivot:
                return 1.0 - (b + 0.5) / BINS
        raise AssertionError("histogram below its pivot")

    def merge_until(self, threshold: float) -> int:
        merged = 0
        while self.queue and self.queue[0][0] < threshold:
            score, e = heapq.heappop(self.queue)
            if self.deleted[e] or score != self.score[e]:
                continue  # deleted, or an older entry of a rescored edge
            if self.stale[e]:
                self.stale[e] = False
                self.score[e] = self.rescore(e)
                heapq.heappush(self.queue, (self.score[e], e))
                continue
            self._merge(e)
            merged += 1
        return merged

    def _merge(self, e: int) -> None:
        a, b = self.eu[e], self.ew[e]
        self.parent[b] = a
        del self.inc[a][b]
        for nb, f in list(self.inc[b].items()):
            if f == e:
                continue
            del self.inc[nb][b]
            g = self.inc[a].get(nb)
            if g is None:  # b's own neighbour moves to a
                self._move(f, a, nb)
                continue
            keep, drop = (g, f) if self.score[f] > self.score[g] else (f, g)
            self.count[keep] += self.count[drop]
            self.total[keep] += self.total[drop]
            for k, c in self.hist[drop].items():
                self.hist[keep][k] = self.hist[keep].get(k, 0) + c
            self.deleted[drop] = True
            self.stale[keep] = True
            self._move(keep, a, nb)
        self.inc[b] = {}

    def _move(self, f: int, a: int, nb: int) -> None:
        self.eu[f], self.ew[f] = a, nb
        self.inc[a][nb] = f
        self.inc[nb][a] = f

    def roots(self) -> np.ndarray:
        """The root (a fragment id) of every node."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            up = parent[parent]
            if np.array_equal(up, parent):
                break
            parent = up
        return self.nodes[parent]


@dataclass(frozen=True)
class Merges:
    """Per threshold, the segment id (a fragment id, the root of its merge tree) of each fragment
    in the graph (``nodes``, ascending); fragments outside the graph keep their own id."""

    thresholds: tuple[float, ...]
    nodes: np.ndarray
    roots: tuple[np.ndarray, ...]

    def lookup(self, i: int, fragments: np.ndarray) -> np.ndarray:
        """The segments of threshold ``i`` of an array of fragments."""
        out = fragments.astype(np.uint64, copy=True)
        if self.nodes.size == 0:
            return out
        at = np.searchsorted(self.nodes, out).clip(0, self.nodes.size - 1)
        hit = self.nodes[at] == out
        out[hit] = self.roots[i][at[hit]]
        return out


def agglomerate_graph(edges: Edges, agg: Agglomeration) -> Merges:
    """The driver's step: the whole region graph merged at each threshold in turn."""
    graph = _Graph(edges, agg.quantile)
    roots = []
    for t in agg.thresholds:
        graph.merge_until(float(t))
        roots.append(graph.roots())
    return Merges(tuple(agg.thresholds), graph.nodes, tuple(roots))


def segments(
    merges: Merges, i: int, k: int, fragments: Objects, relabel: str
) -> tuple[np.ndarray, Objects, np.ndarray]:
    """The job's merge step at threshold ``i``, for fragments 1..k with their statistics:
    (the written number of each fragment 0..k, the segments' statistics by root fragment id, the
    written number of each root 0..k). ``relabel: sequential`` numbers segments 1..N in the order of
    their lowest fragment, that is of their first seed in raster order (the watershed decoders number
    their objects by their seeds too); ``none`` keeps the root fragment's id (waterz's numbers)."""
    from volumes.labels.merge import aggregate

    ids = np.arange(k + 1, dtype=np.uint64)
    root = merges.lookup(i, ids).astype(np.int64)
    present = np.flatnonzero(fragments.count > 0) + 1
    objects = aggregate(
        root[present],
        k,
        *(getattr(fragments, f)[present - 1] for f in ("count", "first", "lo", "hi", "sums")),
    )
    written = np.zeros(k + 1, dtype=np.int64)
    real = np.flatnonzero(objects.count > 0) + 1
    if relabel == "sequential":
        lowest = np.full(k + 1, k + 1, dtype=np.int64)
        np.minimum.at(lowest, root[present], present)
        written[real[np.argsort(lowest[real], kind="stable")]] = np.arange(1, real.size + 1)
    else:
        written[real] = real
    per_fragment = written[root]
    per_fragment[0] = 0
    return per_fragment, objects, written


# --- whole runs in memory -----------------------------------------------------------------------


def fragments_in_memory(pred: np.ndarray, agg: Agglomeration) -> np.ndarray:
    """The whole volume's fragments at once (uint64, 1..K in raster order of their first voxel)."""
    from volumes.labels.blockcc import affinity_labels

    shape = tuple(pred.shape[1:])
    labels, _ = affinity_labels(
        edge_mask(pred, agg.aff_threshold), FRAGMENT_DECODER, shape, (True,) * 3, (True,) * 3
    )
    return labels.astype(np.uint64)


def fragments_blockwise(pred: np.ndarray, agg: Agglomeration, block: Sequence[int]) -> np.ndarray:
    """The fragments block by block, as the segmentation run's label, link and merge steps make
    them: each block's edge mask from its own affinities and :data:`CONTEXT` voxels around it."""
    from volumes.labels.blockwise import Grid, label_step, link_step, merge_step, read_box

    grid = Grid(tuple(pred.shape[1:]), tuple(block))
    done = {}
    for index in grid.indices():
        box = read_box(FRAGMENT_DECODER, grid, index)
        mask = edge_mask_over(lambda b: pred[(slice(None), *b.slices())], box, grid.shape, agg.aff_threshold)
        done[index] = label_step(FRAGMENT_DECODER, grid, index, mask)
    links_of = {i: link_step(FRAGMENT_DECODER, grid, i, lambda j: done[j].faces) for i in grid.indices()}
    numbered = merge_step(grid, {i: d.pieces for i, d in done.items()}, links_of)
    out = np.zeros(grid.shape, dtype=np.uint64)
    for index in grid.indices():
        out[grid.box(index).slices()] = numbered.lut[index][done[index].local]
    return out


def graph_blockwise(fragments: np.ndarray, pred: np.ndarray, block: Sequence[int]) -> Edges:
    """The region graph from the blocks' edges (each block reads one layer of its lower
    neighbours' fragments)."""
    from volumes.labels.blockwise import Grid

    affs = as_affinities(pred)
    grid = Grid(tuple(fragments.shape), tuple(block))
    parts = []
    for index in grid.indices():
        box = grid.box(index)
        low = [1 if o > 0 else 0 for o in box.offset]
        ext = tuple(slice(o - lo, e) for o, lo, e in zip(box.offset, low, box.end, strict=True))
        parts.append(block_edges(fragments[ext], affs[(slice(None), *box.slices())], low))
    return merge_edges(parts)


def agglomerate_in_memory(pred: np.ndarray, agg: Agglomeration) -> list[np.ndarray]:
    """The whole-volume run: one labels array (uint64, segment ids are fragment ids) per threshold."""
    fragments = fragments_in_memory(pred, agg)
    edges = block_edges(fragments, as_affinities(pred), (0, 0, 0))
    merges = agglomerate_graph(edges, agg)
    return [merges.lookup(i, fragments) for i in range(len(agg.thresholds))]


def agglomerate_blockwise(
    pred: np.ndarray, agg: Agglomeration, block: Sequence[int]
) -> tuple[list[np.ndarray], np.ndarray, Edges]:
    """Every step block by block in memory: the labels per threshold, the fragments, the graph."""
    fragments = fragments_blockwise(pred, agg, block)
    edges = graph_blockwise(fragments, pred, block)
    merges = agglomerate_graph(edges, agg)
    return [merges.lookup(i, fragments) for i in range(len(agg.thresholds))], fragments, edges


def agglomerate_waterz(
    pred: np.ndarray, agg: Agglomeration, fragments: np.ndarray | None = None
) -> list[np.ndarray]:
    """waterz itself on the whole volume (the library PyTC's tutorial calls): with ``fragments``
    its agglomeration of ours, without them its own zwatershed fragments at ``aff_threshold``."""
    import waterz

    scoring, queue = waterz_scoring(agg.merge_function)
    affs = np.ascontiguousarray(as_affinities(pred))
    own = None if fragments is None else np.array(fragments, dtype=np.uint64, order="C", copy=True)
    low, high = agg.aff_threshold
    found = waterz.agglomerate(
        affs,
        list(agg.thresholds),
        fragments=own,  # waterz writes into it
        aff_threshold_low=low,  # not used with fragments
        aff_threshold_high=high,
        scoring_function=scoring,
        discretize_queue=queue,
    )
    return [np.array(s, copy=True) for s in found]


def crossings(fragments: np.ndarray, objects: np.ndarray) -> int:
    """How many fragments hold voxels of more than one object (background counts as one)."""
    from volumes.metrics.table import table_of

    table = table_of(fragments, objects)  # pairs sorted by fragment
    f = table.gt[table.gt != 0]
    return int(np.count_nonzero(np.unique(f, return_counts=True)[1] > 1))
