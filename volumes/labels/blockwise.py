"""The blockwise decoder's steps on arrays, and all of them in one process over an array in memory.

The steps, each a function of what the step before left (the block tasks in
``workers.segmentation`` run them with their reads and writes around them)::

    label  (each block)   local labels, their pieces' statistics, the block's faces
    link   (each block)   pairs of touching labels with its 13 earlier neighbours, from faces alone
    merge  (once)         pieces -> objects, PyTC's numbers (:mod:`volumes.labels.merge`)
    dilate (each block)   bc_connected only: the numbered labels of the block and a halo, dilated;
                          the statistics of its part of each object
    grow   (each block)   the watershed decoders instead: the numbered seeds (whole seeds under
                          ``seed_thres`` dropped) of the block and a halo flooded over the
                          prediction there (in a tie order all blocks share; the halo doubled
                          where the flood cannot settle), the block's interior kept; its part
                          of each object
    merge  (once)         sizes of whole objects -> the size filter and the written numbers
    write  (each block)   the written numbers

:func:`decode_blockwise` runs them over an array in memory: the property tests compare it with the
whole-volume decoder, and the block tasks are these same functions.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from volumes.box import Box
from volumes.labels.blockcc import (
    EARLIER,
    Pieces,
    faces,
    label_block,
    links,
    pieces,
    run_pieces,
    runs,
    slice_pieces,
)
from volumes.labels.decoders import HALO_DOUBLINGS, Decoder, dilate
from volumes.labels.merge import Objects, aggregate, final_ids, join, narrow_dtype, number, slice_filter
from volumes.labels.watershed import grow, grow_mask, kept_seeds

Index = tuple[int, ...]


@dataclass(frozen=True)
class Grid:
    """Blocks of ``block`` voxels over a (z, y, x) volume of ``shape``, the last ones cut."""

    shape: tuple[int, ...]
    block: tuple[int, ...]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-s // b) for s, b in zip(self.shape, self.block, strict=True))

    def indices(self) -> Iterator[Index]:
        return itertools.product(*(range(n) for n in self.counts))

    def box(self, index: Index) -> Box:
        begin = [i * b for i, b in zip(index, self.block, strict=True)]
        end = [min(s, x + b) for s, x, b in zip(self.shape, begin, self.block, strict=True)]
        return Box.from_bounds(begin, end)

    def contains(self, index: Index) -> bool:
        return all(0 <= i < n for i, n in zip(index, self.counts, strict=True))

    def earlier(self, index: Index) -> list[Index]:
        """The neighbours before ``index`` (of the 13 offsets), that exist."""
        out = [tuple(i + d for i, d in zip(index, n, strict=True)) for n in EARLIER]
        return [n for n in out if self.contains(n)]

    def linear(self, index: Index) -> int:
        return int(np.ravel_multi_index(index, self.counts))


def read_box(decoder: Decoder, grid: Grid, index: Index) -> Box:
    """What the label step reads of the prediction (spatially): the block, for every decoder
    (affinities too: the next block's first layer decides through the links, see
    :func:`volumes.labels.blockcc.affinity_labels_runs`)."""
    return grid.box(index)


@dataclass(frozen=True)
class Labelled:
    """A block's label step: its labels, faces and pieces (the faces and pieces in the pieces'
    numbers 1..n: :attr:`local`)."""

    labels: np.ndarray  # the labelling's numbers; the pieces' numbers through ``renaming``
    faces: dict[str, np.ndarray]
    pieces: Pieces
    slices: dict[str, np.ndarray] | None = None  # per (label, z slice), for the per-slice size filters
    # bc_connected's dilation: the layers of the block within its reach of each face (:func:`strips`)
    strips: dict[str, np.ndarray] | None = None
    # the labelling's number -> the piece's (0: a small whole object dropped); None: the same. The
    # labels are not renamed here: whoever maps them to objects composes the two tables (a few
    # thousand entries) instead of passing over the block's voxels once more
    renaming: np.ndarray | None = None

    @property
    def local(self) -> np.ndarray:
        """The labels in the pieces' numbers (1..n, raster order)."""
        return rename(self.labels, self.renaming)


def rename(labels: np.ndarray, renaming: np.ndarray | None) -> np.ndarray:
    """``renaming[labels]`` in the labels' dtype, or the labels where there is no renaming."""
    if renaming is None:
        return labels
    return np.take(renaming.astype(labels.dtype, copy=False), labels)


def through(lut: np.ndarray, renaming: np.ndarray | None) -> np.ndarray:
    """A table of the pieces' numbers (``lut[piece]``) as a table of the labelling's numbers."""
    return lut if renaming is None else lut[renaming]


def prunes(decoder: Decoder, relabel: str) -> bool:
    """Whether the label step may drop a block's small whole objects (:func:`label_step`): the size
    filter sets them to the background and the written numbers count only the kept objects
    (``relabel: sequential``), so they never need a number, and nothing grows them afterwards (no
    dilation, no watershed) or counts them per slice."""
    return (
        relabel == "sequential"
        and decoder.remove_small_mode == "background"
        and decoder.thres_small > 0
        and decoder.dilation is None
        and not decoder.watershed
        and not decoder.per_slice
    )


def small_whole(stats: Pieces, box: Box, shape: Sequence[int], thres_small: int) -> np.ndarray:
    """Which pieces of a block are small whole objects (bool per piece): those that touch no face
    the block shares with a neighbour (so no link can ever name them: each is an object, whole)
    with fewer than ``thres_small`` voxels, which the size filter removes."""
    gone = stats.count < thres_small
    for a in range(3):
        if box.offset[a] > 0:  # a neighbour before the block along a: its first layer is a face
            gone &= stats.lo[:, a] > box.offset[a]
        if box.end[a] < shape[a]:
            gone &= stats.hi[:, a] < box.end[a]
    return gone


def _renaming(gone: np.ndarray) -> np.ndarray | None:
    """Each label's new number 0..n (0: gone; the others 1..m in their order), None if none goes."""
    if not gone.any():
        return None
    keep = ~gone
    table = np.zeros(gone.shape[0] + 1, dtype=np.uint32)
    table[1:][keep] = np.arange(1, int(np.count_nonzero(keep)) + 1, dtype=np.uint32)
    return table


def _kept(stats: Pieces, gone: np.ndarray) -> Pieces:
    keep = ~gone
    maybe = None if stats.maybe is None else stats.maybe[keep]
    return Pieces(
        stats.count[keep], stats.first[keep], stats.lo[keep], stats.hi[keep], stats.sums[keep], maybe
    )


def label_step(
    decoder: Decoder, grid: Grid, index: Index, pred: np.ndarray, pruned: bool = False
) -> Labelled:
    """A block's local labels from its prediction (C, read box); with ``pruned`` (where
    :func:`prunes` allows it) without the block's small whole objects (:func:`small_whole`): their
    voxels become 0 and the others keep their order, renumbered 1..m (raster order still). An
    affinity map's block holds tens of thousands of such specks and a few dozen objects: the
    merge, the pieces' files and the numbering then grow with the objects, not with the specks.
    affinity_connected's labelling drops them in the pass that numbers its labels; the other
    decoders' labels are renamed here, in one pass."""
    box = grid.box(index)
    at_start = tuple(o == 0 for o in box.offset)
    at_end = tuple(e == s for e, s in zip(box.end, grid.shape, strict=True))
    kept: list[Pieces] = []

    def keep(found: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray | None:
        """The pieces from the labels' runs, and the small whole ones dropped."""
        starts, lengths, values = found
        n = int(values.max(initial=0))
        stats = run_pieces(starts, lengths, values.astype(np.intp), n, box.shape, box.offset, grid.shape)
        gone = small_whole(stats, box, grid.shape, decoder.thres_small)
        kept.append(_kept(stats, gone) if gone.any() else stats)
        return _renaming(gone)

    labels, extra, found, maybe = label_block(
        decoder, pred, box.shape, at_start, at_end, keep if pruned else None
    )
    renaming = None
    if pruned and not kept:  # the labelling left the renaming to this step: kept beside the labels
        renaming = keep(runs(labels))
    slices = slice_pieces(labels, box.offset) if decoder.per_slice else None
    halo = strips(labels, decoder.halo) if dilates_by_strips(decoder) else None
    if kept:
        stats = kept[0]
    elif found is None:
        stats = pieces(labels, box.offset, grid.shape)
    else:  # the labelling's runs, with the labels' numbers 1..n in raster order
        starts, lengths, values = found
        n = int(values.max(initial=0))
        stats = run_pieces(starts, lengths, values.astype(np.intp), n, labels.shape, box.offset, grid.shape)
    if maybe is not None:
        stats = replace(stats, maybe=maybe[1:])
    layers = {name: rename(layer, renaming) for name, layer in faces(labels).items()}
    return Labelled(labels, {**layers, **extra}, stats, slices, halo, renaming)


def link_step(
    decoder: Decoder, grid: Grid, index: Index, faces_of: Callable[[Index], Mapping[str, np.ndarray]]
) -> list[tuple[Index, np.ndarray, np.ndarray]]:
    """(earlier neighbour, local labels here, local labels there) of touching pieces."""
    mine = faces_of(index)
    theirs = {
        tuple(n - i for n, i in zip(nb, index, strict=True)): faces_of(nb) for nb in grid.earlier(index)
    }
    found = links(decoder, mine, theirs)
    return [(tuple(i + d for i, d in zip(index, n, strict=True)), a, b) for n, a, b in found]


@dataclass(frozen=True)
class Numbered:
    """PyTC's number of each block's local labels (``lut[index][l]``, 0 for 0), and the objects'
    statistics from the label step (exact for decoders without a dilation)."""

    lut: dict[Index, np.ndarray]
    objects: Objects
    nodes: int = 0  # pieces in the merge's graph: those joined to a piece of another block


def merge_step(
    grid: Grid,
    pieces_of: dict[Index, Pieces],
    links_of: dict[Index, list[tuple[Index, np.ndarray, np.ndarray]]],
) -> Numbered:
    order = sorted(pieces_of)
    offset: dict[Index, int] = {}
    total = 0
    for index in order:
        offset[index] = total
        total += pieces_of[index].n
    a_parts, b_parts = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for index, found in links_of.items():
        for other, mine, theirs in found:
            a_parts.append(mine + offset[index])
            b_parts.append(theirs + offset[other])
    nodes, component = join(np.concatenate(a_parts), np.concatenate(b_parts))
    names = ("count", "first", "lo", "hi", "sums")
    cat = {name: _cat([getattr(pieces_of[i], name) for i in order], name) for name in names}
    drop = None  # affinities' pieces kept only if linked (Pieces.maybe) that no link names: background
    if any(pieces_of[i].maybe is not None for i in order):
        maybe = np.concatenate([_maybe(pieces_of[i]) for i in order])
        linked = np.zeros(total, dtype=bool)
        linked[nodes - 1] = True
        drop = maybe & ~linked
    ids = number(nodes, component, cat["first"], drop)
    k = int(ids.max(initial=0))
    kept = slice(None) if drop is None else ~drop
    objects = aggregate(ids[kept], k, *(cat[name][kept] for name in names))
    lut = {i: np.concatenate([[0], ids[offset[i] : offset[i] + pieces_of[i].n]]) for i in order}
    return Numbered(lut, objects, int(nodes.shape[0]))


def _maybe(pieces: Pieces) -> np.ndarray:
    return np.zeros(pieces.n, dtype=bool) if pieces.maybe is None else pieces.maybe.astype(bool)


def slice_step(
    decoder: Decoder, grid: Grid, numbered: Numbered, slices_of: Callable[[Index], dict[str, np.ndarray]]
) -> tuple[Objects, dict[Index, np.ndarray]]:
    """The per-slice size filter (``background_2d``, ``neighbor_2d``) after the merge: the kept
    voxels' statistics per object, and per block the (local label, z in the block) pairs to zero,
    as an array of two columns."""
    order = sorted(numbered.lut)
    rows = [slices_of(i) for i in order]
    ids = [numbered.lut[i][r["label"]] for i, r in zip(order, rows, strict=True)]
    # rows of no object (affinities' unlinked maybe-pieces, numbered 0) are left out
    rows = [{key: v[found != 0] for key, v in r.items()} for r, found in zip(rows, ids, strict=True)]
    ids = [found[found != 0] for found in ids]
    cat = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]} if rows else {}
    objects, dropped = slice_filter(
        decoder, np.concatenate(ids), numbered.objects.n, cat, grid.shape[1] * grid.shape[2], grid.shape[0]
    )
    drops = {}
    for i, r, found in zip(order, rows, ids, strict=True):
        gone = np.isin(found * grid.shape[0] + r["z"], dropped)
        drops[i] = np.column_stack([r["label"][gone], r["z"][gone] - grid.box(i).offset[0]]).astype(np.int64)
    return objects, drops


def drop_slices(labels: np.ndarray, pairs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` (the written labels of a block) with the voxels of the (local label, z) ``pairs``
    of ``labels`` zeroed."""
    if pairs.shape[0]:
        table = np.zeros((labels.shape[0], int(labels.max(initial=0)) + 1), dtype=bool)
        table[pairs[:, 1], pairs[:, 0]] = True
        values[table[np.arange(labels.shape[0])[:, None, None], labels]] = 0
    return values


def _cat(parts: list[np.ndarray], name: str) -> np.ndarray:
    width = 3 if name in ("lo", "hi", "sums") else 0
    empty = np.zeros((0, 3) if width else 0, dtype=np.float64 if name == "sums" else np.int64)
    return np.concatenate([*parts, empty]) if parts else empty


def halo_box(decoder: Decoder, grid: Grid, index: Index) -> Box:
    """The block grown by the dilation's reach (the watershed's margin), cut to the volume."""
    box = grid.box(index)
    begin = [max(0, o - h) for o, h in zip(box.offset, decoder.halo, strict=True)]
    end = [min(s, e + h) for s, e, h in zip(grid.shape, box.end, decoder.halo, strict=True)]
    return Box.from_bounds(begin, end)


def dilates_by_strips(decoder: Decoder) -> bool:
    """bc_connected with a dilation: its dilate step reads the block's local labels and, from each
    neighbour within the dilation's reach, only the layers facing the block (:func:`strips`)."""
    return decoder.dilation is not None and not decoder.watershed


def strips(labels: np.ndarray, halo: Sequence[int]) -> dict[str, np.ndarray]:
    """The first (``lo<a>``) and last (``hi<a>``) ``halo[a]`` layers of a block's local labels along
    each axis a with ``halo[a] > 0`` (the whole block along a where it is thinner), in the
    narrowest unsigned type that holds them: all a neighbour's dilation reads of this block."""
    top = int(labels.max(initial=0))
    narrow = labels.astype(narrow_dtype(top), copy=False)
    out = {}
    for a, h in enumerate(halo):
        if h <= 0:
            continue
        t = min(int(h), labels.shape[a])
        out[f"lo{a}"] = np.ascontiguousarray(
            narrow[tuple(slice(0, t) if d == a else slice(None) for d in range(3))]
        )
        out[f"hi{a}"] = np.ascontiguousarray(
            narrow[tuple(slice(labels.shape[a] - t, None) if d == a else slice(None) for d in range(3))]
        )
    return out


@dataclass(frozen=True)
class Dilated:
    """A block's dilated labels as ``names[core]``: ``core`` holds ranks (uint8/16/32, the
    narrowest for the objects within the dilation's reach), ``names`` their global numbers
    (rising, ``names[0] == 0``); ``part``: its part of each object (:func:`block_parts`)."""

    core: np.ndarray
    names: np.ndarray
    part: tuple[np.ndarray, ...]


def dilate_block(
    decoder: Decoder,
    grid: Grid,
    index: Index,
    labels: np.ndarray,
    strips_of: Callable[[Index], dict[str, np.ndarray]],
    lut_of: Callable[[Index], np.ndarray],
) -> Dilated:
    """bc_connected's dilation of one block, from its local ``labels``, the numbers the merge gave
    them (``lut_of(index)``, 0 for 0) and, for every other block within the dilation's reach of
    it, its :func:`strips` and numbers: no numbered copy of the volume is written or read.

    The box around the block (:func:`halo_box`) is assembled in ranks of the global numbers found
    there (an order-preserving renaming: the box's maximum is the same object), in the narrowest
    type, so the dilation's passes move a quarter of the bytes of uint32 labels or less."""
    assert decoder.dilation is not None
    box, grown = grid.box(index), halo_box(decoder, grid, index)
    own = lut_of(index)
    pieces: list[tuple[tuple[slice, ...], np.ndarray, np.ndarray]] = []  # (where in grown, labels, lut)
    found = [np.zeros(1, np.int64), own.astype(np.int64)]  # the global numbers in the box
    ranges = [
        range(g // b, (e - 1) // b + 1) for g, e, b in zip(grown.offset, grown.end, grid.block, strict=True)
    ]
    for other in itertools.product(*ranges):
        there = grid.box(other)
        lo = [max(g, o) for g, o in zip(grown.offset, there.offset, strict=True)]
        hi = [min(g, e) for g, e in zip(grown.end, there.end, strict=True)]
        where = tuple(slice(a - g, b - g) for a, b, g in zip(lo, hi, grown.offset, strict=True))
        if other == index:
            pieces.append((where, labels, own))
            continue
        axis = next(a for a in range(3) if other[a] != index[a])
        strip = strips_of(other)[f"{'hi' if other[axis] < index[axis] else 'lo'}{axis}"]
        start = [0, 0, 0]  # the strip's first voxel, in the other block
        if other[axis] < index[axis]:
            start[axis] = there.shape[axis] - strip.shape[axis]
        local = tuple(
            slice(a - o - s, b - o - s) for a, b, o, s in zip(lo, hi, there.offset, start, strict=True)
        )
        lut = lut_of(other)
        pieces.append((where, strip[local], lut))
        found.append(lut[np.unique(strip[local])].astype(np.int64))
    names = np.unique(np.concatenate(found))
    rank_type = narrow_dtype(names.shape[0] - 1)
    assembled = np.empty(grown.shape, dtype=rank_type)
    for where, part, lut in pieces:
        ranks = np.minimum(np.searchsorted(names, lut.astype(np.int64)), names.shape[0] - 1).astype(rank_type)
        assembled[where] = ranks[part]
    inner = tuple(
        slice(o - g, o - g + s) for o, g, s in zip(box.offset, grown.offset, box.shape, strict=True)
    )
    core = np.ascontiguousarray(dilate(assembled, decoder.dilation)[inner])
    return Dilated(core, names, block_parts(grid, box, core, names))


def grown_box(grid: Grid, index: Index, halo: Sequence[int]) -> Box:
    """The block grown by ``halo`` on each side, cut to the volume."""
    box = grid.box(index)
    begin = [max(0, o - h) for o, h in zip(box.offset, halo, strict=True)]
    end = [min(s, e + h) for s, e, h in zip(grid.shape, box.end, halo, strict=True)]
    return Box.from_bounds(begin, end)


def grow_step(
    decoder: Decoder, grid: Grid, index: Index, read: Callable[[Box], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The block's watershed labels and its part of each object. ``read(box)`` gives the numbered
    seeds and the prediction (C, box) over a box: the seeds over :func:`halo_box` are flooded
    over the prediction there (:func:`volumes.labels.watershed.flood`, the tie order every block
    shares) and the block's interior kept. Where a voxel of the block inside the mask would be left
    unreached while the mask joins it to a face of the halo box inside the volume (a seed may
    reach it from beyond the halo), the halo doubles, at most ``HALO_DOUBLINGS`` times; which
    voxels a flood leaves unreached is known before it (:func:`unreached`), so a block is flooded
    once, over the box its halo settles on."""
    box, halo = grid.box(index), tuple(decoder.halo)
    mask: np.ndarray | None = None
    for attempt in range(HALO_DOUBLINGS + 1):
        grown = grown_box(grid, index, halo)
        seeds, pred = read(grown)
        inner = tuple(
            slice(o - g, o - g + s) for o, g, s in zip(box.offset, grown.offset, box.shape, strict=True)
        )
        if attempt == HALO_DOUBLINGS or grown.shape == grid.shape:
            break
        # decided before the flood, which would leave exactly these voxels unlabelled: a block
        # that grows again is flooded once, over its larger box
        mask = grow_mask(decoder, pred)
        if not unsettled(unreached(mask, seeds), grown, grid.shape, inner):
            break
        halo = tuple(max(1, 2 * h) for h in halo)
        mask = None
    labels = grow(decoder, pred, seeds, "raster", mask)
    core = np.ascontiguousarray(labels[inner]).astype(np.uint64)
    return core, block_parts(grid, box, core)


def unreached(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` that no seed's flood reaches: those of the mask's components
    (6-connected: the flood's steps) holding no seed voxel. A flood within the mask labels every
    other voxel of it, so this is ``mask & (labels == 0)`` of the flood, known before it."""
    from scipy import ndimage  # here: the connected-components decoders' jobs never import scipy.ndimage

    parts, n = ndimage.label(mask)  # 6-connectivity, scipy's default structure
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[parts[seeds != 0]] = True  # 0 outside the mask: seeds there flood nothing
    seeded[0] = True
    return ~seeded[parts]


def unsettled(unreached: np.ndarray, grown: Box, volume: Sequence[int], inner: tuple[slice, ...]) -> bool:
    """Whether a voxel of the block (``inner`` of the grown box) among ``unreached`` (in the mask,
    no seed's flood reached it) is joined through unreached voxels (6-connected: the flood's
    steps) to a face of the grown box that is not the volume's: a seed beyond it may reach it."""
    if not unreached[inner].any():
        return False
    from scipy import ndimage  # here: the connected-components decoders' jobs never import scipy.ndimage

    parts, _ = ndimage.label(unreached)  # 6-connectivity, scipy's default structure
    edge = []
    for a in range(3):
        if grown.offset[a] > 0:
            edge.append(parts.take(0, axis=a).ravel())
        if grown.end[a] < volume[a]:
            edge.append(parts.take(parts.shape[a] - 1, axis=a).ravel())
    if not edge:
        return False
    open_ids = np.unique(np.concatenate(edge))
    open_ids = open_ids[open_ids != 0]
    return bool(np.isin(parts[inner], open_ids).any())


def block_parts(
    grid: Grid, box: Box, core: np.ndarray, names: np.ndarray | None = None
) -> tuple[np.ndarray, ...]:
    """The statistics of a block's part of each object: (ids, count, first, lo, hi, sums); ``first``
    is 0 (objects' first voxels come from their seeds). From the block's runs (:func:`runs`): the
    ids found among the runs' labels, no pass over the voxels to renumber them; with ``names``,
    the core holds ranks and object ``names[r]`` is reported for rank r."""
    starts, lengths, values = runs(core)
    ids, local = np.unique(values, return_inverse=True)
    part = run_pieces(
        starts, lengths, local + 1, ids.shape[0], core.shape, box.offset, grid.shape, raster=False
    )
    named = ids.astype(np.int64) if names is None else names[ids].astype(np.int64)
    return (named, part.count, part.first, part.lo, part.hi, part.sums)


def objects_from_parts(k: int, parts: list[tuple[np.ndarray, ...]]) -> Objects:
    """The dilated objects' statistics from the blocks' parts."""
    if not parts:
        empty = np.zeros(0, np.int64)
        return aggregate(
            empty, k, empty, empty, np.zeros((0, 3), np.int64), np.zeros((0, 3), np.int64), np.zeros((0, 3))
        )
    cols = [np.concatenate([p[i] for p in parts]) for i in range(6)]
    return aggregate(cols[0], k, *cols[1:])


def decode_blockwise(pred: np.ndarray, decoder: Decoder, block: tuple[int, ...], relabel: str) -> np.ndarray:
    """Every step over ``pred`` (C, Z, Y, X) in memory, block by block: the labels (uint64)."""
    grid = Grid(tuple(pred.shape[1:]), tuple(block))
    done = {}
    for index in grid.indices():
        box = read_box(decoder, grid, index)
        done[index] = label_step(
            decoder, grid, index, pred[(slice(None), *box.slices())], pruned=prunes(decoder, relabel)
        )
    links_of = {i: link_step(decoder, grid, i, lambda j: done[j].faces) for i in grid.indices()}
    numbered = merge_step(grid, {i: d.pieces for i, d in done.items()}, links_of)
    out = np.zeros(grid.shape, dtype=np.uint64)
    objects = numbered.objects
    drops: dict[Index, np.ndarray] = {}
    if decoder.per_slice:
        objects, drops = slice_step(decoder, grid, numbered, lambda j: done[j].slices or {})
    for index in grid.indices():
        lut = numbered.lut[index]
        values = through(lut, done[index].renaming)[done[index].labels].astype(np.uint64)
        if index in drops:
            values = drop_slices(done[index].local, drops[index], values)
        out[grid.box(index).slices()] = values
    if decoder.watershed:
        seeds, out, parts = kept_seeds(decoder, objects.count).astype(np.uint64)[out], np.zeros_like(out), []

        def read(b: Box) -> tuple[np.ndarray, np.ndarray]:
            return seeds[b.slices()], pred[(slice(None), *b.slices())]

        for index in grid.indices():
            core, part = grow_step(decoder, grid, index, read)
            out[grid.box(index).slices()] = core
            parts.append(part)
        objects = objects_from_parts(objects.n, parts)
    elif dilates_by_strips(decoder):
        out, parts = np.zeros(grid.shape, dtype=np.uint64), []
        for index in grid.indices():
            dilated = dilate_block(
                decoder,
                grid,
                index,
                done[index].local,
                lambda j: done[j].strips or {},
                numbered.lut.__getitem__,
            )
            out[grid.box(index).slices()] = dilated.names.astype(np.uint64)[dilated.core]
            parts.append(dilated.part)
        objects = objects_from_parts(objects.n, parts)
    final = final_ids(decoder, objects, relabel, int(np.prod(grid.shape))).astype(np.uint64)
    return final[out]
