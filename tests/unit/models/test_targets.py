"""Targets per head from a label crop: binary, boundary (contours), affinity (z, y, x), semantic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.errors import ModelConfigError
from models.targets import (
    affinity_target,
    binary_target,
    boundary_target,
    dilate_label,
    make_targets,
    semantic_target,
    target_margin,
    widen_border,
)
from models.training_config import HeadSpec


def _two_cells() -> np.ndarray:
    """One section: background | cell 1 | cell 2, each 3 voxels wide along x."""
    label = np.zeros((1, 3, 9), dtype=np.uint32)
    label[:, :, 3:6] = 1
    label[:, :, 6:9] = 2
    return label


def test_binary_is_foreground() -> None:
    label = _two_cells()
    np.testing.assert_array_equal(binary_target(label)[0], (label > 0).astype(np.float32))


def test_boundary_marks_both_sides_of_every_border_in_plane() -> None:
    contour = boundary_target(_two_cells())[0, 0]
    # x = 2 | 3 (background to cell 1) and 5 | 6 (cell 1 to cell 2): both sides are contour.
    expected_columns = [0, 0, 1, 1, 0, 1, 1, 0, 0]
    np.testing.assert_array_equal(contour, np.tile(expected_columns, (3, 1)))


def test_boundary_is_in_plane_only() -> None:
    label = np.zeros((2, 3, 3), dtype=np.uint32)
    label[1] = 5  # differs from the section below, but each section is uniform
    assert not boundary_target(label).any()


def test_affinity_channels_follow_z_y_x() -> None:
    label = np.array([[[1, 1], [1, 2]], [[1, 0], [1, 2]]], dtype=np.uint32)  # (z=2, y=2, x=2)
    aff = affinity_target(label)
    assert aff.shape == (3, 2, 2, 2)
    # z: voxel equals the one in the section before and is not background
    np.testing.assert_array_equal(aff[0, 1], [[1, 0], [1, 1]])
    np.testing.assert_array_equal(aff[0, 0], [[0, 0], [0, 0]])  # no predecessor
    # y: compares with the row before
    np.testing.assert_array_equal(aff[1, :, 1], [[1, 0], [1, 0]])
    # x: compares with the column before
    np.testing.assert_array_equal(aff[2, :, :, 1], [[1, 0], [0, 0]])
    assert not aff[:, :, :, :].astype(bool)[:, label == 0].any()


def test_semantic_one_hot_and_range() -> None:
    label = np.array([[[0, 1, 2]]], dtype=np.uint8)
    onehot = semantic_target(label, 3)
    np.testing.assert_array_equal(onehot[:, 0, 0], np.eye(3))
    with pytest.raises(ModelConfigError, match=r"0\.\.1"):
        semantic_target(label, 2)


def test_make_targets_stacks_heads_and_cuts_the_margin() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 4, size=(6, 10, 12)).astype(np.uint32)
    heads = (HeadSpec("binary"), HeadSpec("boundary"), HeadSpec("affinity"), HeadSpec("semantic", classes=4))
    assert target_margin(heads) == 1
    targets = make_targets(label, heads, margin=1)
    assert targets.shape == (1 + 1 + 3 + 4, 4, 8, 10) and targets.dtype == np.float32
    inner = (slice(1, -1),) * 3
    np.testing.assert_array_equal(targets[1], boundary_target(label)[0][inner])
    np.testing.assert_array_equal(targets[2:5], affinity_target(label)[(slice(None), *inner)])


def test_make_targets_needs_a_margin_for_neighbour_targets() -> None:
    with pytest.raises(ModelConfigError, match="margin"):
        make_targets(np.zeros((3, 3, 3), np.uint8), (HeadSpec("affinity"),), margin=0)
    assert target_margin((HeadSpec("binary"),)) == 0


def test_head_channels_and_activation() -> None:
    assert [HeadSpec(k).channels for k in ("binary", "boundary", "affinity")] == [1, 1, 3]
    assert HeadSpec("semantic", classes=5).channels == 5
    assert HeadSpec("semantic", classes=5).activation == "softmax"
    assert HeadSpec("affinity").activation == "sigmoid"


# --- PyTC's label erosion (seg_widen_border) and dilation ------------------------------------------

PYTC_LABELS = np.load(Path(__file__).resolve().parents[2] / "data" / "pytc_labels" / "golden.npz")


@pytest.mark.parametrize("case", [0, 1, 2])
@pytest.mark.parametrize("width", [1, 2])
def test_erosion_and_dilation_equal_pytcs(case: int, width: int) -> None:
    """Upstream's seg_widen_border and dilate_label on small labels, made once
    (tests/data/pytc_labels/make_golden.py), equal ours voxel for voxel; both change the label."""
    label = PYTC_LABELS[f"labels/{case}"]
    eroded, dilated = widen_border(label, width), dilate_label(label, width)
    np.testing.assert_array_equal(eroded, PYTC_LABELS[f"erosion/{case}/{width}"])
    np.testing.assert_array_equal(dilated, PYTC_LABELS[f"dilation/{case}/{width}"])
    assert eroded.dtype == dilated.dtype == label.dtype
    assert (eroded != label).any() and (dilated != label).any()
    # per section: a 2D slice is transformed as the 3D label's section
    np.testing.assert_array_equal(widen_border(label[0], width), eroded[0])
    np.testing.assert_array_equal(dilate_label(label[0], width), dilated[0])


def test_erosion_marks_voxels_between_two_ids_as_background() -> None:
    label = _two_cells()
    eroded = widen_border(label, 1)
    # the cells touch between x 5 and 6: those columns become background; background stays
    np.testing.assert_array_equal(eroded[0, 1], [0, 0, 0, 1, 1, 0, 0, 2, 2])
    assert widen_border(label, 0) is label and dilate_label(label, 0) is label
    np.testing.assert_array_equal(widen_border(label.astype(bool), 1), label.astype(bool).astype(np.uint8))


def test_a_heads_targets_come_from_its_transformed_label() -> None:
    label = np.pad(_two_cells(), ((1, 1), (2, 2), (0, 0)), mode="edge")
    plain, eroded = HeadSpec("binary"), HeadSpec("binary", label_erosion=1)
    assert target_margin([eroded]) == 1 and target_margin([HeadSpec("boundary", label_dilation=2)]) == 3
    targets = make_targets(label, [plain, eroded], margin=1)
    np.testing.assert_array_equal(targets[0], binary_target(label)[0][1:-1, 1:-1, 1:-1])
    np.testing.assert_array_equal(targets[1], binary_target(widen_border(label, 1))[0][1:-1, 1:-1, 1:-1])
    with pytest.raises(ModelConfigError, match="margin of 1"):
        make_targets(label, [eroded], margin=0)
