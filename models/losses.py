"""Losses of a multi-head network: each head's slice of the logits against its target.

The network gives logits; no activation comes before a logit loss (PyTC FAQ item 2). Per head:
``bce * BCEWithLogits + dice * (1 - soft Dice) + ce * CrossEntropy``, Dice on the head's activation
(sigmoid, or softmax for semantic heads), each (sample, channel) its own Dice. An optional
valid-voxel ``mask`` (n, 1, z, y, x) weighs every term: masked-out voxels count for nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from models.errors import ModelConfigError
from models.training_config import HeadSpec, total_channels


def soft_dice_loss(
    prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, smooth: float = 1.0
) -> torch.Tensor:
    """``1 - Dice`` per (sample, channel), averaged; ``smooth`` keeps an empty/empty pair at 0."""
    tgt = target.to(prob.dtype)
    if mask is not None:
        prob, tgt = prob * mask, tgt * mask
    inter = (prob * tgt).flatten(2).sum(dim=2)
    total = prob.flatten(2).sum(dim=2) + tgt.flatten(2).sum(dim=2)
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
        ce = F.cross_entropy(logits, target.argmax(dim=1), reduction="none").unsqueeze(1)
        total = total + weights.ce * _masked_mean(ce, mask)
    if weights.dice:
        prob = torch.softmax(logits, dim=1) if head.activation == "softmax" else torch.sigmoid(logits)
        total = total + weights.dice * soft_dice_loss(prob, target, mask)
    return total


def heads_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    heads: Sequence[HeadSpec],
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The sum of every head's loss, and each head's loss (for the log)."""
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
    return torch.stack(parts).sum(), parts
