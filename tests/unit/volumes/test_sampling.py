"""Random training crops from volumes: only crop boxes are read; valid-mask and foreground rules;
augmentations keep image, label and mask aligned."""

from __future__ import annotations

import numpy as np
import pytest

from volumes.augment import (
    NO_AUGMENT,
    AugmentPlan,
    AugmentSpec,
    apply_geometry,
    apply_intensity,
    plan_augment,
)
from volumes.backends.memory import ArrayVolume
from volumes.box import Box
from volumes.errors import GeometryError
from volumes.sampling import CropSampler, SamplingRules


class CountingVolume(ArrayVolume):
    """Records every box read."""

    def __init__(self, data: np.ndarray) -> None:
        super().__init__(data)
        self.reads: list[Box] = []

    def read(self, box: Box) -> np.ndarray:
        self.reads.append(box)
        return super().read(box)


def _pair(shape: tuple[int, int, int] = (8, 40, 40)) -> tuple[CountingVolume, CountingVolume]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    label = (image > 200).astype(np.uint32)
    return CountingVolume(image), CountingVolume(label)


def test_only_crop_boxes_are_read() -> None:
    image, label = _pair()
    sampler = CropSampler(image, label, SamplingRules((4, 9, 9), margin=1))
    rng = np.random.default_rng(1)
    for _ in range(10):
        crop = sampler.draw(rng)
        assert crop.image.shape == crop.label.shape == (6, 11, 11)
        np.testing.assert_array_equal(crop.label, (crop.image > 200).astype(np.uint32))
    assert all(box.size <= 6 * 11 * 11 for box in image.reads + label.reads)
    assert len(image.reads) == 10  # the image is read for accepted crops only


def test_crops_stay_in_the_roi() -> None:
    image, label = _pair()
    roi = Box((2, 10, 20), (5, 12, 15))
    sampler = CropSampler(image, label, SamplingRules((3, 9, 9)), roi=roi)
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert roi.contains(sampler.draw(rng).box)


def test_valid_ratio_must_be_exceeded() -> None:
    image, label = _pair()
    mask = np.zeros((8, 40, 40), np.uint8)
    mask[:, :, :20] = 1
    sampler = CropSampler(image, label, SamplingRules((2, 8, 8), valid_ratio=0.5), mask=ArrayVolume(mask))
    rng = np.random.default_rng(0)
    for _ in range(20):
        crop = sampler.draw(rng)
        assert crop.mask is not None and crop.mask.mean() > 0.5
        assert crop.box.offset[2] < 16


def test_rejection_prefers_foreground_and_counts_misses() -> None:
    shape = (4, 64, 64)
    label = np.zeros(shape, np.uint32)
    label[:, :8, :8] = 3
    sampler = CropSampler(
        ArrayVolume(np.zeros(shape, np.uint8)),
        ArrayVolume(label),
        SamplingRules((4, 8, 8), min_foreground=10, reject_probability=1.0, max_tries=500),
    )
    crops = [sampler.draw(np.random.default_rng(i)) for i in range(5)]
    assert all(c.hit and np.count_nonzero(c.label) >= 10 for c in crops)
    assert sum(c.misses for c in crops) > 0


def test_no_foreground_gives_misses_not_a_loop() -> None:
    shape = (4, 32, 32)
    sampler = CropSampler(
        ArrayVolume(np.zeros(shape, np.uint8)),
        ArrayVolume(np.zeros(shape, np.uint32)),
        SamplingRules((4, 8, 8), min_foreground=1, reject_probability=0.95, max_tries=50),
    )
    crop = sampler.draw(np.random.default_rng(0))
    assert not crop.hit and 1 <= crop.misses <= 50


@pytest.mark.parametrize(
    ("label_shape", "patch", "match"),
    [((8, 40, 41), (4, 9, 9), "label"), ((8, 40, 40), (9, 9, 9), "patch_size")],
)
def test_bad_geometry(label_shape: tuple[int, ...], patch: tuple[int, int, int], match: str) -> None:
    with pytest.raises(GeometryError, match=match):
        CropSampler(
            ArrayVolume(np.zeros((8, 40, 40))), ArrayVolume(np.zeros(label_shape)), SamplingRules(patch)
        )


def test_geometry_moves_every_array_alike() -> None:
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, (5, 12, 12)).astype(np.uint32)
    image = label.astype(np.float32)[None] * 10
    spec = AugmentSpec(elastic=0.0, missing_section=0.0, intensity=0.0)
    seen = set()
    for i in range(30):
        plan = plan_augment(np.random.default_rng(i), spec, (5, 12, 12), drop=False)
        seen.add((plan.flips, plan.transpose, plan.rot90))
        np.testing.assert_array_equal(
            apply_geometry(plan, image, True)[0], apply_geometry(plan, label, False).astype(np.float32) * 10
        )
    assert len(seen) > 10


def test_rotations_and_transposes_need_square_planes() -> None:
    for i in range(20):
        plan = plan_augment(np.random.default_rng(i), AugmentSpec(), (5, 12, 16), drop=False)
        assert not plan.transpose and plan.rot90 in (0, 2)


def test_missing_section_deletes_one_interior_section() -> None:
    stack = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 4), np.float32)
    plan = plan_augment(np.random.default_rng(0), NO_AUGMENT, (6, 4, 4), drop=True)
    assert plan.drop_section is not None and 1 <= plan.drop_section <= 4
    out = apply_geometry(plan, stack, True)
    assert out.shape == (5, 4, 4)
    assert plan.drop_section not in out[:, 0, 0]


def test_elastic_warp_shifts_and_keeps_label_values() -> None:
    label = np.zeros((2, 16, 16), np.uint32)
    label[:, 4:8, 4:8] = 7
    shift = np.zeros((2, 16, 16), np.float32)
    shift[1] = 1.0  # read from x + 1: content moves one voxel towards x = 0
    out = apply_geometry(AugmentPlan(displacement=shift), label, interpolate=False)
    np.testing.assert_array_equal(out[:, :, 3:7], label[:, :, 4:8])
    drawn = plan_augment(np.random.default_rng(0), AugmentSpec(elastic=1.0), (2, 16, 16), drop=False)
    assert drawn.displacement is not None and drawn.displacement.shape == (2, 16, 16)
    assert set(np.unique(apply_geometry(drawn, label, False))) <= {0, 7}


def test_intensity_changes_the_image_only() -> None:
    plan = AugmentPlan(gain=1.5, offset=0.1)
    np.testing.assert_allclose(apply_intensity(plan, np.ones(3, np.float32)), 1.6)
