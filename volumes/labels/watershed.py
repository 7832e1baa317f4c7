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
"""

from __future__ import annotations

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


def grow(decoder: Decoder, pred: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The seeds (numbered labels, 0 elsewhere) flooded over ``-pred[0]`` within the mask (int64)."""
    from skimage.segmentation import watershed

    energy = -pred[0].astype(np.float64)
    markers = seeds.astype(np.int64, copy=False)
    return np.asarray(watershed(energy, markers, mask=grow_mask(decoder, pred)), dtype=np.int64)


def drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Labels of fewer than ``min_size`` voxels set to 0, the others kept (in place; returned)."""
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if small.any():
        labels[small[labels]] = 0
    return labels


def decode_watershed(pred: np.ndarray, decoder: Decoder) -> np.ndarray:
    """The whole volume decoded at once, PyTC's numbers (the seeds'; gaps where seeds or objects
    were dropped), uint64."""
    from volumes.labels.blockcc import components

    seeds = drop_small(
        components(seed_map(decoder, pred), decoder.connectivity).astype(np.int64), decoder.seed_thres
    )
    labels = grow(decoder, pred, seeds)
    if decoder.remove_small_mode == "background":
        labels = drop_small(labels, decoder.thres_small)
    return labels.astype(np.uint64)


def kept_seeds(decoder: Decoder, count: np.ndarray) -> np.ndarray:
    """The number of each seed 0..K after the seed size filter (``count`` per seed 1..K): its own,
    or 0 for a seed of fewer than ``seed_thres`` voxels (whole seeds, summed over blocks)."""
    ids = np.arange(count.shape[0] + 1, dtype=np.int64)
    ids[1:][count < decoder.seed_thres] = 0
    return ids
