"""Random training crops from volumes: only crop boxes are read; valid-mask and foreground rules;
augmentations keep image, label and mask aligned."""

from __future__ import annotations

from pathlib import Path

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
from volumes.sampling import CropSampler, SampledVolume, SamplingRules


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


# --- several volumes, as PyTC's VolumeDataset samples them --------------------------------------

PYTC_GOLDEN = np.load(Path(__file__).resolve().parents[2] / "data" / "pytc_labels" / "golden.npz")


def _volumes(shapes: np.ndarray, foreground: bool = True) -> list[SampledVolume]:
    out = []
    for shape in shapes:
        label = np.ones(tuple(shape), np.uint32) if foreground else np.zeros(tuple(shape), np.uint32)
        out.append(SampledVolume(ArrayVolume(np.zeros(tuple(shape), np.uint8)), ArrayVolume(label)))
    return out


def test_volume_chances_are_pytcs_positions_per_volume() -> None:
    """PyTC's own VolumeDataset (mode train, stride 1) counted the positions of each volume; the
    chance of a volume is its share of them (tests/data/pytc_labels/make_golden.py)."""
    shapes, sample = PYTC_GOLDEN["choice/shapes"], tuple(int(v) for v in PYTC_GOLDEN["choice/sample"])
    sampler = CropSampler.of_volumes(_volumes(shapes), SamplingRules(sample))
    pytc_counts = PYTC_GOLDEN["choice/sample_num"]
    assert sampler.positions == tuple(int(n) for n in pytc_counts)
    np.testing.assert_allclose(sampler.probabilities(), pytc_counts / pytc_counts.sum())


def test_volume_choices_follow_pytcs_distribution() -> None:
    """200,000 choices of ours and PyTC's own _get_pos_train's: both within 5 sigma of the rule."""
    shapes, sample = PYTC_GOLDEN["choice/shapes"], tuple(int(v) for v in PYTC_GOLDEN["choice/sample"])
    sampler = CropSampler.of_volumes(_volumes(shapes), SamplingRules(sample))
    draws = int(PYTC_GOLDEN["choice/draws"])
    rng = np.random.default_rng(3)
    ours = np.bincount([sampler.choose(rng) for _ in range(draws)], minlength=len(shapes))
    p = sampler.probabilities()
    sigma = np.sqrt(draws * p * (1 - p))
    for counts in (ours, PYTC_GOLDEN["choice/pytc_counts"]):
        assert np.all(np.abs(counts - draws * p) < 5 * sigma + 1), (counts, draws * p)
    # through draw() too: the crop says which volume it comes from, and is that volume's shape
    crops = [sampler.draw(rng) for _ in range(3000)]
    seen = np.bincount([c.volume for c in crops], minlength=len(shapes))
    assert np.all(np.abs(seen - 3000 * p) < 5 * np.sqrt(3000 * p * (1 - p)) + 1), seen
    for crop in crops:
        assert Box.of_shape(tuple(int(s) for s in shapes[crop.volume])).contains(crop.box)


def test_a_rejected_draw_draws_the_volume_again() -> None:
    """PyTC's rejection sampling redraws volume and position: with certain rejection, every crop
    comes from the volume with foreground, whatever its share of positions."""
    empty, full = _volumes(np.array([[3, 12, 12]]), foreground=False), _volumes(np.array([[4, 9, 9]]))
    rules = SamplingRules((3, 9, 9), min_foreground=1, reject_probability=1.0, max_tries=200)
    sampler = CropSampler.of_volumes([*empty, *full], rules)
    assert sampler.probabilities()[1] == pytest.approx(2 / 18)
    rng = np.random.default_rng(0)
    assert {sampler.draw(rng).volume for _ in range(50)} == {1}


def test_one_volume_draws_no_volume_index() -> None:
    """Crops of one volume are those of before several volumes were read: positions only."""
    image, label = _pair()
    sampler = CropSampler(image, label, SamplingRules((4, 9, 9)))
    rng, twin = np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(5):
        box = sampler.draw(rng).box
        start = tuple(int(twin.integers(0, s - p + 1)) for s, p in zip((8, 40, 40), (4, 9, 9), strict=True))
        assert box.offset == start


def test_every_volume_is_checked_and_named() -> None:
    good = _volumes(np.array([[6, 20, 20]]))[0]
    bad = SampledVolume(
        ArrayVolume(np.zeros((6, 20, 20), np.uint8)), ArrayVolume(np.zeros((6, 20, 19), np.uint32))
    )
    with pytest.raises(GeometryError, match="volume 1: the label"):
        CropSampler.of_volumes([good, bad], SamplingRules((3, 9, 9)))
    small = _volumes(np.array([[2, 20, 20]]))[0]
    with pytest.raises(GeometryError, match="volume 1: patch_size"):
        CropSampler.of_volumes([good, small], SamplingRules((3, 9, 9)))


def test_ztranspose_is_pytcs_flip_with_z_transposes() -> None:
    """Each of the 32 rules of PyTC's Flip(do_ztrans=1) (z, y, x flips, xy transpose, zx
    transpose) is the plan with the same steps, on a labelled cube, with and without channels."""
    cube = PYTC_GOLDEN["flip/cube"]
    for rule, expected in zip(PYTC_GOLDEN["flip/rules"], PYTC_GOLDEN["flip/out"], strict=True):
        plan = AugmentPlan(
            flips=tuple(a for a in range(3) if rule[a]), transpose=bool(rule[3]), ztranspose=bool(rule[4])
        )
        np.testing.assert_array_equal(apply_geometry(plan, cube, interpolate=False), expected)
        np.testing.assert_array_equal(apply_geometry(plan, cube[None], interpolate=True)[0], expected)


def test_ztranspose_is_drawn_half_the_time_and_only_when_asked() -> None:
    spec = AugmentSpec(flip=True, transpose=True, rotate90=False, intensity=0.0, ztranspose=True)
    rng = np.random.default_rng(0)
    swapped = sum(plan_augment(rng, spec, (9, 9, 9), False).ztranspose for _ in range(2000))
    assert 900 < swapped < 1100
    # without it, a plan draws what it drew before (the same generator state after each plan)
    off = AugmentSpec(flip=True, transpose=True, rotate90=False, intensity=0.0)
    a, b = np.random.default_rng(1), np.random.default_rng(1)
    plan_augment(a, off, (9, 9, 9), False)
    for _ in range(4):
        b.random()  # three flips and a transpose
    assert a.random() == b.random()
    with pytest.raises(ValueError, match="as many sections as columns"):
        apply_geometry(AugmentPlan(ztranspose=True), np.zeros((3, 9, 9)), interpolate=False)
