"""The agglomeration figures on fixed synthetic data: ``affinity_agglomerate`` block by block
against the whole-volume run (the same steps on the volume as one block), against waterz on the
whole volume (the library PyTC's tutorial calls), and against the ground truth.

The data: ``volumes.synth``'s cells (instance ids, 0 on membranes) and affinities drawn from them
(:func:`affinities_from_labels`): 1 between two voxels of one cell, 0 elsewhere, blurred, with
smooth noise, as uint8. Used by ``tests/unit/test_agglomerate.py`` (with thresholds) and
``tests/benchmarks/bench_agglomerate.py`` (the table in RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from volumes.labels.agglomerate import (
    Agglomeration,
    agglomerate_blockwise,
    agglomerate_in_memory,
    agglomerate_waterz,
    crossings,
    fragments_in_memory,
)
from volumes.metrics.reference import adapted_rand_error, variation_of_information
from volumes.synth import generate_em_volume

SHAPE = (32, 160, 160)
BLOCK = (16, 64, 64)
THRESHOLDS = (0.1, 0.3, 0.6)


def affinities_from_labels(
    labels: np.ndarray, seed: int = 0, blur: float = 1.0, noise: float = 0.1, noise_blur: float = 1.5
) -> np.ndarray:
    """Affinities (3, Z, Y, X) uint8 of a label volume: channel a at v is 1 where v and v - e_a are
    one non-zero object, blurred by ``blur`` voxels, plus Gaussian noise of std ``noise`` smoothed
    over ``noise_blur`` voxels, clipped to [0, 1] and scaled to 0..255."""
    rng = np.random.default_rng(seed)
    out = np.zeros((3, *labels.shape), np.float32)
    for a in range(3):
        same = np.zeros(labels.shape, bool)
        here = tuple(slice(1, None) if b == a else slice(None) for b in range(3))
        there = tuple(slice(0, -1) if b == a else slice(None) for b in range(3))
        same[here] = (labels[here] == labels[there]) & (labels[here] != 0)
        out[a] = same
    out = ndimage.gaussian_filter(out, (0, 0, blur, blur))  # z is anisotropic (30 nm): no blur across it
    n = ndimage.gaussian_filter(rng.normal(0, 1, out.shape).astype(np.float32), (0, *(noise_blur,) * 3))
    out += noise * n / n.std()
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def synthetic_cells(shape: tuple[int, int, int] = SHAPE, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(affinities, ground-truth cells) on ``volumes.synth``'s small-cell volume."""
    cells = generate_em_volume(shape, seed=seed, cell_size_nm=400.0).cells
    return affinities_from_labels(cells, seed=seed), cells


@dataclass(frozen=True)
class Row:
    merge_function: str
    threshold: float
    segments: int
    whole_segments: int
    crossings: int  # blockwise fragments holding voxels of two whole-volume objects
    are_whole: float  # adapted Rand error, blockwise against whole-volume
    voi_whole: tuple[float, float]  # VOI (split, merge) against whole-volume
    are_gt: float
    voi_gt: tuple[float, float]
    are_gt_whole: float
    are_waterz_same: float  # waterz's agglomeration of the whole-volume fragments against ours
    are_gt_waterz: float  # waterz with its own zwatershed fragments, against ground truth


@dataclass(frozen=True)
class Figures:
    fragments: int
    identical_fragment_voxels: float
    edges: int
    graph_bytes: int
    rows: list[Row]


def figures(pred: np.ndarray, gt: np.ndarray, merge_function: str, block: tuple[int, ...] = BLOCK) -> Figures:
    agg = Agglomeration(thresholds=THRESHOLDS, merge_function=merge_function, margin=(4, 16, 16))
    whole = agglomerate_in_memory(pred, agg)
    blocks, frags, edges = agglomerate_blockwise(pred, agg, block)
    whole_frags = fragments_in_memory(pred, agg)
    same = agglomerate_waterz(pred, agg, fragments=whole_frags)
    own = agglomerate_waterz(pred, agg)
    rows = []
    for i, t in enumerate(THRESHOLDS):
        rows.append(
            Row(
                merge_function,
                t,
                int(np.unique(blocks[i]).size - (blocks[i] == 0).any()),
                int(np.unique(whole[i]).size - (whole[i] == 0).any()),
                crossings(frags, whole[i]),
                adapted_rand_error(whole[i], blocks[i])[0],
                variation_of_information(whole[i], blocks[i]),
                adapted_rand_error(gt, blocks[i])[0],
                variation_of_information(gt, blocks[i]),
                adapted_rand_error(gt, whole[i])[0],
                adapted_rand_error(whole[i], same[i])[0],
                adapted_rand_error(gt, own[i])[0],
            )
        )
    return Figures(
        int(np.unique(frags).size - 1),
        float((frags == whole_frags).mean()),
        edges.n,
        edges.nbytes,
        rows,
    )
