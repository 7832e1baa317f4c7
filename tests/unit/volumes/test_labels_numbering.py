"""The numbering helpers of the blockwise labels against the slow, obvious versions they replaced:
the union-find of the merge against scipy's ``connected_components``, the first voxels and the
raster-order renumbering against ``np.unique``, and the renumbering of a block's object ids (both
of its paths) against ``np.unique(..., return_inverse=True)``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from volumes.labels.blockcc import components, first_voxels, is_raster_ordered, raster_ordered
from volumes.labels.blockwise import _renumbered
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


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans(), st.booleans())
def test_a_blocks_ids_renumbered_both_ways(seed: int, huge: bool, background: bool) -> None:
    rng = np.random.default_rng(seed)
    core = rng.integers(0 if background else 1, 12, (3, 4, 5)).astype(np.uint64)
    if huge:  # ids far above the block's voxels: the np.unique path
        core = np.where(core > 0, core + np.uint64(10**12), 0).astype(np.uint64)
    ids, compact = _renumbered(core)
    values, inverse = np.unique(core, return_inverse=True)
    want_ids = values[values > 0]
    want = inverse.reshape(core.shape) + (0 if values[0] == 0 else 1)
    np.testing.assert_array_equal(ids, want_ids.astype(np.int64))
    np.testing.assert_array_equal(compact, want.astype(np.uint32))
    assert compact.dtype == np.uint32
