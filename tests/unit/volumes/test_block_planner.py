"""The planner's block: one chunk at a time in a reference, all remaining chunks of the last axis
that can grow at once in the planner; both must choose the same block."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from volumes.blocks import DEFAULT_BLOCK_VOXELS, default_block_shape


def stepwise(roi: list[int], chunks: list[int], patch: list[int], target: int) -> tuple[int, ...]:
    """The rule, one chunk per axis per pass, smallest axis first, while the block fits."""
    shape = [c * max(1, -(-2 * p // c)) for c, p in zip(chunks, patch, strict=True)]
    shape = [min(s, c * -(-n // c)) for s, c, n in zip(shape, chunks, roi, strict=True)]
    grew = True
    while grew:
        grew = False
        for axis in sorted(range(3), key=lambda a: shape[a]):
            bigger, limit = shape[axis] + chunks[axis], chunks[axis] * -(-roi[axis] // chunks[axis])
            if bigger <= limit and math.prod(shape) // shape[axis] * bigger <= target:
                shape[axis], grew = bigger, True
    return tuple(shape)


axes = st.lists(st.integers(1, 3000), min_size=3, max_size=3)


@settings(max_examples=300)
@given(
    roi=axes,
    chunks=st.lists(st.sampled_from([1, 2, 3, 8, 16, 64]), min_size=3, max_size=3),
    patch=st.lists(st.integers(1, 130), min_size=3, max_size=3),
    target=st.sampled_from([1, 1000, 4096, 10**5, 10**6, DEFAULT_BLOCK_VOXELS]),
)
def test_the_planner_picks_the_block_of_the_stepwise_rule(
    roi: list[int], chunks: list[int], patch: list[int], target: int
) -> None:
    assert default_block_shape(roi, chunks, patch, target) == stepwise(roi, chunks, patch, target)


def test_a_thin_region_in_chunks_of_one_voxel_is_planned_without_a_pass_per_chunk() -> None:
    # 131072 passes of the stepwise rule; the planner takes the last axis's chunks at once
    assert default_block_shape((131_072, 1, 1), (1, 1, 1), (1, 1, 1), DEFAULT_BLOCK_VOXELS) == (131_072, 1, 1)
    assert default_block_shape((10**9, 1, 1), (1, 1, 1), (1, 1, 1), DEFAULT_BLOCK_VOXELS) == (
        DEFAULT_BLOCK_VOXELS,
        1,
        1,
    )
