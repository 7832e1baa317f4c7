"""PyTC's watershed decoders: seeds, the mask they grow in, the growth, the whole volume in memory.

The semantics are those of ``binary_watershed``, ``bc_watershed`` and ``bcd_watershed`` in
``connectomics/utils/process.py`` (PyTC v1.0), written anew here. With ``s`` the first channel
(semantic), ``b`` the second (instance contour), ``d`` the third (signed distance)::

    decoder           seeds                                   grows within
    binary_watershed  s > thres1                              s > thres2
    bc_watershed      s > thres1, b < thres2                  s > thres3
    bcd_watershed     s > thres1, b < thres2, d > thres4      s > thres3, d > thres5

Thresholds on ``s`` and ``b`` compare as PyTC does on uint8 maps (``> int(255 * t)``); ``d`` is
PyTC's ``d / 255 * 2 - 1`` on uint8 maps and is taken as it is (a signed distance in [-1, 1]) on
float maps, compared with ``thres4`` / ``thres5`` directly. Seeds are the connected components of
the seed map (full connectivity, as scikit-image's ``label``; 6 and 18 as options), numbered in
raster order; seeds of fewer than ``seed_thres`` voxels are dropped (``remove_small_objects``),
keeping the other numbers. Each seed then floods ``-s`` within the mask (``skimage.segmentation.
watershed``: 6-connected, a voxel takes the label of the first labelled neighbour taken off the
priority queue, lowest value first, ties in the order voxels were queued), and objects of fewer
than ``thres_small`` voxels are zeroed (``remove_small_mode: background``).

The whole-volume decoder calls scikit-image, as PyTC does. The blockwise growth calls
:func:`flood`, the same algorithm with one difference, its tie order: scikit-image queues every
seed voxel first with the same age, so seed voxels of equal value leave its binary heap in an order
set by the heap's layout, which depends on every seed in the volume; :func:`flood` takes them in
raster order, an order every block sees alike. Everything else is scikit-image's: a voxel's
priority is the highest value on the path that reached it (its flood level), voxels of equal
priority leave in the order they were queued, and a voxel takes the label of the first neighbour
taken off the queue. Where two seeds' fronts meet at equal flood level and equal distance (a tie
that goes back to the seeds' own order) the two can differ: ``docs/segmentation.md``.
"""

from __future__ import annotations

import itertools

import numpy as np

from volumes.labels.decoders import Decoder, above, distance, seed_map


def grow_mask(decoder: Decoder, pred: np.ndarray) -> np.ndarray:
    """Where seeds may grow (boolean (Z, Y, X)): PyTC's foreground."""
    t = decoder.thresholds
    if decoder.name == "binary_watershed":
        return above(pred[0], t[1])
    mask = above(pred[0], t[2])
    if decoder.name == "bcd_watershed":
        mask &= distance(pred[2]) > t[4]
    return mask


def grow(
    decoder: Decoder, pred: np.ndarray, seeds: np.ndarray, ties: str = "heap", mask: np.ndarray | None = None
) -> np.ndarray:
    """The seeds (numbered labels, 0 elsewhere) flooded over ``-pred[0]`` within the mask (int64;
    ``mask``: :func:`grow_mask` of ``pred`` where the caller has it). ``ties``: ``heap``
    (scikit-image's watershed, PyTC's order) or ``raster`` (:func:`flood`)."""
    markers = seeds.astype(np.int64, copy=False)
    if mask is None:
        mask = grow_mask(decoder, pred)
    if ties == "raster":  # a uint8 map's energy in integers: flood ranks its levels by a table
        energy = -pred[0].astype(np.int16) if pred.dtype == np.uint8 else -pred[0].astype(np.float64)
        return flood(energy, markers, mask)
    from skimage.segmentation import watershed

    return np.asarray(watershed(-pred[0].astype(np.float64), markers, mask=mask), dtype=np.int64)


def flood(energy: np.ndarray, markers: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``skimage.segmentation.watershed(energy, markers, mask=mask)`` (6-connected, no compactness,
    no watershed line) with marker voxels of equal value taken in raster order (int64 labels).

    A queue per distinct value of ``energy`` (a hierarchical queue), each first in, first out: the
    order of scikit-image's heap, whose key is (priority, age), for every voxel but the markers.
    A queue is taken whole at a time, in order, and each voxel of it labels its unlabelled
    neighbours (offsets in scikit-image's order: -z, -y, -x, +x, +y, +z), the first to reach a
    voxel winning; the voxels so labelled join the queue of their priority (their value, or the
    level being flooded if lower), after the voxels already there."""
    shape = tuple(energy.shape)
    padded = tuple(s + 2 for s in shape)
    inner = tuple(slice(1, -1) for _ in shape)
    labels = np.zeros(padded, dtype=np.int64)
    labels[inner] = np.where(mask, markers, 0)
    flat = labels.ravel()
    free = np.zeros(padded, dtype=bool)  # in the mask and not labelled yet: what a flood step may take
    free[inner] = mask
    free = free.ravel()
    free[flat != 0] = False
    # each voxel's rank among the mask's distinct values (only mask voxels are ever queued)
    n_levels, ranks = _ranks(np.asarray(energy)[mask])
    # the ranks in the narrowest unsigned type: a stable argsort of 8 or 16-bit keys is a radix sort
    rank = np.zeros(padded, dtype=np.min_scalar_type(max(n_levels - 1, 0)))
    rank[inner][mask] = ranks
    rank = rank.ravel()
    sy, sz = padded[2], padded[1] * padded[2]
    offsets = np.array([-sz, -sy, -1, 1, sy, sz], dtype=np.int64)
    # per voxel, the position of its first reach in the step that reached it (each voxel is reached
    # in one step only: it is labelled then, and never free again)
    position = np.int32 if 6 * flat.size < 2**31 else np.int64  # a step reaches at most 6 per voxel
    first_at = np.full(flat.size, np.iinfo(position).max, dtype=position)
    queues: list[list[np.ndarray]] = [[] for _ in range(n_levels)]
    start = np.flatnonzero(flat)  # raster order
    _enqueue(queues, start, rank[start])
    for level, queue in enumerate(queues):
        while queue:
            current = queue[0] if len(queue) == 1 else np.concatenate(queue)
            queue.clear()
            reach = (current[:, None] + offsets[None, :]).ravel()  # queue order, then offset order
            at = np.flatnonzero(free[reach])
            if not at.size:
                continue
            reach = reach[at]
            order = np.arange(reach.shape[0], dtype=position)
            np.minimum.at(first_at, reach, order)
            first = np.flatnonzero(first_at[reach] == order)  # each voxel once, by its first reach
            new = reach[first]
            flat[new] = flat[current[at[first] // offsets.shape[0]]]  # the reaching voxel's label
            free[new] = False
            priority = np.maximum(rank[new], level)
            here = priority == level
            if here.all():
                queue.append(new)
            else:
                if here.any():
                    queue.append(new[here])
                _enqueue(queues, new[~here], priority[~here])
    return labels[inner]


def _ranks(values: np.ndarray) -> tuple[int, np.ndarray]:
    """(how many distinct values, each value's rank among them, ascending): ``np.unique``'s
    inverse; for integers of a span up to 65,536 (a uint8 map's energy), a table, without a sort."""
    if values.dtype.kind in "iu" and values.size:
        low = int(values.min())
        if int(values.max()) - low < 1 << 16:
            shifted = (values.astype(np.int64) - low).astype(np.intp)
            present = np.bincount(shifted) > 0
            table = np.cumsum(present) - 1
            return int(table[-1]) + 1, table[shifted]
    levels, inverse = np.unique(values.astype(np.float64), return_inverse=True)
    return int(levels.shape[0]), inverse.ravel()


def _enqueue(queues: list[list[np.ndarray]], voxels: np.ndarray, priority: np.ndarray) -> None:
    """``voxels`` appended to the queues of their priorities, keeping their order in each."""
    if not voxels.size:
        return
    order = np.argsort(priority, kind="stable")
    voxels, priority = voxels[order], priority[order]
    bounds = [0, *(np.flatnonzero(priority[1:] != priority[:-1]) + 1).tolist(), voxels.shape[0]]
    for lo, hi in itertools.pairwise(bounds):
        queues[int(priority[lo])].append(voxels[lo:hi])


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels of fewer than ``min_size`` voxels set to 0, the others kept (in place; returned)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def decode_watershed(pred: np.ndarray, decoder: Decoder, ties: str = "heap") -> np.ndarray:
    """The whole volume decoded at once, PyTC's numbers (the seeds'; gaps where seeds or objects
    were dropped), uint64. ``ties``: ``heap`` is PyTC's decoder (scikit-image's order); ``raster``
    the blockwise run's order (:func:`flood`), what that run equals once its halo suffices."""
    from volumes.labels.blockcc import components

    seeds = drop_small(
        components(seed_map(decoder, pred), decoder.connectivity).astype(np.int64), decoder.seed_thres
    )
    labels = grow(decoder, pred, seeds, ties)
    if decoder.remove_small_mode == "background":
        labels = drop_small(labels, decoder.thres_small)
    return labels.astype(np.uint64)


def kept_seeds(decoder: Decoder, count: np.ndarray) -> np.ndarray:
    """The number of each seed 0..K after the seed size filter (``count`` per seed 1..K): its own,
    or 0 for a seed of fewer than ``seed_thres`` voxels (whole seeds, summed over blocks)."""
    ids = np.arange(count.shape[0] + 1, dtype=np.int64)
    ids[1:][count < decoder.seed_thres] = 0
    return ids
