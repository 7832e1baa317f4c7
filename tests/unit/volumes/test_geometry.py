"""Property tests of the window grid and the block plan."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volumes.blending import blend_weights, bump_weights, gaussian_weights, monai_gaussian_weights
from volumes.blocks import plan_blocks
from volumes.box import Box
from volumes.errors import GeometryError
from volumes.windows import WindowGrid, stride_from_overlap, window_starts


@st.composite
def axis_case(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    """(roi length, patch, stride, pad, chunk, block) for one axis."""
    patch = draw(st.integers(1, 12))
    stride = draw(st.integers(1, patch))
    pad = draw(st.integers(0, 4))
    length = draw(st.integers(1, 24))
    chunk = draw(st.integers(2, 8))
    block = chunk * draw(st.integers(1, 4))
    return length, patch, stride, pad, chunk, block


@st.composite
def plans(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    axes = [draw(axis_case()) for _ in range(3)]
    length, patch, stride, pad, chunk, block = (tuple(a[i] for a in axes) for i in range(6))
    grid = WindowGrid.over_roi(length, patch, stride, pad)
    return plan_blocks(length, chunk, block, grid)


@given(st.integers(1, 200), st.integers(1, 50), st.data())
def test_window_starts_follow_pytc_rule(length: int, patch: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, patch))
    starts = window_starts(length, patch, stride)
    if length <= patch:
        assert starts == (-((patch - length) // 2),)
        return
    assert len(starts) == 1 + math.ceil((length - patch) / stride)
    assert starts[0] == 0 and starts[-1] == length - patch
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))
    assert list(starts) == sorted(starts)


def test_stride_larger_than_patch_is_refused() -> None:
    with pytest.raises(GeometryError, match="stride 9 is larger than the patch 8"):
        window_starts(100, 8, 9)


def test_stride_from_overlap_matches_monai() -> None:
    assert stride_from_overlap((17, 129, 129), 0.5) == (8, 64, 64)
    assert stride_from_overlap((1, 2, 3), 0.9) == (1, 1, 1)


@settings(max_examples=60, deadline=None)
@given(plans())
def test_windows_cover_the_padded_roi(plan) -> None:  # type: ignore[no-untyped-def]
    for axis, layout in enumerate(plan.axes):
        covered = np.zeros(layout.length + 2 * 60, dtype=bool)
        for s in plan.grid.starts[axis]:
            covered[s + 60 : s + 60 + layout.patch] = True
        assert covered[60 : 60 + layout.length].all(), f"axis {axis} has a gap"


@settings(max_examples=60, deadline=None)
@given(plans())
def test_write_boxes_partition_the_roi_and_align_to_chunks(plan) -> None:  # type: ignore[no-untyped-def]
    count = np.zeros(plan.roi_shape, dtype=np.int32)
    for block in plan.blocks():
        box = plan.write_box(block)
        count[box.slices()] += 1
        for o, e, c, n in zip(box.offset, box.end, plan.chunks, plan.roi_shape, strict=True):
            assert o % c == 0 and (e % c == 0 or e == n)
    assert (count == 1).all()


@settings(max_examples=60, deadline=None)
@given(plans())
def test_every_window_is_owned_by_exactly_one_block(plan) -> None:  # type: ignore[no-untyped-def]
    owned = [w for block in plan.blocks() for w in plan.windows(block)]
    assert sorted(owned) == sorted(plan.grid.indices())


@settings(max_examples=60, deadline=None)
@given(plans())
def test_blocks_read_exactly_what_their_windows_need(plan) -> None:  # type: ignore[no-untyped-def]
    for block in plan.blocks():
        boxes = [plan.grid.box(w) for w in plan.windows(block)]
        read = plan.read_box(block)
        if not boxes:
            assert read.is_empty()
            continue
        hull = boxes[0]
        for b in boxes[1:]:
            hull = hull.union_hull(b)
        assert read == hull


@settings(max_examples=40, deadline=None)
@given(plans())
def test_contributors_are_the_blocks_whose_windows_touch_the_chunk(plan) -> None:  # type: ignore[no-untyped-def]
    roi = Box.of_shape(plan.roi_shape)
    chunk_counts = [a.n_chunks for a in plan.axes]
    # Each chunk's bounds along each axis, from the plan's own chunk boxes.
    spans = [
        [plan.chunk_box(tuple(i if d == axis else 0 for d in range(3))) for i in range(n)]
        for axis, n in enumerate(chunk_counts)
    ]
    touched: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    for block in plan.blocks():  # every window's box once (not once per chunk: the plans are random)
        for w in plan.windows(block):
            box = plan.grid.box(w).intersect(roi)
            if box.is_empty():
                continue
            hits = [
                [i for i, c in enumerate(spans[a]) if c.offset[a] < box.end[a] and box.offset[a] < c.end[a]]
                for a in range(3)
            ]
            for chunk in itertools.product(*hits):
                touched.setdefault(chunk, set()).add(block)
    for chunk in itertools.product(*map(range, chunk_counts)):
        expected = touched.get(chunk, set())
        assert set(plan.contributors(chunk)) == expected
        assert plan.is_interior(chunk) == (expected == {plan.chunk_owner(chunk)})


@settings(max_examples=40, deadline=None)
@given(plans())
def test_interior_and_border_chunks_split_each_block(plan) -> None:  # type: ignore[no-untyped-def]
    for block in plan.blocks():
        interior = plan.interior_box(block)
        border = plan.border_chunks(block)
        for chunk in plan.chunks_of(block):
            inside = interior.contains(plan.chunk_box(chunk)) and not interior.is_empty()
            assert inside != (chunk in border)
        for dep in plan.pass2_dependencies(block):
            assert any(dep in plan.contributors(c) for c in border)


@pytest.mark.parametrize("mode", ["gaussian", "monai_gaussian", "bump", "constant"])
def test_blend_weights_are_positive_and_symmetric(mode: str) -> None:
    w = blend_weights((5, 9, 9), mode)  # type: ignore[arg-type]
    assert w.dtype == np.float32 and (w > 0).all()
    np.testing.assert_array_equal(w, w[::-1, ::-1, ::-1])
    assert w.max() == pytest.approx(w[2, 4, 4])


def test_monai_gaussian_weights_equal_monais_importance_map() -> None:
    from monai.data.utils import compute_importance_map

    for patch in [(17, 129, 129), (4, 16, 20), (1, 5, 5)]:
        ours = blend_weights(patch, "monai_gaussian")
        np.testing.assert_array_equal(ours, monai_gaussian_weights(patch))
        theirs = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125).numpy()
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=0)


@pytest.mark.parametrize("patch", [(17, 129, 129), (4, 16, 20), (1, 5, 5), (8, 9, 1)])
def test_gaussian_weights_are_pytcs_blend_gaussian(patch: tuple[int, int, int]) -> None:
    """PyTC v1's formula written out (data_blending.py): linspace(-1, 1, n) per axis in float32,
    d = sqrt(z^2 + y^2 + x^2), w = 1e-4 + exp(-d^2 / (2 * 0.2^2)); equal to the last bit."""
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in patch], indexing="ij")
    d = np.sqrt(zz * zz + yy * yy + xx * xx)
    expected = (1e-4 + np.exp(-((d - 0.0) ** 2 / (2.0 * 0.2**2)))).astype(np.float32)
    ours = blend_weights(patch, "gaussian")
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, gaussian_weights(patch))
    np.testing.assert_array_equal(ours, expected)


def test_pytc_gaussian_has_sigma_a_tenth_of_the_span_and_is_not_monais() -> None:
    """Per axis, sigma is 0.1 * (n - 1) voxels: one sigma from the centre the weight is e^-0.5 of
    the peak (plus the 1e-4 floor); MONAI's map (sigma 0.125 * n, floor 1e-3) differs."""
    n = 21
    centre, sigma = n // 2, 0.1 * (n - 1)
    line = gaussian_weights((n, n, n))[centre, centre] - np.float32(1e-4)
    line = line / line.max()
    assert line[centre + int(sigma)] == pytest.approx(np.exp(-0.5), rel=1e-5)
    assert gaussian_weights((5, 9, 9)).min() >= np.float32(1e-4)  # the corners: the floor alone
    assert not np.allclose(gaussian_weights((17, 129, 129)), monai_gaussian_weights((17, 129, 129)))


def test_bump_weights_follow_pytc_formula() -> None:
    w = bump_weights((3, 3, 3))
    x = np.array([0.25, 0.5, 0.75])
    d = -((x * (1 - x)) ** -1.5)
    exponent = d[:, None, None] + d[None, :, None] + d[None, None, :]
    np.testing.assert_allclose(w, 1e-4 + np.exp(exponent - exponent.max()), rtol=1e-6)


def test_block_shape_must_be_a_multiple_of_chunks() -> None:
    grid = WindowGrid.over_roi((10, 10, 10), (4, 4, 4), (2, 2, 2), (0, 0, 0))
    with pytest.raises(GeometryError, match="not a multiple of chunks"):
        plan_blocks((10, 10, 10), (4, 4, 4), (6, 8, 8), grid)


def test_default_block_shape_is_a_chunk_multiple_within_budget() -> None:
    grid = WindowGrid.over_roi((200, 2000, 2000), (17, 129, 129), (8, 64, 64), (0, 0, 0))
    plan = plan_blocks((200, 2000, 2000), (32, 256, 256), None, grid)
    assert all(b % c == 0 for b, c in zip(plan.block_shape, plan.chunks, strict=True))
    assert math.prod(plan.block_shape) <= 64 * 512 * 512
