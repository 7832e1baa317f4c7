"""Losses of a multi-head network: each head's slice of the logits against its target.

The network gives logits; no activation comes before a logit loss (PyTC FAQ item 2). Per head:
``bce * BCEWithLogits + dice * (1 - soft Dice) + ce * CrossEntropy``, Dice on the head's activation
(sigmoid, or softmax for semantic heads), each (sample, channel) its own Dice. An optional
valid-voxel ``mask`` (n, 1, z, y, x) weighs every term: masked-out voxels count for nothing.
``ce`` takes PyTC's WeightedCE ``class_weight``, ``mse`` is PyTC's WeightedMSE of ``tanh(logits)``
(distance heads), and ``dice_style: pytc`` is PyTC's DiceLoss (:func:`pytc_dice_loss`).

Regularisers (:func:`regularization`) are PyTC v1's (``connectomics/model/loss/regularization.py``),
added to the sum with their weights as PyTC's ``Criterion`` adds them, each over the raw logits of
the heads it names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.errors import ModelConfigError
from models.training_config import HeadSpec, RegularizerSpec, total_channels


def soft_dice_loss(
    prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - Dice`` per (sample, channel), averaged; ``smooth`` keeps an empty/empty pair at 0."""
    return _dice_loss(prob, target, mask, smooth, per_channel=True)


def pytc_dice_loss(
    prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, smooth: float = 100.0
) -> torch.Tensor:
    """PyTC v1's ``DiceLoss`` (``reduce``, power 1): ``1 - Dice`` of each sample's channels taken
    together, smoothing 100, averaged over the samples; masked-out voxels count for nothing."""
    return _dice_loss(prob, target, mask, smooth, per_channel=False)


def _dice_loss(
    prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, smooth: float, *, per_channel: bool
) -> torch.Tensor:
    """``1 - Dice`` per sample and channel (``per_channel``) or per sample, averaged."""
    tgt = target.to(prob.dtype)
    if mask is not None:
        prob, tgt = prob * mask, tgt * mask
    dim = 2 if per_channel else 1
    inter = (prob * tgt).flatten(dim).sum(dim=dim)
    total = prob.flatten(dim).sum(dim=dim) + tgt.flatten(dim).sum(dim=dim)
    return (1.0 - (2.0 * inter + smooth) / (total + smooth)).mean()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.mean()
    weight = mask.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def head_loss(
    logits: torch.Tensor, target: torch.Tensor, head: HeadSpec, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The weighted loss of one head; ``logits`` and ``target`` are (n, channels, z, y, x)."""
    weights = head.loss
    total = logits.new_zeros(())
    if weights.bce:
        bce = F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
        total = total + weights.bce * _masked_mean(bce, mask)
    if weights.ce:
        class_weight = (
            torch.tensor(weights.class_weight, dtype=logits.dtype, device=logits.device)
            if weights.class_weight is not None
            else None
        )
        ce = F.cross_entropy(logits, target.argmax(dim=1), weight=class_weight, reduction="none").unsqueeze(1)
        total = total + weights.ce * _masked_mean(ce, mask)
    if weights.mse:
        mse = (torch.tanh(logits) - target.to(logits.dtype)) ** 2
        total = total + weights.mse * _masked_mean(mse, mask)
    if weights.dice:
        act = {"softmax": lambda x: torch.softmax(x, dim=1), "tanh": torch.tanh}.get(
            head.activation, torch.sigmoid
        )
        prob = act(logits)
        dice = pytc_dice_loss if weights.dice_style == "pytc" else soft_dice_loss
        total = total + weights.dice * dice(prob, target, mask)
    return total


def heads_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    heads: Sequence[HeadSpec],
    mask: torch.Tensor | None = None,
    regularizers: Sequence[RegularizerSpec] = (),
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The sum of every head's loss and of the weighted regularisers, and each head's loss then each
    regulariser's weighted value (for the log)."""
    channels = total_channels(tuple(heads))
    if logits.shape[1] != channels or targets.shape[1] != channels:
        raise ModelConfigError(
            f"heads {[h.kind for h in heads]} take {channels} channels; the model gives "
            f"{logits.shape[1]} and the targets hold {targets.shape[1]}"
        )
    parts: list[torch.Tensor] = []
    start = 0
    for head in heads:
        stop = start + head.channels
        parts.append(head_loss(logits[:, start:stop], targets[:, start:stop], head, mask))
        start = stop
    for regu in regularizers:
        parts.append(regu.weight * regularization(regu, split_heads(logits, heads)))
    return torch.stack(parts).sum(), parts


def split_heads(logits: torch.Tensor, heads: Sequence[HeadSpec]) -> list[torch.Tensor]:
    """Each head's channels of ``logits`` (PyTC's ``SplitActivation`` with ``split_only``)."""
    out, start = [], 0
    for head in heads:
        out.append(logits[:, start : start + head.channels])
        start += head.channels
    return out


def regularization(spec: RegularizerSpec, heads: Sequence[torch.Tensor]) -> torch.Tensor:
    """PyTC's regulariser ``spec.kind`` (unweighted) over the logits of the heads ``spec.heads``."""
    x = [heads[i] for i in spec.heads]
    if spec.kind == "binary":  # BinaryReg
        return (1.0 / torch.clamp(torch.abs(torch.sigmoid(x[0]) - 0.5), min=1e-2)).mean()
    if spec.kind == "fg_dt":  # ForegroundDTConsistency
        distance = torch.tanh(x[1])
        pos = -F.logsigmoid(x[0]) * torch.clamp(distance, min=0.0)
        neg = -F.logsigmoid(-x[0]) * -torch.clamp(distance, max=0.0)
        return (pos + neg).mean()
    if spec.kind == "contour_dt":  # ContourDTConsistency
        return ((torch.sigmoid(x[0]) * torch.abs(torch.tanh(x[1]))) ** 2).mean()
    if spec.kind == "fg_contour":  # FgContourConsistency, tsz_h 1
        return _fg_contour(x[0], x[1])
    if spec.kind == "nonoverlap":  # NonoverlapReg, masked by the cleft
        pred = x[0]
        return (
            torch.sigmoid(pred[:, 0]) * torch.sigmoid(pred[:, 1]) * torch.sigmoid(pred[:, 2].detach())
        ).mean()
    raise ModelConfigError(f"unknown regulariser {spec.kind!r}")


def _fg_contour(foreground: torch.Tensor, contour: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    fg = torch.sigmoid(foreground)
    sobel = torch.tensor([1.0, 0.0, -1.0], dtype=fg.dtype, device=fg.device)
    edge_x = F.conv3d(fg, sobel.view(1, 1, 1, 1, 3), padding=(0, 0, 1))
    edge_y = F.conv3d(fg, sobel.view(1, 1, 1, 3, 1), padding=(0, 1, 0))
    edge = torch.clamp(torch.sqrt(edge_x**2 + edge_y**2 + eps), min=eps, max=1.0 - eps)
    edge = F.max_pool3d(F.pad(edge, (1, 1, 1, 1, 0, 0)), kernel_size=(1, 3, 3), stride=1)
    return F.mse_loss(edge, torch.sigmoid(contour), reduction="none").mean()
