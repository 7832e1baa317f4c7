"""Pyramid levels: z halved only once y and x reached its voxel size, down to one chunk; means and
label rules against plain numpy on the whole array, and on blocks whose start is a multiple of the
factors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volumes.pyramid import downsample_labels, downsample_mean, level_shape, pyramid_factors


def test_anisotropic_em_halves_z_once_xy_reached_its_size() -> None:
    assert pyramid_factors((64, 512, 512), (32, 256, 256), (30, 8, 8)) == (
        (1, 1, 1),
        (1, 2, 2),
        (1, 4, 4),
        (2, 8, 8),
    )
    assert pyramid_factors((256, 4096, 4096), (32, 256, 256), (40, 4, 4))[4:6] == ((1, 16, 16), (2, 32, 32))


def test_isotropic_halves_every_axis_and_stops_at_one_chunk() -> None:
    assert pyramid_factors((64, 64, 64), (16, 16, 16), (8, 8, 8)) == ((1, 1, 1), (2, 2, 2), (4, 4, 4))
    assert pyramid_factors((8, 8, 8), (8, 8, 8), None) == ((1, 1, 1),)


def test_an_axis_of_one_voxel_is_never_halved() -> None:
    levels = pyramid_factors((100, 1, 1), (10, 1, 1), (8, 8, 8))
    assert all(f[1:] == (1, 1) for f in levels) and level_shape((100, 1, 1), levels[-1])[0] <= 10


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 300) for _ in range(3))),
    chunks=st.tuples(*(st.integers(1, 64) for _ in range(3))),
    voxel=st.tuples(*(st.sampled_from([4.0, 8.0, 30.0, 50.0]) for _ in range(3))),
)
def test_levels_end_in_one_chunk_and_factors_only_double(
    shape: tuple[int, int, int], chunks: tuple[int, int, int], voxel: tuple[float, float, float]
) -> None:
    levels = pyramid_factors(shape, chunks, voxel)
    last = level_shape(shape, levels[-1])
    assert all(s <= c for s, c in zip(last, chunks, strict=True))
    for fine, coarse in itertools.pairwise(levels):
        assert all(c in (f, 2 * f) for f, c in zip(fine, coarse, strict=True)) and coarse != fine


def reference_mean(data: np.ndarray, factors: tuple[int, ...]) -> np.ndarray:
    """Each output voxel the numpy mean of the source voxels under it (edges cut)."""
    out_shape = level_shape(data.shape, factors)
    out = np.zeros(out_shape)
    lead = data.ndim - 3
    for index in np.ndindex(*out_shape[lead:]):
        window = tuple(slice(i * f, (i + 1) * f) for i, f in zip(index, factors, strict=True))
        out[(..., *index)] = data[(..., *window)].mean(axis=(-3, -2, -1))
    return out


def test_mean_equals_numpy_over_each_window_edges_included() -> None:
    data = np.random.default_rng(0).random((2, 5, 7, 9)).astype(np.float32)
    got = downsample_mean(data, (2, 2, 2), np.float32)
    np.testing.assert_allclose(got, reference_mean(data, (2, 2, 2)), rtol=1e-6)
    assert got.dtype == np.float32 and got.shape == (2, 3, 4, 5)


def test_mean_of_uint8_is_rounded_and_stays_uint8() -> None:
    data = np.array([[[10, 11], [200, 255]]], np.uint8)
    got = downsample_mean(data, (1, 2, 2), np.uint8)
    assert got.dtype == np.uint8 and got.tolist() == [[[np.rint((10 + 11 + 200 + 255) / 4)]]]


def test_blocks_aligned_to_the_factors_give_the_values_of_the_whole() -> None:
    data = np.random.default_rng(1).random((9, 13, 10))
    whole = downsample_mean(data, (1, 2, 2), np.float64)
    left, right = (
        downsample_mean(data[:, :8], (1, 2, 2), np.float64),
        downsample_mean(data[:, 8:], (1, 2, 2), np.float64),
    )
    np.testing.assert_array_equal(np.concatenate([left, right], axis=1), whole)


def test_mode_keeps_the_most_frequent_id_ties_to_the_smallest() -> None:
    labels = np.zeros((2, 2, 4), np.uint32)
    labels[..., :2] = [[[5, 5], [5, 3]], [[3, 3], [7, 9]]]  # 5 x3, 3 x3: a tie -> 3
    labels[..., 2:] = [[[0, 4], [4, 4]], [[4, 0], [0, 1]]]  # 4 x4, 0 x3 -> 4
    assert downsample_labels(labels, (2, 2, 2)).tolist() == [[[3, 4]]]
    edge = np.array([[[1, 2, 2]]], np.uint64)  # the last window holds one voxel: it alone votes
    assert downsample_labels(edge, (1, 1, 2)).tolist() == [[[1, 2]]]


def test_labels_never_mix_ids_and_strided_takes_the_first_voxel() -> None:
    labels = np.random.default_rng(2).integers(0, 50, (6, 10, 11)).astype(np.uint64) * 10**12
    for rule in ("mode", "strided"):
        got = downsample_labels(labels, (2, 2, 2), rule)  # type: ignore[arg-type]
        assert got.dtype == labels.dtype and got.shape == (3, 5, 6)
        assert set(np.unique(got)) <= set(np.unique(labels))
    np.testing.assert_array_equal(downsample_labels(labels, (2, 2, 2), "strided"), labels[::2, ::2, ::2])


def test_an_unknown_label_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="mode"):
        downsample_labels(np.zeros((2, 2, 2), np.uint8), (2, 2, 2), "mean")  # type: ignore[arg-type]
