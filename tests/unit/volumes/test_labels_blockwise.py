"""The blockwise connected-components decoders equal the whole-volume decoder, voxel for voxel.

The oracle is PyTC's ``connectomics/utils/process.py`` rebuilt from the libraries it calls
(``skimage.measure.label``, ``skimage.morphology.dilation``, ``remove_small_objects``' rule: objects
of fewer than ``thres_small`` voxels become 0), and for affinities a graph over the whole volume
(``scipy.sparse.csgraph``); none of it shares code with :mod:`volumes.labels`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from volumes.labels.blockwise import decode_blockwise
from volumes.labels.decoders import Decoder, dilate
from volumes.labels.whole import decode_in_memory, sequential

skimage_measure = pytest.importorskip("skimage.measure")
skimage_morphology = pytest.importorskip("skimage.morphology")


def _cut(values: np.ndarray, t: float) -> float:
    return int(255 * t) if values.dtype == np.uint8 else t


def pytc_decode(pred: np.ndarray, d: Decoder) -> np.ndarray:
    """PyTC's decoder on the whole volume (its numbers, gaps kept)."""
    if d.name == "affinity_connected":
        segm = _affinity_oracle(pred, d.thresholds[0])
    else:
        fg = pred[0] > _cut(pred, d.thresholds[0])
        if d.name == "bc_connected":
            fg = fg * (pred[1] < _cut(pred, d.thresholds[1]))
        segm = skimage_measure.label(fg, connectivity={6: 1, 18: 2, 26: 3}[d.connectivity])
        if d.dilation is not None:
            segm = skimage_morphology.dilation(segm, np.ones(d.dilation))
    if d.remove_small_mode == "background":
        segm = _drop_small(segm, d.thres_small)
    if d.remove_small_mode == "background_2d":  # remove_small_objects slice by slice
        segm = np.stack([_drop_small(plane, d.thres_small) for plane in segm])
    if d.remove_small_mode == "neighbor_2d":  # merge_small_objects slice by slice
        segm = np.concatenate([_merge_small_oracle(segm[z : z + 1], d.thres_small) for z in range(len(segm))])
    return segm.astype(np.uint64)


def _drop_small(segm: np.ndarray, thres_small: int) -> np.ndarray:
    sizes = np.bincount(segm.ravel())
    small = sizes < thres_small
    small[0] = False
    return np.where(small[segm], 0, segm)


def _affinity_oracle(pred: np.ndarray, t: float) -> np.ndarray:
    shape = pred.shape[1:]
    n = int(np.prod(shape))
    index = np.arange(n).reshape(shape)
    a, b = [], []
    for axis in range(3):
        here = [slice(None)] * 3
        here[axis] = slice(1, None)
        prev = [slice(None)] * 3
        prev[axis] = slice(0, -1)
        edge = pred[axis][tuple(here)] > _cut(pred, t)
        a.append(index[tuple(here)][edge])
        b.append(index[tuple(prev)][edge])
    a_all, b_all = np.concatenate(a), np.concatenate(b)
    graph = coo_matrix((np.ones(a_all.size), (a_all, b_all)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    fg = np.zeros(n, bool)
    fg[a_all] = True
    fg[b_all] = True
    comps = comp[fg]
    ids, first = np.unique(comps, return_index=True)
    rank = np.zeros(comp.max() + 1, np.int64)
    rank[ids[np.argsort(first)]] = np.arange(1, ids.size + 1)
    out = np.zeros(n, np.int64)
    out[fg] = rank[comps]
    return out.reshape(shape)


@st.composite
def cases(draw: st.DrawFn) -> tuple[np.ndarray, Decoder, tuple[int, ...]]:
    name = draw(st.sampled_from(["binary_connected", "bc_connected", "affinity_connected"]))
    shape = tuple(draw(st.integers(2, 12)) for _ in range(3))
    block = tuple(draw(st.integers(1, s)) for s in shape)
    channels = {"binary_connected": 1, "bc_connected": 2, "affinity_connected": 3}[name]
    density = draw(st.floats(0.2, 0.8))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pred = rng.random((channels, *shape))
    pred = np.where(pred < density, 0.3 + 0.7 * rng.random(pred.shape), 0.3 * rng.random(pred.shape))
    if draw(st.booleans()):
        pred = (pred * 255).astype(np.uint8)
    small = draw(st.integers(0, 6))
    mode = draw(st.sampled_from(["background", "none"]))
    if name == "affinity_connected":
        decoder = Decoder(name, (0.5,), small, mode, 6)
    elif name == "binary_connected":
        decoder = Decoder(name, (0.5,), small, mode, draw(st.sampled_from([6, 18, 26])))
    else:
        struct = draw(st.tuples(*(st.sampled_from([1, 3, 5]) for _ in range(3))))
        decoder = Decoder(name, (0.5, 0.9), small, mode, draw(st.sampled_from([6, 18, 26])), struct)
    return pred, decoder, block


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_blockwise_equals_the_whole_volume_decoder(case: tuple[np.ndarray, Decoder, tuple[int, ...]]) -> None:
    pred, decoder, block = case
    expected = pytc_decode(pred, decoder)
    assert np.array_equal(decode_in_memory(pred, decoder), expected)
    assert np.array_equal(decode_blockwise(pred, decoder, block, "none"), expected)
    assert np.array_equal(decode_blockwise(pred, decoder, block, "sequential"), sequential(expected))


def _binary(mask: np.ndarray) -> np.ndarray:
    return mask[None].astype(np.float32)


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_a_snake_that_leaves_a_block_and_comes_back_is_one_object(connectivity: int) -> None:
    mask = np.zeros((4, 16, 16), bool)
    mask[1, 2, 1:14] = True  # out of block (0,0) into (0,1) ...
    mask[1, 2:12, 13] = True  # ... down into (1,1) ...
    mask[1, 11, 1:14] = True  # ... back into (1,0) ...
    mask[1, 5:12, 1] = True  # ... and up again, never closing inside one block
    mask[1, 5, 1:6] = True
    pred = _binary(mask)
    d = Decoder("binary_connected", (0.5,), 0, "none", connectivity)
    for block in [(4, 8, 8), (1, 3, 5), (2, 7, 2)]:
        got = decode_blockwise(pred, d, block, "sequential")
        assert np.array_equal(got, sequential(pytc_decode(pred, d)))
        assert set(np.unique(got)) == {0, 1}


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_objects_touching_only_at_a_block_edge_or_corner(connectivity: int) -> None:
    mask = np.zeros((8, 8, 8), bool)
    mask[3, 3, 3] = mask[4, 4, 4] = True  # corner of four... eight blocks of 4: 26 only
    mask[0, 3, 3] = mask[0, 4, 4] = True  # an edge between blocks: 18 and 26
    mask[7, 3, 0] = mask[7, 4, 0] = True  # a face: all
    pred = _binary(mask)
    d = Decoder("binary_connected", (0.5,), 0, "none", connectivity)
    got = decode_blockwise(pred, d, (4, 4, 4), "sequential")
    assert np.array_equal(got, sequential(pytc_decode(pred, d)))
    expected_objects = {6: 5, 18: 4, 26: 3}[connectivity]
    assert int(got.max()) == expected_objects


def test_the_size_filter_counts_whole_objects_not_a_blocks_piece() -> None:
    mask = np.zeros((2, 12, 12), bool)
    mask[0, 5, :] = True  # 12 voxels over 3 blocks of 4 along x: 4 in each
    mask[1, 0, 0:3] = True  # 3 voxels in one block
    pred = _binary(mask)
    d = Decoder("binary_connected", (0.5,), 5, "background", 6)
    got = decode_blockwise(pred, d, (2, 4, 4), "sequential")
    assert int(got.max()) == 1 and int((got == 1).sum()) == 12


def test_object_spanning_many_blocks() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((10, 30, 30)) > 0.35  # percolating: one object across every block
    pred = _binary(mask)
    d = Decoder("binary_connected", (0.5,), 3, "background", 26)
    assert np.array_equal(decode_blockwise(pred, d, (3, 4, 5), "none"), pytc_decode(pred, d))


def test_labels_are_uint32_until_the_numbers_need_uint64() -> None:
    from volumes.labels.merge import label_dtype

    assert label_dtype(2**32 - 1) == np.uint32 and label_dtype(2**32) == np.uint64


def test_the_merge_graph_holds_only_pieces_at_block_faces() -> None:
    """Many small objects inside blocks and a few across faces: the merge's graph has a node per
    piece that touches a piece of another block, none for the objects inside blocks, and the labels
    still equal the whole-volume decoder's."""
    from volumes.labels.blockwise import Grid, label_step, link_step, merge_step

    mask = np.zeros((8, 32, 32), bool)
    mask[2:4, 1:15:3, 1:15:3] = True  # 25 dots inside block (0, 0, 0)
    mask[2:4, 17:31:3, 17:31:3] = True  # 25 inside block (0, 1, 1)
    mask[5, 10:22, 5] = True  # crosses y = 16: 2 pieces
    mask[6, 5, 10:22] = True  # crosses x = 16: 2 pieces
    mask[7, 10:22, 10:22] = True  # a sheet over 4 blocks: 4 pieces
    pred = _binary(mask)
    decoder = Decoder("binary_connected", (0.5,), thres_small=0, connectivity=26)
    grid = Grid((8, 32, 32), (8, 16, 16))
    done = {
        i: label_step(decoder, grid, i, pred[(slice(None), *grid.box(i).slices())]) for i in grid.indices()
    }
    links_of = {i: link_step(decoder, grid, i, lambda j: done[j].faces) for i in grid.indices()}
    numbered = merge_step(grid, {i: d.pieces for i, d in done.items()}, links_of)
    assert numbered.objects.n == 53
    assert numbered.nodes == 8  # 2 + 2 + 4 face pieces; the 50 dots never enter the graph
    expected = sequential(decode_in_memory(pred, decoder))
    assert np.array_equal(decode_blockwise(pred, decoder, (8, 16, 16), "sequential"), expected)


def _merge_small_oracle(segm: np.ndarray, thres_small: int) -> np.ndarray:
    """PyTC's ``remove_small_mode: neighbor`` as its docs and code describe it, written here from
    that description: in id order (the background too), an id with fewer than ``thres_small``
    voxels (counted once, first) takes the most frequent non-zero label in its in-plane ring
    (8-neighbours in the same z slice; ties: the lowest label), else 0."""
    segm = segm.copy()
    ids, counts = np.unique(segm, return_counts=True)
    ring_shape = np.ones((1, 3, 3), bool)
    for idx, count in zip(ids, counts, strict=True):
        if count >= thres_small:
            continue
        obj = segm == idx
        ring = ndimage.binary_dilation(obj, structure=ring_shape) & ~obj
        around = segm[ring]
        around = around[around != 0]
        if around.size:
            values, times = np.unique(around, return_counts=True)
            segm[obj] = values[np.argmax(times)]
        else:
            segm[obj] = 0
    return segm


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    connectivity=st.sampled_from([18, 26]),
    thres_small=st.integers(1, 12),
    block=st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)),
)
def test_neighbor_mode_equals_pytc_merge_small_objects(
    seed: int, connectivity: int, thres_small: int, block: tuple[int, int, int]
) -> None:
    """Where ``neighbor`` is accepted (components at 18/26, no dilation) the blockwise labels equal
    PyTC's merge of small objects on the whole volume, or the run refuses a background smaller
    than ``thres_small`` (which PyTC would merge into an object)."""
    from volumes.labels.decoders import SmallBackgroundError

    rng = np.random.default_rng(seed)
    mask = rng.random((5, 9, 9)) < rng.uniform(0.1, 0.97)
    decoder = Decoder("binary_connected", (0.5,), thres_small, "neighbor", connectivity)  # type: ignore[arg-type]
    labels = skimage_measure.label(mask, connectivity=3 if connectivity == 26 else 2)
    background = int((labels == 0).sum())
    if 0 < background < thres_small:
        with pytest.raises(SmallBackgroundError, match="background"):
            decode_blockwise(_binary(mask), decoder, block, "none")
        return
    expected = sequential(_merge_small_oracle(labels, thres_small).astype(np.uint64))
    assert np.array_equal(decode_blockwise(_binary(mask), decoder, block, "sequential"), expected)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    name=st.sampled_from(["binary_connected", "affinity_connected", "neighbor_2d"]),
    connectivity=st.sampled_from([6, 18, 26]),
    thres_small=st.integers(1, 8),
    block=st.tuples(st.integers(1, 5), st.integers(1, 7), st.integers(1, 7)),
)
def test_per_slice_size_filters_equal_pytc_slice_by_slice(
    seed: int, name: str, connectivity: int, thres_small: int, block: tuple[int, int, int]
) -> None:
    """``background_2d`` (and ``neighbor_2d`` where it is taken: 18/26, no dilation) counts an
    object's voxels per z slice, summed over the blocks of the slice: equal to PyTC's filters run
    slice by slice on the whole volume, with PyTC's numbers and sequential ones; or, for
    ``neighbor_2d``, a slice whose background is under ``thres_small`` is refused."""
    from volumes.labels.decoders import SmallBackgroundError

    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 7)), int(rng.integers(1, 11)), int(rng.integers(1, 11)))
    mode = "background_2d"
    if name == "neighbor_2d":
        name, mode, connectivity = "binary_connected", "neighbor_2d", max(connectivity, 18)
    if name == "affinity_connected":
        pred, connectivity = rng.random((3, *shape)).astype(np.float32), 6
    else:
        pred = _binary(rng.random(shape) < rng.uniform(0.1, 0.95))
    decoder = Decoder(name, (0.5,), thres_small, mode, connectivity)  # type: ignore[arg-type]
    segm = pytc_decode(pred, Decoder(name, (0.5,), thres_small, "none", connectivity))  # type: ignore[arg-type]
    planes = [np.bincount(p.ravel()) for p in segm]
    if mode == "neighbor_2d" and any(len(c) > 1 and 0 < c[0] < thres_small for c in planes):
        with pytest.raises(SmallBackgroundError, match="background"):
            decode_blockwise(pred, decoder, block, "none")
        return
    expected = pytc_decode(pred, decoder)
    assert np.array_equal(decode_blockwise(pred, decoder, block, "none"), expected)
    assert np.array_equal(decode_blockwise(pred, decoder, block, "sequential"), sequential(expected))
    assert np.array_equal(decode_in_memory(pred, decoder), expected)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 7), st.integers(1, 9), st.integers(1, 9)),
    st.tuples(*(st.sampled_from([1, 3, 5, 7, 11]) for _ in range(3))),
    st.sampled_from([np.uint32, np.uint64]),
)
def test_the_dilation_is_scikit_images(
    seed: int, shape: tuple[int, int, int], size: tuple[int, int, int], dtype: type
) -> None:
    """The box dilation (numpy maxima of shifted views) equals ``skimage.morphology.dilation`` with
    ``np.ones(size)``, windows wider than the array and arrays one voxel thick included."""
    rng = np.random.default_rng(seed)
    labels = (rng.integers(0, 40, shape) * (rng.random(shape) < 0.3)).astype(dtype)
    got = dilate(labels, size)
    np.testing.assert_array_equal(got, skimage_morphology.dilation(labels, np.ones(size)))
    assert got.dtype == labels.dtype


def test_touching_pairs_are_numpys_unique_rows() -> None:
    """The link step's distinct pairs of touching labels (one int64 key per pair, through a table of
    the keys seen or a sort of them; rows of the stacked pairs where the keys would overflow) are
    ``np.unique(..., axis=0)``'s, in its order."""
    from volumes.labels.blockcc import _unique_pairs

    rng = np.random.default_rng(2)
    for size in (1, 7, 500):
        for top in (1, 3, 40, 5000, 2**40):  # table, table, table, sorted keys, rows
            b, c = rng.integers(0, top, size), rng.integers(0, top, size)
            rows = np.unique(np.stack([b, c], axis=1), axis=0)
            found = _unique_pairs(b, c)
            assert all(f.dtype == np.int64 for f in found)
            np.testing.assert_array_equal(np.stack(found, axis=1), rows)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.tuples(st.integers(1, 9), st.integers(1, 12), st.integers(1, 12)),
    st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    st.tuples(*(st.sampled_from([1, 3, 5, 7]) for _ in range(3))),
    st.sampled_from([3, 300, 70000, 2**33]),
)
def test_a_block_dilated_from_its_neighbours_strips_is_the_volumes_dilation(
    seed: int, shape: tuple[int, int, int], block: tuple[int, int, int], size: tuple[int, int, int], top: int
) -> None:
    """bc_connected's dilate step (:func:`volumes.labels.blockwise.dilate_block`): each block from
    its local labels, their global numbers and only the strips its neighbours keep (blocks thinner
    than the dilation's reach included: the box then reaches two or more blocks away), in ranks of
    the narrowest type, named back: the dilation of the whole numbered volume, and the block's
    parts of objects those of that dilation."""
    from volumes.labels.blockwise import Grid, block_parts, dilate_block, strips

    rng = np.random.default_rng(seed)
    decoder = Decoder("bc_connected", (0.5, 0.9), 0, "none", 26, size)
    grid = Grid(shape, block)
    local, luts, numbered = {}, {}, np.zeros(shape, np.int64)
    for index in grid.indices():
        box = grid.box(index)
        n = int(rng.integers(0, min(5, top) + 1))
        labels = (
            (rng.integers(1, n + 1, box.shape) * (rng.random(box.shape) < 0.4)).astype(np.uint32)
            if n
            else np.zeros(box.shape, np.uint32)
        )
        local[index] = labels
        luts[index] = np.concatenate([[0], rng.choice(top, size=n, replace=False) + 1]).astype(np.int64)
        numbered[box.slices()] = luts[index][labels]
    expected = dilate(numbered, size)
    kept = {i: strips(local[i], decoder.halo) for i in grid.indices()}
    for index in grid.indices():
        done = dilate_block(decoder, grid, index, local[index], kept.__getitem__, luts.__getitem__)
        box = grid.box(index)
        assert done.core.dtype == (np.uint8 if done.names.shape[0] <= 256 else np.uint16)
        np.testing.assert_array_equal(done.names[done.core], expected[box.slices()])
        want = block_parts(grid, box, np.ascontiguousarray(expected[box.slices()]))
        for got_col, want_col in zip(done.part, want, strict=True):
            np.testing.assert_array_equal(got_col, want_col)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_voxel_joined_only_to_the_next_block_is_foreground_and_one_that_is_not_is_not(axis: int) -> None:
    """A block reads only its own affinities: a voxel of its last layer with no edge inside it is
    labelled a piece that the merge keeps only if the next block's first layer joins it (a link
    names it). Here one such voxel is joined across the face and its neighbour on the face is not:
    the first is part of the next block's object, the second background, as on the whole volume."""
    shape = [4, 4, 4]
    shape[axis] = 4
    aff = np.zeros((3, *shape), np.float32)
    first = [1, 1, 1]
    first[axis] = 2  # the next block's first layer (blocks of 2 along the axis)
    aff[(axis, *first)] = 1.0  # joins (…, 2, …) to (…, 1, …) across the face
    beside = list(first)
    beside[(axis + 1) % 3] = 2
    after = list(beside)
    after[axis] = 3
    aff[(axis, *after)] = 1.0  # joins the voxel beside it in the next block to one further on only
    decoder = Decoder("affinity_connected", (0.5,), 0, "none", 6)
    block = tuple(2 if a == axis else 4 for a in range(3))
    expected = pytc_decode(aff, decoder)
    assert int(expected.max()) == 2 and int((expected > 0).sum()) == 4
    for relabel in ("none", "sequential"):
        got = decode_blockwise(aff, decoder, block, relabel)
        np.testing.assert_array_equal(got, expected if relabel == "none" else sequential(expected))


def _specks(name: str, shape: tuple[int, ...], density: float, seed: int) -> np.ndarray:
    """Sparse specks (a few voxels each, most of them whole inside one block) and a plane at z = 1
    that crosses every block face along y and x: binary, or affinities (the plane's in-plane edges;
    a speck is an edge and its two voxels)."""
    rng = np.random.default_rng(seed)
    channels = 3 if name == "affinity_connected" else 1
    pred = (rng.random((channels, *shape)) < density).astype(np.float32)
    if name == "affinity_connected":
        pred[1:, 1] = 1.0
    else:
        pred[0, 1] = 1.0
    return pred


@pytest.mark.parametrize(
    ("name", "connectivity"),
    [("binary_connected", 6), ("binary_connected", 18), ("binary_connected", 26), ("affinity_connected", 6)],
)
@pytest.mark.parametrize("block", [(4, 8, 8), (5, 7, 6), (3, 32, 5)])
def test_small_whole_objects_dropped_in_their_block_leave_the_whole_volume_labels(
    name: str, connectivity: int, block: tuple[int, ...]
) -> None:
    """With ``relabel: sequential`` and ``remove_small_mode: background`` the label step drops a
    block's small objects that touch none of its shared faces (the size filter would remove them,
    whole, and no number counts them): the labels still equal the whole volume's, and fewer pieces
    reach the merge."""
    from volumes.labels.blockwise import Grid, label_step, prunes

    shape = (12, 32, 32)
    pred = _specks(name, shape, 0.06, 7)
    d = Decoder(name, (0.5,), 4, "background", connectivity)
    assert prunes(d, "sequential") and not prunes(d, "none")
    expected = pytc_decode(pred, d)
    np.testing.assert_array_equal(decode_blockwise(pred, d, block, "sequential"), sequential(expected))
    np.testing.assert_array_equal(decode_blockwise(pred, d, block, "none"), expected)
    grid = Grid(shape, block)
    kept, every = 0, 0
    for index in grid.indices():
        part = pred[(slice(None), *grid.box(index).slices())]
        full = label_step(d, grid, index, part)
        dropped = label_step(d, grid, index, part, pruned=True)
        every, kept = every + full.pieces.n, kept + dropped.pieces.n
        # the kept pieces are the full step's in the same (raster) order, renumbered 1..m
        assert np.array_equal(np.unique(dropped.local), np.arange(dropped.pieces.n + 1))
        assert set(dropped.pieces.first.tolist()) <= set(full.pieces.first.tolist())
        assert np.all(np.diff(dropped.pieces.first) > 0)
    assert kept < every  # specks whole inside a block never reach the merge


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(["binary_connected", "affinity_connected"]),
    shape=st.tuples(st.integers(3, 14), st.integers(3, 20), st.integers(3, 20)),
    data=st.data(),
)
def test_dropping_small_whole_objects_in_blocks_equals_the_whole_volume(
    name: str, shape: tuple[int, int, int], data: st.DataObject
) -> None:
    block = tuple(data.draw(st.integers(1, s)) for s in shape)
    connectivity = 6 if name == "affinity_connected" else data.draw(st.sampled_from([6, 18, 26]))
    d = Decoder(name, (0.5,), data.draw(st.integers(1, 9)), "background", connectivity)
    pred = _specks(name, shape, data.draw(st.floats(0.02, 0.3)), data.draw(st.integers(0, 2**31 - 1)))
    if data.draw(st.booleans()):
        pred = (pred * 255).astype(np.uint8)
    expected = sequential(pytc_decode(pred, d))
    np.testing.assert_array_equal(decode_blockwise(pred, d, block, "sequential"), expected)
