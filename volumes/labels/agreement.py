"""How close the blockwise watershed comes to the whole-volume one, and the synthetic cases measured.

:func:`agreement` compares two labellings of the same volume (the whole-volume decoder's and the
blockwise run's, both PyTC's numbers, which are global seed numbers on both sides):

- ``identical``: the fraction of voxels with the same label;
- ``are``: the adapted Rand error (SNEMI3D) of the blockwise labels against the whole-volume ones;
- ``cut``: objects of the whole-volume result cut by a block face: two voxels of the object that
  face each other across a block face carry different labels in the blockwise result;
- ``spanning``: objects of the whole-volume result that lie in more than one block and whose voxels
  do not all carry one label in the blockwise result (wherever the difference lies: a front
  between two objects moved inside a block counts too; the measure reported as "cut" before
  2026-12-02);
- ``differ``: objects of the whole-volume result with any voxel labelled otherwise.

:func:`watershed_cases` draws the data: an EM-like volume (:func:`volumes.synth.generate_em_volume`)
and predictions derived from its ground truth by a blur and noise, as a model's would look:

- ``mito``: ``binary_watershed`` on the mitochondria (the demo's; separate objects);
- ``cells``: ``bc_watershed`` on the cells, foreground and contour (touching objects: cells meet
  across thin membranes, the seeds' fronts meet on plateaus of the foreground map);
- ``cells_bcd``: ``bcd_watershed`` on the cells with a signed distance channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from volumes.labels.decoders import Decoder
from volumes.metrics.reference import adapted_rand_error


@dataclass(frozen=True)
class Agreement:
    identical: float
    are: float
    objects: int
    cut: int
    differ: int
    spanning: int = 0


def agreement(whole: np.ndarray, blocked: np.ndarray, block: Sequence[int]) -> Agreement:
    """The blockwise labels ``blocked`` against the whole-volume labels ``whole`` (same numbers)."""
    same = float(np.mean(whole == blocked))
    are = adapted_rand_error(whole, blocked)[0] if whole.any() else 0.0
    fg = whole != 0
    pairs = np.unique(np.stack([whole[fg], blocked[fg]]), axis=1)
    ids, labels_per_object = np.unique(pairs[0], return_counts=True)
    wrong = np.zeros(int(whole.max(initial=0)) + 1, dtype=bool)
    wrong[ids[labels_per_object > 1]] = True
    wrong[pairs[0][pairs[0] != pairs[1]]] = True
    spanning = 0
    for label, box in enumerate(ndimage.find_objects(whole.astype(np.int64)), start=1):
        if box is None or not wrong[label]:
            continue
        spans = any(s.start // b != (s.stop - 1) // b for s, b in zip(box, block, strict=True))
        mixed = ids.size and labels_per_object[np.searchsorted(ids, label)] > 1
        spanning += int(spans and bool(mixed))
    return Agreement(
        same, float(are), int(ids.size), face_cuts(whole, blocked, block), int(wrong.sum()), spanning
    )


def face_cuts(whole: np.ndarray, blocked: np.ndarray, block: Sequence[int]) -> int:
    """Objects of ``whole`` that a block face cuts in ``blocked``: some two voxels of the object on
    either side of a face (face neighbours) carry different labels there."""
    cut: list[np.ndarray] = [np.zeros(0, dtype=whole.dtype)]
    for a, step in enumerate(block):
        for f in range(step, whole.shape[a], step):
            w0, w1 = whole.take(f - 1, axis=a), whole.take(f, axis=a)
            b0, b1 = blocked.take(f - 1, axis=a), blocked.take(f, axis=a)
            cut.append(w0[(w0 == w1) & (w0 != 0) & (b0 != b1)])
    return int(np.unique(np.concatenate(cut)).size)


def _uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8)


def _map(rng: np.random.Generator, mask: np.ndarray, sigma: Sequence[float], noise: float) -> np.ndarray:
    """A model-like probability of ``mask``: blurred, with a little noise, in [0, 1]."""
    smooth = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
    return np.clip(smooth + rng.normal(0, noise, mask.shape).astype(np.float32), 0, 1)


def watershed_cases(shape: Sequence[int], seed: int = 0) -> dict[str, tuple[np.ndarray, Decoder]]:
    """name -> (uint8 prediction (C, Z, Y, X), decoder with PyTC's defaults but ``margin``, unset)."""
    from volumes.synth import generate_em_volume

    vol = generate_em_volume(shape, seed=seed)
    rng = np.random.default_rng(seed)
    sigma = (0.5, 1.5, 1.5)
    mito = _uint8(_map(rng, vol.mito > 0, sigma, 0.03))[None]
    inside = vol.cells > 0
    fg = _map(rng, inside, sigma, 0.03)
    wide = ndimage.binary_dilation(vol.membranes > 0, np.ones((3, 3, 3), bool))  # a contour target
    contour = np.clip(2 * _map(rng, wide, sigma, 0.03), 0, 1)
    edt = ndimage.distance_transform_edt(inside, sampling=vol.voxel_size_nm)
    dist = np.where(inside, np.minimum(edt / 200.0, 1.0), -1.0)  # signed, 200 nm to saturate
    cells = np.stack([_uint8(fg), _uint8(contour)])
    bcd = np.concatenate([cells, _uint8((dist + 1) / 2)[None]])
    return {
        "mito": (mito, Decoder("binary_watershed", (0.98, 0.85), 128, "background", 26)),
        "cells": (cells, Decoder("bc_watershed", (0.9, 0.8, 0.85), 128, "background", 26)),
        "cells_bcd": (bcd, Decoder("bcd_watershed", (0.9, 0.8, 0.85, 0.5, 0.0), 128, "background", 26)),
    }
