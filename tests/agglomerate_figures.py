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
    agglomerate_graph,
    agglomerate_waterz,
    as_affinities,
    block_edges,
    crossings,
    fragments_blockwise,
    fragments_in_memory,
    graph_blockwise,
)
from volumes.metrics.scores import adapted_rand, variation_of_information
from volumes.metrics.table import ContingencyTable, table_of
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
    waterz_fragments: int = 0  # waterz's own watershed's fragments (0: not run)
    are_fragments_waterz: float = float("nan")  # ours against waterz's own fragments (its ties)


def _are(table: ContingencyTable) -> float:
    """SNEMI3D's adapted Rand error (first of the table: the reference labels)."""
    return adapted_rand(table)["adapted_rand_error"]


def figures(
    pred: np.ndarray,
    gt: np.ndarray,
    merge_functions: tuple[str, ...] = ("aff50_his256", "mean"),
    block: tuple[int, ...] = BLOCK,
    waterz: bool = True,
) -> dict[str, Figures]:
    """The figures per merge function; the fragments and both graphs are made once. ``waterz``:
    also run waterz on the whole volume (else its columns are NaN)."""
    agg = Agglomeration(thresholds=THRESHOLDS)
    affs = as_affinities(pred)
    whole_frags = fragments_in_memory(pred, agg)
    whole_graph = block_edges(whole_frags, affs, (0, 0, 0))
    frags = fragments_blockwise(pred, agg, block)
    graph = graph_blockwise(frags, pred, block)
    theirs = _waterz_fragments(pred, agg) if waterz else None
    out = {}
    for merge_function in merge_functions:
        agg = Agglomeration(thresholds=THRESHOLDS, merge_function=merge_function)
        on_whole, on_blocks = agglomerate_graph(whole_graph, agg), agglomerate_graph(graph, agg)
        whole = [on_whole.lookup(i, whole_frags) for i in range(len(THRESHOLDS))]
        blocks = [on_blocks.lookup(i, frags) for i in range(len(THRESHOLDS))]
        same = agglomerate_waterz(pred, agg, fragments=whole_frags) if waterz else []
        own = agglomerate_waterz(pred, agg) if waterz else []
        rows = []
        for i, t in enumerate(THRESHOLDS):
            vs_whole, vs_gt = table_of(whole[i], blocks[i]), table_of(gt, blocks[i])
            rows.append(
                Row(
                    merge_function,
                    t,
                    int(np.unique(blocks[i]).size - (blocks[i] == 0).any()),
                    int(np.unique(whole[i]).size - (whole[i] == 0).any()),
                    crossings(frags, whole[i]),
                    _are(vs_whole),
                    variation_of_information(vs_whole),
                    _are(vs_gt),
                    variation_of_information(vs_gt),
                    _are(table_of(gt, whole[i])),
                    _are(table_of(whole[i], same[i])) if waterz else float("nan"),
                    _are(table_of(gt, own[i])) if waterz else float("nan"),
                )
            )
        out[merge_function] = Figures(
            int(np.unique(frags).size - 1),
            float((frags == whole_frags).mean()),
            graph.n,
            graph.nbytes,
            rows,
            0 if theirs is None else int(np.unique(theirs).size - (theirs == 0).any()),
            float("nan") if theirs is None else _are(table_of(theirs, whole_frags)),
        )
    return out


def _waterz_fragments(pred: np.ndarray, agg: Agglomeration) -> np.ndarray:
    """waterz's own watershed (its fragments, nothing merged)."""
    import waterz

    low, high = agg.aff_threshold
    affs = np.ascontiguousarray(as_affinities(pred))
    [found] = waterz.agglomerate(affs, [0.0], aff_threshold_low=low, aff_threshold_high=high)
    return np.array(found, copy=True)
