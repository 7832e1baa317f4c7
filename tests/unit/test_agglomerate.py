"""``affinity_agglomerate`` (volumes.labels.agglomerate): the fragments and the region graph block by
block equal the whole volume's (so no fragment crosses a whole-volume boundary), the fragments are
waterz's watershed on affinities without ties, the agglomeration equals waterz's on the same
fragments, the one tie rule that differs from waterz is shown, the parameters are checked, and the
figures against the whole-volume run and the ground truth hold their thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agglomerate_figures import figures, synthetic_cells
from volumes.labels.agglomerate import (
    Agglomeration,
    Edges,
    agglomerate_graph,
    agglomerate_in_memory,
    agglomerate_waterz,
    as_affinities,
    block_edges,
    check,
    crossings,
    fragments_blockwise,
    fragments_in_memory,
    graph_blockwise,
    steepest_edges,
)
from volumes.metrics.reference import adapted_rand_error
from volumes.synth import affinities_from_labels, generate_em_volume


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    cells = generate_em_volume((12, 48, 48), seed=5, cell_size_nm=250.0).cells
    return affinities_from_labels(cells, seed=5), cells


def _same(a: Edges, b: Edges) -> None:
    np.testing.assert_array_equal(a.u, b.u)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(a.count, b.count)
    np.testing.assert_allclose(a.total, b.total, rtol=1e-12)
    np.testing.assert_array_equal(a.top, b.top)


@pytest.mark.parametrize("block", [(5, 16, 16), (12, 7, 48), (1, 48, 13), (12, 48, 48)])
def test_region_graph_of_blocks_is_the_whole_volumes(small, block):
    pred, _ = small
    agg = Agglomeration()
    fragments = fragments_in_memory(pred, agg)
    whole = block_edges(fragments, as_affinities(pred), (0, 0, 0))
    assert whole.n > 50
    _same(graph_blockwise(fragments, pred, block), whole)


def test_region_graph_by_hand():
    frags = np.array([[[1, 1, 2], [3, 3, 2]]], dtype=np.uint64)  # (1, 2, 3)
    affs = np.zeros((3, 1, 2, 3), np.float32)
    affs[2, 0, 0, 2] = 0.5  # x: (1 -> 2)
    affs[1, 0, 1, 0], affs[1, 0, 1, 1] = 0.2, 0.4  # y: (1 -> 3) twice
    affs[2, 0, 1, 2] = 0.9  # x: (3 -> 2)
    e = block_edges(frags, affs, (0, 0, 0))
    assert list(zip(e.u.tolist(), e.w.tolist(), strict=True)) == [(1, 2), (1, 3), (2, 3)]
    assert e.count.tolist() == [1, 2, 1]
    np.testing.assert_allclose(e.total, [0.5, 0.6, 0.9], rtol=1e-6)
    np.testing.assert_allclose(e.top, [0.5, 0.4, 0.9])
    # mean: 1-0.9=0.1 merges 2 and 3 below 0.3; then (1, {2,3}) has mean (0.5+0.6)/3
    merges = agglomerate_graph(e, Agglomeration(thresholds=(0.3, 0.7), merge_function="mean"))
    first, second = (merges.lookup(i, frags) for i in range(2))
    assert len(np.unique(first)) == 2 and first[0, 0, 2] == first[0, 1, 2] != first[0, 0, 0]
    assert len(np.unique(second)) == 1


def _tie_free(cells: np.ndarray, seed: int) -> np.ndarray:
    """Float affinities of ``cells`` with a little noise: no two edges tie."""
    rng = np.random.default_rng(seed)
    pred = affinities_from_labels(cells, seed=seed).astype(np.float32) / 255
    return np.clip(pred + rng.uniform(-1e-3, 1e-3, pred.shape).astype(np.float32), 0, 1)


@pytest.mark.parametrize("seed", [0, 1])
def test_agglomeration_equals_waterz_on_the_same_fragments(small, seed):
    """Float affinities without ties: the merges are waterz's, whatever their order."""
    pred = _tie_free(small[1], seed)
    agg = Agglomeration(thresholds=(0.2, 0.4, 0.7), merge_function="mean")
    fragments = fragments_in_memory(pred, agg)
    ours = agglomerate_in_memory(pred, agg)
    theirs = agglomerate_waterz(pred, agg, fragments=fragments)
    for a, b in zip(ours, theirs, strict=True):
        assert len(np.unique(a)) > 1
        assert adapted_rand_error(a, b)[0] == 0.0
        assert crossings(a, b) == 0 and crossings(b, a) == 0


@pytest.mark.parametrize("block", [(5, 16, 16), (12, 7, 48), (1, 48, 13), (3, 5, 7), (12, 48, 48)])
def test_fragments_block_by_block_equal_the_whole_volumes(small, block):
    """uint8 affinities (many ties): every block shape gives the whole volume's fragments, bitwise,
    so no fragment of the blockwise run crosses a boundary of the whole-volume run."""
    pred, _ = small
    agg = Agglomeration()
    whole, blocks = fragments_in_memory(pred, agg), fragments_blockwise(pred, agg, block)
    assert whole.max() > 100
    np.testing.assert_array_equal(blocks, whole)
    assert crossings(blocks, whole) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    shape=st.tuples(st.integers(1, 7), st.integers(1, 12), st.integers(1, 12)),
    block=st.tuples(st.integers(1, 7), st.integers(1, 12), st.integers(1, 12)),
    levels=st.integers(2, 5),
    as_float=st.booleans(),
)
def test_fragments_block_by_block_on_plateaus(seed, shape, block, levels, as_float):
    """Affinities of a few levels only (plateaus everywhere, ties at every voxel), uint8 or float,
    random volume and block shapes: the blockwise fragments are the whole volume's."""
    rng = np.random.default_rng(seed)
    pred = (rng.integers(0, levels, (3, *shape)) * (255 // (levels - 1))).astype(np.uint8)
    if as_float:
        pred = pred.astype(np.float32) / 255
    agg = Agglomeration(aff_threshold=(0.2, 0.9))
    np.testing.assert_array_equal(fragments_blockwise(pred, agg, block), fragments_in_memory(pred, agg))


def _waterz_fragments(pred: np.ndarray, low: float, high: float) -> np.ndarray:
    import waterz

    affs = np.ascontiguousarray(as_affinities(pred))
    [found] = waterz.agglomerate(affs, [0.0], aff_threshold_low=low, aff_threshold_high=high)
    return np.array(found, copy=True)


@pytest.mark.parametrize("seed", [0, 1])
def test_fragments_are_waterz_watershed_on_affinities_without_ties(small, seed):
    """Float affinities without ties: the fragments are waterz's own (zwatershed), up to numbering."""
    pred = _tie_free(small[1], seed)
    ours = fragments_in_memory(pred, Agglomeration())
    theirs = _waterz_fragments(pred, 0.05, 0.995)
    assert ours.max() > 100
    np.testing.assert_array_equal(ours == 0, theirs == 0)
    assert crossings(ours, theirs) == 0 and crossings(theirs, ours) == 0


def test_a_plateau_between_two_exits_goes_one_way_where_waterz_splits_it():
    """The ties where the fragments differ from waterz's: a plateau of equal edges (here 0.5 between
    voxels 2..7 of a line) whose voxels have no stronger way off it. waterz divides such a plateau
    by a breadth-first search from its corners, in the order of the whole volume's voxels (about
    half of it to each exit); no block sees that order, so the local rule sends every plateau voxel
    the last way in waterz's order (+x here): the plateau goes to the +x exit."""
    pred = np.zeros((3, 1, 1, 9), np.float32)
    pred[2, 0, 0, 1:] = [0.9, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9]  # x edges (i - 1, i), i = 1..8
    kept = steepest_edges(pred, (0.05, 0.995))
    assert kept[2, 0, 0].tolist() == [False, True, True, False, True, True, True, True, True]
    ours = fragments_in_memory(pred, Agglomeration())[0, 0]
    theirs = _waterz_fragments(pred, 0.05, 0.995)[0, 0]
    assert ours.tolist() == [1, 1, 1, 2, 2, 2, 2, 2, 2]
    assert theirs.tolist() == [1, 1, 1, 1, 2, 2, 2, 2, 2]  # split inside the plateau
    # a block ending inside the plateau still gives the whole line's fragments
    np.testing.assert_array_equal(fragments_blockwise(pred, Agglomeration(), (1, 1, 4))[0, 0], ours)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"thresholds": ()}, "thresholds"),
        ({"thresholds": (0.5, 0.3)}, "thresholds"),
        ({"thresholds": (0.0,)}, "thresholds"),
        ({"thresholds": (1.5,)}, "thresholds"),
        ({"aff_threshold": (0.9, 0.1)}, "aff_threshold"),
        ({"merge_function": "aff50_his128"}, "merge_function"),
        ({"merge_function": "aff0_his256"}, "merge_function"),
    ],
)
def test_bad_parameters_name_their_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        Agglomeration(**kwargs)
    assert check((0.1, 0.3), (0.05, 0.995), "aff85_his256") == []


def test_affinities_need_three_channels():
    with pytest.raises(ValueError, match="3 channels"):
        as_affinities(np.zeros((2, 4, 4, 4), np.uint8))


@pytest.mark.slow
def test_figures_against_the_whole_volume_and_ground_truth():
    """The figures recorded in RESULTS.md (bench_agglomerate.py), with thresholds: the blockwise run
    is the whole-volume run (no crossing, adapted Rand and VOI 0), and close to the ground truth."""
    pred, gt = synthetic_cells()
    for merge_function, f in figures(pred, gt, waterz=False).items():
        assert f.identical_fragment_voxels == 1.0
        assert f.graph_bytes < 40 * f.edges + 1
        for row in f.rows:
            assert row.crossings == 0 and row.segments == row.whole_segments, row
            assert row.are_whole == 0.0 and row.voi_whole == (0.0, 0.0), row
            assert row.are_gt == row.are_gt_whole, row
        best = {r.threshold: r for r in f.rows}
        if merge_function == "mean":
            assert best[0.6].are_gt < 0.015
        else:
            assert best[0.3].are_gt < 0.015 and best[0.1].are_gt < 0.06
