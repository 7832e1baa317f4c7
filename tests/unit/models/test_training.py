"""The training core: losses, the random-crop sampler, the step loop; and the demo's small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.demo_training import foreground_dice, predict_volume, window_starts
from models.errors import ModelConfigError
from models.training import RandomCropSampler, bce_dice_loss, dice_loss, train_steps

SHIPPED = Path(__file__).resolve().parents[3] / "models" / "weights" / "demo_unet3d.pth.tar"


def _target(shape: tuple[int, ...] = (2, 1, 4, 8, 8)) -> torch.Tensor:
    return (torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()


def test_dice_loss_near_zero_for_perfect_prediction() -> None:
    target = _target()
    logits = (target * 2 - 1) * 20
    assert float(dice_loss(logits, target)) < 1e-3
    assert float(bce_dice_loss(logits, target)) < 1e-3


def test_dice_loss_near_one_for_inverted_prediction() -> None:
    target = _target()
    logits = (1 - target * 2) * 20
    assert float(dice_loss(logits, target)) > 0.99


def test_dice_loss_empty_target_and_prediction_is_zero() -> None:
    target = torch.zeros(1, 1, 2, 4, 4)
    assert float(dice_loss(torch.full_like(target, -30.0), target)) < 1e-6


def test_bce_dice_loss_weights() -> None:
    target = _target()
    logits = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    expected = bce + 0.5 * dice_loss(logits, target)
    assert torch.allclose(bce_dice_loss(logits, target), expected)
    assert torch.allclose(
        bce_dice_loss(logits, target, bce_weight=0.0, dice_weight=1.0), dice_loss(logits, target)
    )


def _volume() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.random((12, 20, 20), dtype=np.float32)
    return image, (image > 0.5).astype(np.uint8)


def _sampler(seed: int, **kwargs: object) -> RandomCropSampler:
    image, label = _volume()
    return RandomCropSampler(image, label, (5, 9, 9), rng=np.random.default_rng(seed), **kwargs)  # type: ignore[arg-type]


def test_sampler_shapes_and_dtypes() -> None:
    image, label = _sampler(0).batch(3)
    assert image.shape == label.shape == (3, 1, 5, 9, 9)
    assert image.dtype == label.dtype == np.float32


def test_sampler_is_deterministic_by_seed() -> None:
    a, b, c = _sampler(3).batch(4), _sampler(3).batch(4), _sampler(4).batch(4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_augmentations_keep_image_and_label_aligned() -> None:
    # Without intensity jitter the label is exactly a function of the image, whatever the flips.
    sampler = _sampler(5, intensity_jitter=0.0)
    for _ in range(20):
        image, label = sampler.sample()
        np.testing.assert_array_equal(label, (image > 0.5).astype(np.float32))


def test_augmentations_happen() -> None:
    # A ramp along x makes flips and transposes visible: the crop's gradient changes direction.
    ramp = np.broadcast_to(np.arange(9, dtype=np.float32), (5, 9, 9)).copy()
    sampler = RandomCropSampler(ramp, ramp, (5, 9, 9), rng=np.random.default_rng(0), intensity_jitter=0.0)
    seen = set()
    for _ in range(40):
        _, label = sampler.sample()
        seen.add(
            (float(label[0, 0, 0, -1] - label[0, 0, 0, 0]), float(label[0, 0, -1, 0] - label[0, 0, 0, 0]))
        )
    assert seen == {(8.0, 0.0), (-8.0, 0.0), (0.0, 8.0), (0.0, -8.0)}


def test_intensity_jitter_changes_image_only() -> None:
    image, label = _volume()
    whole = (12, 20, 20)  # one possible crop: only flips, transposes and jitter vary
    sampler = RandomCropSampler(image, label, whole, np.random.default_rng(0), intensity_jitter=0.2)
    for _ in range(5):
        img, lab = sampler.sample()
        assert np.sort(lab.ravel()).tolist() == np.sort(label.ravel().astype(np.float32)).tolist()
        assert not np.allclose(np.sort(img.ravel()), np.sort(image.ravel()))


def test_sampler_rejects_crops_without_foreground() -> None:
    image = np.zeros((4, 40, 40), dtype=np.float32)
    label = np.zeros((4, 40, 40), dtype=np.uint8)
    label[:, :8, :8] = 1
    sampler = RandomCropSampler(
        image,
        label,
        (4, 8, 8),
        np.random.default_rng(0),
        min_foreground=0.1,
        reject_probability=1.0,
        max_tries=200,
    )
    assert all(sampler.sample()[1].mean() >= 0.1 for _ in range(5))


def test_sampler_accepts_channels_first_arrays() -> None:
    image, label = _volume()
    sampler = RandomCropSampler(np.stack([image, image]), label, (5, 9, 9), np.random.default_rng(0))
    img, lab = sampler.sample()
    assert img.shape == (2, 5, 9, 9) and lab.shape == (1, 5, 9, 9)


@pytest.mark.parametrize("patch", [(13, 9, 9), (5, 21, 9), (5, 9)])
def test_sampler_rejects_patches_that_do_not_fit(patch: tuple[int, ...]) -> None:
    image, label = _volume()
    with pytest.raises(ModelConfigError, match="patch_size"):
        RandomCropSampler(image, label, patch, np.random.default_rng(0))  # type: ignore[arg-type]


def test_sampler_rejects_mismatched_label() -> None:
    image, label = _volume()
    with pytest.raises(ModelConfigError, match="does not match"):
        RandomCropSampler(image, label[:, :10], (5, 9, 9), np.random.default_rng(0))


@pytest.fixture
def one_thread() -> Iterator[None]:
    # Tiny ops on a busy machine: a second OpenMP thread only adds waiting.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_thread")
def test_train_steps_reduce_loss_on_a_learnable_toy() -> None:
    torch.manual_seed(0)
    image, label = _volume()
    sampler = RandomCropSampler(image, label, (5, 9, 9), np.random.default_rng(0), intensity_jitter=0.0)
    model = nn.Conv3d(1, 1, kernel_size=1)  # label = image > 0.5 is learnable by a 1x1 conv
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    losses = train_steps(model, sampler, optimizer, iterations=60, batch_size=2, device="cpu", log_every=0)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])


def test_window_starts_follow_pytc_grid() -> None:
    assert window_starts(32, 17, 8) == [0, 8, 15]
    assert window_starts(17, 17, 8) == [0]
    assert window_starts(10, 17, 8) == [0]
    assert window_starts(100, 40, 20) == [0, 20, 40, 60]


def test_predict_volume_of_constant_model_is_constant() -> None:
    class Constant(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    image = np.random.default_rng(0).random((7, 30, 23), dtype=np.float32)
    prob = predict_volume(Constant(), image, (5, 9, 9))
    assert prob.shape == image.shape
    np.testing.assert_allclose(prob, 0.5)


def test_predict_volume_of_pointwise_model_is_exact() -> None:
    class Identity(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    image = np.random.default_rng(0).normal(size=(3, 30, 23)).astype(np.float32)
    prob = predict_volume(Identity(), image, (5, 9, 9), batch_size=3)
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-image)), rtol=1e-5)


def test_foreground_dice() -> None:
    a = np.array([1, 1, 0, 0], dtype=bool)
    assert foreground_dice(a, a) == 1.0
    assert foreground_dice(a, ~a) == 0.0
    assert foreground_dice(a, np.array([1, 0, 0, 0], dtype=bool)) == pytest.approx(2 / 3)
    assert foreground_dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0


@pytest.mark.skipif(not SHIPPED.exists(), reason="demo checkpoint not built")
def test_shipped_demo_checkpoint_loads_safely() -> None:
    ckpt = torch.load(SHIPPED, map_location="cpu", weights_only=True)
    assert ckpt["architecture"] == "unet3d" and ckpt["schema_version"] == 1
    assert ckpt["metrics"]["val_dice"] >= 0.93
    assert SHIPPED.stat().st_size < 5 * 2**20
    from models.unet3d import build_unet3d

    build_unet3d(ckpt["config"]).load_state_dict(ckpt["state_dict"])
