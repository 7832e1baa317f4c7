"""What a training run is told, as frozen values: heads and their losses, optimizer, schedule.

No torch here (the control plane builds these while parsing a job and must not import torch); the
builders that turn them into torch objects live in :mod:`models.optim`, :mod:`models.losses` and
:mod:`models.trainer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TargetKind = Literal["binary", "boundary", "affinity", "semantic"]
OptimizerKind = Literal["adamw", "adam", "sgd"]
ParamGroups = Literal["one", "pytc"]
ScheduleKind = Literal["constant", "step", "warmup_cosine", "pytc_warmup_cosine"]
HeadActivation = Literal["sigmoid", "softmax"]

TARGET_KINDS: tuple[TargetKind, ...] = ("binary", "boundary", "affinity", "semantic")
# Affinity channels are the nearest-neighbour offsets in this order (PyTC's convention).
AFFINITY_AXES = ("z", "y", "x")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms of one head. ``bce``: BCE-with-logits per channel; ``dice``: soft
    Dice on the head's activation; ``ce``: softmax cross-entropy (semantic heads only)."""

    bce: float = 1.0
    dice: float = 0.5
    ce: float = 0.0


@dataclass(frozen=True)
class HeadSpec:
    """One output head: which target it learns and how its loss is weighed.

    ``classes`` is the number of channels of a semantic head (label values are class ids).
    ``label_erosion`` and ``label_dilation`` transform the label before this head's target is made,
    as PyTC's ``MODEL.LABEL_EROSION`` (``seg_widen_border``) and ``LABEL_DILATION`` do, in that order
    (:func:`models.targets.widen_border`, :func:`models.targets.dilate_label`); 0 leaves it as it is.
    """

    kind: TargetKind
    loss: LossWeights = LossWeights()
    classes: int | None = None
    label_erosion: int = 0
    label_dilation: int = 0

    @property
    def channels(self) -> int:
        if self.kind == "affinity":
            return len(AFFINITY_AXES)
        if self.kind == "semantic":
            return int(self.classes or 0)
        return 1

    @property
    def activation(self) -> HeadActivation:
        """The activation inference applies to this head (training works on logits, FAQ item 2)."""
        return "softmax" if self.kind == "semantic" else "sigmoid"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "channels": self.channels,
            "activation": self.activation,
            "loss": {"bce": self.loss.bce, "dice": self.loss.dice, "ce": self.loss.ce},
            "classes": self.classes,
            **({"label_erosion": self.label_erosion} if self.label_erosion else {}),
            **({"label_dilation": self.label_dilation} if self.label_dilation else {}),
        }


def default_loss(kind: TargetKind) -> LossWeights:
    """PyTC's usual recipe: BCE 1.0 + Dice 0.5; semantic heads use cross-entropy instead of BCE."""
    return LossWeights(bce=0.0, dice=0.5, ce=1.0) if kind == "semantic" else LossWeights()


def total_channels(heads: tuple[HeadSpec, ...]) -> int:
    return sum(head.channels for head in heads)


@dataclass(frozen=True)
class OptimizerSpec:
    kind: OptimizerKind = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD only
    betas: tuple[float, float] = (0.9, 0.999)  # Adam / AdamW only
    # "one": every parameter in one group with ``weight_decay``. "pytc": PyTC v1's solver, one group
    # per parameter in ``model.modules()`` order, normalisation layers' parameters and biases without
    # weight decay (its defaults), so PyTC's ``Trainer`` loads the optimizer state and we load its.
    param_groups: ParamGroups = "one"


@dataclass(frozen=True)
class ScheduleSpec:
    """The learning rate as ``lr * factor(iteration)``.

    ``constant``: 1. ``step``: ``gamma ** (number of milestones passed)``, milestones either listed
    or every ``step_size`` iterations (PyTC's MultiStepLR / StepLR). ``warmup_cosine``: linear from
    ``warmup_factor`` to 1 over ``warmup`` iterations, then cosine down to ``min_lr_ratio`` at the
    last iteration. ``pytc_warmup_cosine``: PyTC v1's WarmupCosineLR as it computes it, the same
    linear warm-up factor times a half cosine over all iterations from the first,
    ``0.5 * (1 + cos(pi * i / iterations))`` (``min_lr_ratio`` unused).
    """

    kind: ScheduleKind = "constant"
    milestones: tuple[int, ...] = ()
    step_size: int | None = None
    gamma: float = 0.1
    warmup: int = 0
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.0
