"""The training core: losses, a random-crop sampler over in-memory arrays, and a plain step loop.

No storage IO here: callers hand in numpy arrays (already normalised) and get losses back. The
full training job (checkpoints, resume, validation schedule) is built on these pieces elsewhere.

Losses follow PyTC's usual binary-foreground recipe: BCE-with-logits (weight 1.0) plus soft Dice
on the sigmoid (weight 0.5); the network outputs logits and no activation is applied before BCE.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import nn

from models.errors import ModelConfigError

logger = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Shape3 = tuple[int, int, int]


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 - soft Dice`` of ``sigmoid(logits)`` against ``target`` in [0, 1], averaged over samples.

    Each sample (first axis) gets its own Dice, so a patch without foreground scores by its false
    positives alone instead of being drowned by the others; ``smooth`` keeps empty/empty at 0.
    """
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.to(prob.dtype).flatten(1)
    inter = (prob * tgt).sum(dim=1)
    total = prob.sum(dim=1) + tgt.sum(dim=1)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


def bce_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 0.5
) -> torch.Tensor:
    """PyTC's typical binary loss: ``bce_weight * BCEWithLogits + dice_weight * Dice``."""
    bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return bce_weight * bce + dice_weight * dice_loss(logits, target)


@dataclass
class RandomCropSampler:
    """Random ``patch_size`` crops of an (image, label) pair, augmented, reproducible by ``rng``.

    ``image`` and ``label`` are ``(z, y, x)`` or ``(c, z, y, x)`` arrays with the same spatial shape.
    Each crop draws a position, flips of z, y and x (each with probability 1/2), an xy transpose
    (when the patch is square in yx) and an intensity gain/offset of up to ``intensity_jitter``
    (image only). Like PyTC's rejection sampling, a crop whose label foreground fraction is below
    ``min_foreground`` is redrawn with probability ``reject_probability``, at most ``max_tries``
    times. All randomness comes from ``rng``, so one seed fixes the sequence of crops.
    """

    image: NDArray[np.generic]
    label: NDArray[np.generic]
    patch_size: Shape3
    rng: np.random.Generator
    augment: bool = True
    intensity_jitter: float = 0.1
    min_foreground: float = 0.0
    reject_probability: float = 0.95
    max_tries: int = 50
    _spatial: Shape3 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name, array in (("image", self.image), ("label", self.label)):
            if array.ndim not in (3, 4):
                raise ModelConfigError(f"sampler: {name} must be (z,y,x) or (c,z,y,x), got {array.shape}")
        spatial = self.image.shape[-3:]
        if self.label.shape[-3:] != spatial:
            raise ModelConfigError(
                f"sampler: label {self.label.shape} does not match image {self.image.shape}"
            )
        if len(self.patch_size) != 3 or any(
            p < 1 or p > s for p, s in zip(self.patch_size, spatial, strict=True)
        ):
            raise ModelConfigError(f"sampler: patch_size {self.patch_size} must fit in volume {spatial}")
        self._spatial = (int(spatial[0]), int(spatial[1]), int(spatial[2]))

    def sample(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """One augmented crop: image and label as float32 ``(c, z, y, x)``."""
        image, label = self._crop()
        for _ in range(self.max_tries - 1):
            if float(label.mean()) >= self.min_foreground or self.rng.random() >= self.reject_probability:
                break
            image, label = self._crop()
        if self.augment:
            image, label = self._augment(image, label)
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def batch(self, batch_size: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """``batch_size`` crops stacked to ``(n, c, z, y, x)``."""
        pairs = [self.sample() for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    def _crop(self) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        start = [
            int(self.rng.integers(0, s - p + 1)) for s, p in zip(self._spatial, self.patch_size, strict=True)
        ]
        box: tuple[Any, ...] = (
            Ellipsis,
            *(slice(a, a + p) for a, p in zip(start, self.patch_size, strict=True)),
        )
        return _channels_first(self.image[box]), _channels_first(self.label[box])

    def _augment(
        self, image: NDArray[np.float32], label: NDArray[np.float32]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        flips = tuple(axis for axis in (-3, -2, -1) if self.rng.random() < 0.5)
        if flips:
            image, label = np.flip(image, flips), np.flip(label, flips)
        if self.patch_size[1] == self.patch_size[2] and self.rng.random() < 0.5:
            image, label = np.swapaxes(image, -1, -2), np.swapaxes(label, -1, -2)
        if self.intensity_jitter > 0:
            gain = 1.0 + self.rng.uniform(-self.intensity_jitter, self.intensity_jitter)
            offset = self.rng.uniform(-self.intensity_jitter, self.intensity_jitter)
            image = (image * np.float32(gain) + np.float32(offset)).astype(np.float32)
        return image, label


def _channels_first(array: NDArray[np.generic]) -> NDArray[np.float32]:
    data = np.asarray(array, dtype=np.float32)
    return data[None] if data.ndim == 3 else data


def train_steps(
    model: nn.Module,
    sampler: RandomCropSampler,
    optimizer: torch.optim.Optimizer,
    iterations: int,
    batch_size: int,
    device: torch.device | str = "cpu",
    loss_fn: LossFn = bce_dice_loss,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    log_every: int = 50,
) -> list[float]:
    """Run ``iterations`` optimisation steps on batches from ``sampler``; returns each step's loss.

    The model is put in training mode and left there. ``scheduler`` (if any) steps once per
    iteration, after the optimiser.
    """
    model.train()
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, iterations + 1):
        image, label = sampler.batch(batch_size)
        x = torch.from_numpy(image).to(device)
        y = torch.from_numpy(label).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        losses.append(float(loss.detach()))
        if log_every > 0 and (step % log_every == 0 or step == iterations):
            recent = losses[-log_every:]
            logger.info(
                "step %d/%d loss %.4f (mean of last %d) %.1fs",
                step,
                iterations,
                sum(recent) / len(recent),
                len(recent),
                time.perf_counter() - started,
            )
    return losses
