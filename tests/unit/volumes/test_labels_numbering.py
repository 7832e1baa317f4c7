"""The numbering helpers of the blockwise labels against the slow, obvious versions they replaced:
the union-find of the merge against scipy's ``connected_components``, the first voxels and the
raster-order renumbering against ``np.unique``, a block's pieces (from its runs) and a dilated
block's parts of objects against each label's voxels."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from volumes.box import Box
from volumes.labels.blockcc import (
    components,
    first_voxels,
    is_raster_ordered,
    pieces,
    raster_ordered,
    raster_ordered_runs,
    runs,
)
from volumes.labels.blockwise import Grid, block_parts
from volumes.labels.merge import components_of_edges, join


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 200), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_the_union_find_gives_scipys_components(m: int, e: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    u, v = rng.integers(0, m, e), rng.integers(0, m, e)
    roots = components_of_edges(m, u, v)
    _, theirs = connected_components(coo_matrix((np.ones(e), (u, v)), shape=(m, m)), directed=False)
    assert same_partition(roots, theirs)
    assert (roots <= np.arange(m)).all() and (roots[roots] == roots).all()  # each root its smallest node


def test_the_union_find_on_a_long_shuffled_chain_and_the_merges_join() -> None:
    order = np.random.default_rng(0).permutation(50_000)
    assert (components_of_edges(50_000, order[:-1], order[1:]) == 0).all()
    nodes, component = join(np.array([7, 3, 40]), np.array([3, 9, 41]))
    assert nodes.tolist() == [3, 7, 9, 40, 41]
    assert component.tolist() == [0, 0, 0, 1, 1]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([(1, 1, 9), (3, 7, 5), (6, 10, 12)]), st.floats(0.2, 0.8))
def test_first_voxels_and_raster_order(seed: int, shape: tuple[int, int, int], p: float) -> None:
    rng = np.random.default_rng(seed)
    labels = components(rng.random(shape) < p, 6)
    n = int(labels.max())
    ids, first = np.unique(labels.ravel(), return_index=True)
    origin, volume = (2, 3, 4), (20, 30, 40)
    z, y, x = np.unravel_index(first[ids > 0], shape)
    want = np.ravel_multi_index((z + 2, y + 3, x + 4), volume)
    np.testing.assert_array_equal(first_voxels(labels, n, origin, volume), want)
    assert is_raster_ordered(labels)
    if n >= 2:  # two labels swapped: not raster order, refused, and put back by raster_ordered
        swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, labels)).astype(np.uint32)
        assert not is_raster_ordered(swapped)
        with pytest.raises(ValueError, match="raster order"):
            first_voxels(swapped, n, origin, volume)
        np.testing.assert_array_equal(raster_ordered(swapped), labels)
    scattered = (labels.astype(np.uint32) * 3).astype(np.uint32)  # gaps: compacted, order kept
    np.testing.assert_array_equal(raster_ordered(scattered), labels)
    far = labels.astype(np.uint32) * np.uint32(100_000)  # ids far above the block's size: searched
    if n >= 2:
        far = np.where(labels == 1, far.max() + 7, far).astype(np.uint32)  # and out of order
    np.testing.assert_array_equal(raster_ordered(far), labels)
    # every path (rising first appearances: a running count; out of order: a sort; far: a search)
    # gives the runs of the labels it returns, the new numbers for the old ones
    for given_labels in (scattered, far, *([swapped] if n >= 2 else [])):
        got, *found = raster_ordered_runs(given_labels)
        np.testing.assert_array_equal(got, labels)
        for got_part, want_part in zip(found, runs(labels), strict=True):
            np.testing.assert_array_equal(got_part, want_part)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_a_blocks_parts_from_its_runs(seed: int, huge: bool, background: bool) -> None:
    """A dilated block's parts of objects (any ids, small or far above its voxels, with or without
    background): the ids present, sorted, and each one's statistics from its voxels."""
    rng = np.random.default_rng(seed)
    core = rng.integers(0 if background else 1, 12, (3, 4, 5)).astype(np.uint64)
    if huge:
        core = np.where(core > 0, core + np.uint64(10**12), 0).astype(np.uint64)
    box = Box((2, 0, 3), (3, 4, 5))
    ids, count, first, lo, hi, sums = block_parts(Grid((9, 8, 10), (3, 4, 5)), box, core)
    values = np.unique(core)
    np.testing.assert_array_equal(ids, values[values > 0].astype(np.int64))
    compact = np.searchsorted(ids, core.astype(np.int64)) + 1
    compact[core == 0] = 0
    want = brute_pieces(compact, box.offset, (9, 8, 10))
    assert (first == 0).all()
    for key, got in (("count", count), ("lo", lo), ("hi", hi), ("sums", sums)):
        if ids.size:
            np.testing.assert_array_equal(got, want[key], err_msg=key)


def brute_pieces(
    labels: np.ndarray, origin: tuple[int, ...], volume: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Each label's statistics from its voxels' coordinates, one label at a time."""
    n = int(labels.max())
    out: dict[str, list[np.ndarray]] = {"count": [], "first": [], "lo": [], "hi": [], "sums": []}
    at = np.asarray(origin)
    for label in range(1, n + 1):
        coords = np.argwhere(labels == label) + at  # raster order: the first row is the first voxel
        out["count"].append(np.array(coords.shape[0]))
        out["first"].append(np.array(np.ravel_multi_index(tuple(coords[0]), volume)))
        out["lo"].append(coords.min(axis=0))
        out["hi"].append(coords.max(axis=0) + 1)
        out["sums"].append(coords.sum(axis=0).astype(np.float64))
    return {k: np.array(v) for k, v in out.items()}


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([(1, 1, 9), (1, 6, 1), (3, 7, 5), (6, 10, 12), (4, 1, 30)]),
    st.floats(0.1, 0.9),
    st.sampled_from([6, 26]),
)
def test_pieces_from_runs_equal_each_labels_voxels(
    seed: int, shape: tuple[int, int, int], p: float, connectivity: int
) -> None:
    """The statistics :func:`pieces` takes from a block's runs (counts, first voxels, boxes,
    coordinate sums) are those of each label's voxels; labels not in raster order are refused,
    and without ``raster`` their statistics are still right (first voxels left 0)."""
    rng = np.random.default_rng(seed)
    labels = components(rng.random(shape) < p, connectivity)
    origin, volume = (5, 0, 7), (40, 30, 50)
    got = pieces(labels, origin, volume)
    want = brute_pieces(labels, origin, volume)
    n = int(labels.max())
    assert got.n == n
    for key in ("count", "first", "lo", "hi", "sums"):
        if n:
            np.testing.assert_array_equal(getattr(got, key), want[key], err_msg=key)
    if n >= 2:
        swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, labels)).astype(np.uint32)
        with pytest.raises(ValueError, match="raster order"):
            pieces(swapped, origin, volume)
        loose = pieces(swapped, origin, volume, raster=False)
        assert (loose.first == 0).all()
        np.testing.assert_array_equal(loose.count[[1, 0]], got.count[:2])
        np.testing.assert_array_equal(loose.lo[[1, 0]], got.lo[:2])
        np.testing.assert_array_equal(loose.sums[[1, 0]], got.sums[:2])
