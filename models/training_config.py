"""What a training run is told, as frozen values: heads and their losses, optimizer, schedule.

No torch here (the control plane builds these while parsing a job and must not import torch); the
builders that turn them into torch objects live in :mod:`models.optim`, :mod:`models.losses` and
:mod:`models.trainer`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

TargetKind = Literal[
    "binary", "boundary", "affinity", "semantic", "distance", "polarity", "instance_distance"
]
OptimizerKind = Literal["adamw", "adam", "sgd"]
ParamGroups = Literal["one", "pytc"]
ScheduleKind = Literal["constant", "step", "warmup_cosine", "pytc_warmup_cosine", "pytc_warmup_step"]
HeadActivation = Literal["sigmoid", "softmax", "tanh"]
DistanceMode = Literal["2d", "3d"]
DiceStyle = Literal["channel", "pytc"]
RegularizerKind = Literal["binary", "fg_contour", "contour_dt", "fg_dt", "nonoverlap"]

TARGET_KINDS: tuple[TargetKind, ...] = (
    "binary", "boundary", "affinity", "semantic", "distance", "polarity", "instance_distance",
)  # fmt: skip
QUANTIZED_LEVELS = 11  # PyTC's energy_quantize: -1 (background) and ten levels of [0, 1]
# Heads each regulariser takes (PyTC's REGU_TARGET), in order, and the kinds they must be.
REGULARIZER_HEADS: dict[RegularizerKind, tuple[tuple[TargetKind, ...], ...]] = {
    "binary": (("binary", "boundary", "affinity", "polarity"),),
    "fg_contour": (("binary",), ("boundary",)),
    "contour_dt": (("boundary",), ("distance", "instance_distance")),
    "fg_dt": (("binary",), ("distance", "instance_distance")),
    "nonoverlap": (("polarity",),),
}
# Affinity channels are the nearest-neighbour offsets in this order (PyTC's convention).
AFFINITY_AXES = ("z", "y", "x")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms of one head. ``bce``: BCE-with-logits per channel; ``dice``: soft
    Dice on the head's activation; ``ce``: softmax cross-entropy (semantic heads only), each voxel
    weighed by ``class_weight[its class]`` when given (PyTC's WeightedCE ``class_weight``), then the
    plain mean; ``mse``: mean squared error of ``tanh(logits)`` (distance heads only; PyTC's
    WeightedMSE after a tanh). ``dice_style``: ``channel`` (ours: each (sample, channel) its own
    Dice, smoothing 1) or ``pytc`` (PyTC's DiceLoss: each sample's channels together, smoothing
    100, averaged over the samples)."""

    bce: float = 1.0
    dice: float = 0.5
    ce: float = 0.0
    mse: float = 0.0
    class_weight: tuple[float, ...] | None = None
    dice_style: DiceStyle = "channel"


@dataclass(frozen=True)
class DistanceSpec:
    """PyTC's semantic distance target (``6-<mode>-<alpha_fore>-<alpha_back>``, ``edt_semantic``):
    ``tanh(edt(fg) / alpha_fore - edt(bg) / alpha_back)`` per z section (``2d``) or over the crop
    (``3d``, z spacing 6)."""

    mode: DistanceMode = "2d"
    alpha_fore: float = 8.0
    alpha_back: float = 50.0


@dataclass(frozen=True)
class InstanceDistanceSpec:
    """PyTC's instance distance target (``5-<mode>-<padding>-<quantize>-<z_res>-<erosion>``,
    ``seg2inst_edt``): per connected component (holes under 16 voxels filled, eroded by
    ``erosion``), its distance to its border over its largest, the maximum over components, -1 on
    the background; per z section (``2d``) or over the crop (``3d``, z spacing ``z_resolution``);
    ``padding``: the crop's border counts as background; ``quantize``: PyTC's 11 levels, as classes."""

    mode: DistanceMode = "2d"
    padding: bool = False
    quantize: bool = False
    z_resolution: float = 5.0
    erosion: int = 0


@dataclass(frozen=True)
class RegularizerSpec:
    """A PyTC regulariser (``MODEL.REGU_OPT``) added to the loss with ``weight``, over the logits of
    the heads at ``heads`` (indices, PyTC's ``REGU_TARGET``)."""

    kind: RegularizerKind
    heads: tuple[int, ...]
    weight: float = 1.0


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
    # distance heads (None there: DistanceSpec()); instance_distance heads (InstanceDistanceSpec())
    distance: DistanceSpec | InstanceDistanceSpec | None = None
    # polarity heads only: PyTC's 1-1, three exclusive classes (none, pre, post) learnt by softmax
    exclusive: bool = False
    # affinity heads only: PyTC's long-range affinities (2-z-y-x-v1), the (z, y, x) distances to the
    # neighbour each channel compares with; None: the nearest neighbours (1, 1, 1)
    offsets: tuple[int, int, int] | None = None

    @property
    def channels(self) -> int:
        if self.kind == "affinity":
            return len(AFFINITY_AXES)
        if self.kind == "polarity":
            return 3
        if self.kind == "instance_distance":
            spec = (
                self.distance if isinstance(self.distance, InstanceDistanceSpec) else InstanceDistanceSpec()
            )
            return QUANTIZED_LEVELS if spec.quantize else 1
        if self.kind == "semantic":
            return int(self.classes or 0)
        return 1

    @property
    def activation(self) -> HeadActivation:
        """The activation inference applies to this head (training works on logits, FAQ item 2)."""
        if self.kind in ("distance", "instance_distance"):
            return "softmax" if self.channels > 1 else "tanh"
        return "softmax" if self.kind == "semantic" or self.exclusive else "sigmoid"

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "kind": self.kind,
            "channels": self.channels,
            "activation": self.activation,
            "loss": {"bce": self.loss.bce, "dice": self.loss.dice, "ce": self.loss.ce},
            "classes": self.classes,
            **({"label_erosion": self.label_erosion} if self.label_erosion else {}),
            **({"label_dilation": self.label_dilation} if self.label_dilation else {}),
        }
        if self.loss.mse:
            out["loss"] = {**out["loss"], "mse": self.loss.mse}  # type: ignore[dict-item]
        if self.loss.dice_style != "channel":
            out["loss"] = {**out["loss"], "dice_style": self.loss.dice_style}  # type: ignore[dict-item]
        if self.loss.class_weight is not None:
            out["loss"] = {**out["loss"], "class_weight": list(self.loss.class_weight)}  # type: ignore[dict-item]
        if self.exclusive:
            out["exclusive"] = True
        if self.offsets is not None:
            out["offsets"] = list(self.offsets)
        if self.kind == "distance":
            out["distance"] = asdict(self.distance or DistanceSpec())
        if self.kind == "instance_distance":
            out["instance_distance"] = asdict(self.distance or InstanceDistanceSpec())
        return out


def default_loss(kind: TargetKind) -> LossWeights:
    """PyTC's usual recipe: BCE 1.0 + Dice 0.5; semantic heads use cross-entropy instead of BCE,
    distance heads the squared error of their tanh (PyTC's WeightedMSE)."""
    if kind in ("distance", "instance_distance"):  # quantized instance distances: ce (the document's)
        return LossWeights(bce=0.0, dice=0.0, mse=1.0)
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
    # With ``pytc`` groups, PyTC's SOLVER.BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS and WEIGHT_DECAY_NORM:
    # biases (outside normalisation layers) learn at ``lr * bias_lr_factor`` with
    # ``weight_decay_bias``; normalisation layers' parameters with ``weight_decay_norm``.
    bias_lr_factor: float = 1.0
    weight_decay_bias: float = 0.0
    weight_decay_norm: float = 0.0


@dataclass(frozen=True)
class ScheduleSpec:
    """The learning rate as ``lr * factor(iteration)``.

    ``constant``: 1. ``step``: ``gamma ** (number of milestones passed)``, milestones either listed
    or every ``step_size`` iterations (PyTC's MultiStepLR / StepLR). ``warmup_cosine``: linear from
    ``warmup_factor`` to 1 over ``warmup`` iterations, then cosine down to ``min_lr_ratio`` at the
    last iteration. ``pytc_warmup_cosine``: PyTC v1's WarmupCosineLR as it computes it, the same
    linear warm-up factor times a half cosine over all iterations from the first,
    ``0.5 * (1 + cos(pi * i / iterations))`` (``min_lr_ratio`` unused). ``pytc_warmup_step``: PyTC
    v1's WarmupMultiStepLR, the same warm-up factor times ``gamma ** (milestones passed)``.
    """

    kind: ScheduleKind = "constant"
    milestones: tuple[int, ...] = ()
    step_size: int | None = None
    gamma: float = 0.1
    warmup: int = 0
    warmup_factor: float = 0.001
    min_lr_ratio: float = 0.0
