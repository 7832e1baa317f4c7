"""``affinity_agglomerate``: fragments by watershed on affinities, a region graph scored by affinity,
and agglomeration at one or more thresholds, as PyTC's waterz tutorial does it, block by block.

PyTC (``docs/source/tutorials/neuron.rst``) calls ``waterz.waterz(affinities / 255, seg_thresholds,
merge_function='aff50_his256', aff_threshold=[0.05, 0.995])``: a watershed on the affinities
gives fragments, a region graph between touching fragments is scored ``1 - affinity statistic``
and edges are merged cheapest first while their score is below each threshold in turn. The names
here are PyTC's: ``thresholds`` (its ``seg_thresholds``), ``aff_threshold`` (low, high) and
``merge_function`` (``aff<Q>_his256``: the Q-th percentile of the affinities between two regions,
from 256-bin histograms, as waterz's ``OneMinus<HistogramQuantileAffinity<..., Q, ..., 256>>``;
``mean``: their mean, waterz's default ``OneMinus<MeanAffinity<...>>``).

Affinities: three channels z, y, x; channel ``a`` at voxel ``v`` is the affinity between ``v`` and
``v - e_a`` (waterz's and :mod:`volumes.labels.blockcc`'s convention); uint8 maps are read as
``value / 255`` (as the tutorial divides them), float maps as they are.

Blockwise, so that nothing depends on the volume's size but the region graph:

- **Fragments** (each block, exact seeds, haloed growth): the voxel map ``s`` = the mean of a
  voxel's three affinities; seeds are the 6-connected components of ``s > aff_threshold[1]``,
  numbered globally through the connected-components decoders' face links; each seed floods
  ``-s`` within ``s > aff_threshold[0]`` over the block and a halo (``compute.halo``), the
  block's interior kept. This is ``binary_watershed`` on ``s`` (:mod:`volumes.labels.watershed`,
  its blocks' tie order, the whole volume's fragments too), so the fragments have that decoder's
  blockwise agreement with the whole volume, and a fragment
  that crosses a block face carries one id on both sides. (waterz's own zwatershed is not used
  for the fragments: its steepest-ascent basins depend on paths of any length, so no halo makes a
  block's basins equal the whole volume's.)
- **Region graph** (each block): for every pair of touching voxels ``(v - e_a, v)`` with ``v`` in
  the block (the pair across the block's low faces included, reading one layer of the lower
  neighbour's fragments) and two different non-zero fragments ``u < w``: the voxel count, the
  affinity sum and the maximum affinity of the pair. These add over blocks exactly, so the global
  graph equals the whole volume's graph, whatever the blocks.
- **Agglomeration** (once, in the driver): the edges of all blocks reduced by ``(u, w)``; merged as
  waterz's ``IterativeRegionMerging`` does (cheapest edge first; an edge shared by both merged
  regions folds into the cheaper one and is rescored when it is next popped); at each threshold,
  ascending, the fragments' roots are the segment ids. The driver holds the graph: three int64 /
  float64 columns per edge and one row per fragment, never voxels.
- **Relabel** (each block): fragments -> segments by the map of each threshold.

``aff<Q>_his256`` scores start, as waterz's default (``InitWithMax``) does, from the maximum
affinity of a pair of fragments (one histogram count at its bin); merged edges add histograms.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from volumes.labels.decoders import Decoder
from volumes.labels.merge import Objects

MERGE_FUNCTION = re.compile(r"^(mean|aff(\d{1,2})_his256)$")
BINS = 256


@dataclass(frozen=True)
class Agglomeration:
    """The decoder's parameters (PyTC's names; see the module docstring).

    ``thresholds``: the segmentation thresholds on ``1 - affinity statistic``, ascending, each in
    (0, 1]; one labels image each. ``aff_threshold``: (low, high), the fragments' flooding and
    seeding levels on the mean affinity. ``margin``: the fragments' halo (z, y, x)."""

    thresholds: tuple[float, ...] = (0.1, 0.3, 0.6)
    aff_threshold: tuple[float, float] = (0.05, 0.995)
    merge_function: str = "aff50_his256"
    margin: tuple[int, int, int] = (8, 32, 32)

    def __post_init__(self) -> None:
        for problem in check(self.thresholds, self.aff_threshold, self.merge_function):
            raise ValueError(problem)

    @property
    def quantile(self) -> int | None:
        """Q of ``aff<Q>_his256``, None for ``mean``."""
        return quantile_of(self.merge_function)

    def fragment_decoder(self) -> Decoder:
        """``binary_watershed`` on the mean affinity: seeds above ``aff_threshold[1]`` (6-connected,
        none dropped), grown within ``aff_threshold[0]``, nothing removed."""
        low, high = self.aff_threshold
        return Decoder(
            name="binary_watershed",
            thresholds=(high, low),
            thres_small=0,
            remove_small_mode="none",
            connectivity=6,
            seed_thres=0,
            margin=self.margin,
        )


def agglomeration_of(decoder: Decoder) -> Agglomeration:
    """The parameters of an ``affinity_agglomerate`` decoder."""
    assert decoder.name == "affinity_agglomerate" and decoder.aff_threshold is not None
    return Agglomeration(
        thresholds=decoder.thresholds,
        aff_threshold=decoder.aff_threshold,
        merge_function=decoder.merge_function or "aff50_his256",
        margin=decoder.margin,
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


def mean_affinity(affs: np.ndarray) -> np.ndarray:
    """The fragments' voxel map: the mean of each voxel's three affinities (1, Z, Y, X)."""
    return as_affinities(affs).mean(axis=0, keepdims=True)


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
    """The whole volume's fragments at once (uint64), flooded in the tie order the blocks use
    (:func:`volumes.labels.watershed.flood`; no PyTC function makes these fragments)."""
    from volumes.labels.watershed import decode_watershed

    return decode_watershed(mean_affinity(pred), agg.fragment_decoder(), "raster")


def fragments_blockwise(pred: np.ndarray, agg: Agglomeration, block: Sequence[int]) -> np.ndarray:
    """The fragments block by block (the segmentation run's label, link, merge and grow steps)."""
    from volumes.labels.blockwise import decode_blockwise

    return decode_blockwise(mean_affinity(pred), agg.fragment_decoder(), tuple(block), "none")


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
