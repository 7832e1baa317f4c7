"""The agglomeration figures on fixed synthetic data: ``affinity_agglomerate`` block by block
against the whole-volume run (the same steps on the volume as one block), against waterz on the
whole volume (the library PyTC's tutorial calls), and against the ground truth.

The data: ``volumes.synth``'s cells (instance ids, 0 on membranes) and affinities drawn from them
(:func:`volumes.synth.affinities_from_labels`): 1 between two voxels of one cell, 0 elsewhere, blurred, with
smooth noise, as uint8. Used by ``tests/unit/test_agglomerate.py`` (with thresholds) and
``tests/benchmarks/bench_agglomerate.py`` (the table in RESULTS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
from volumes.synth import affinities_from_labels, generate_em_volume

SHAPE = (32, 160, 160)
BLOCK = (16, 64, 64)
THRESHOLDS = (0.1, 0.3, 0.6)


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
