"""Validation during training: Dice and IoU of every head over a held-out volume, tile by tile.

The ROI is cut into patch-sized tiles on PyTC's grid with stride = patch (the last tile snapped to
the end); each voxel is scored once, by the first tile that holds it::

    tiles   |--- t0 ---|--- t1 ---|
                          |--- t2 ---|   (snapped)
    scored  [   t0     ][   t1     ][t2]

Only one tile is in memory at a time. A head's prediction is its activation (sigmoid; softmax's
arg-max for semantic heads) thresholded at ``threshold``, and a distance head's foreground (tanh > 0,
against target > 0); counts are summed over the volume.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from numpy.typing import NDArray

from models.targets import make_targets, target_margin
from models.training_config import HeadSpec
from volumes.box import Box
from volumes.padding import read_padded
from volumes.volume import Volume
from workers.inference.engine import normalize
from workers.inference.job import Normalize
from workers.training.job import ValidationScore

Logits = Callable[[NDArray[np.float32]], torch.Tensor]


def tile_starts(size: int, patch: int) -> list[tuple[int, int, int]]:
    """``(start, scored_begin, scored_end)`` of each tile along one axis of ``size`` voxels."""
    count = 1 + math.ceil(max(0, size - patch) / patch)
    tiles, scored_to = [], 0
    for i in range(count):
        start = min(i * patch, size - patch)
        tiles.append((start, scored_to, start + patch))
        scored_to = start + patch
    return tiles


def evaluate(
    logits: Logits,
    image: Volume,
    label: Volume,
    roi: Box,
    patch: Sequence[int],
    heads: Sequence[HeadSpec],
    normalization: Normalize,
    threshold: float,
    iteration: int,
) -> ValidationScore:
    """Score the model (``logits`` of a (1, c, z, y, x) float32 input) over ``roi``."""
    margin = target_margin(heads)
    counts = np.zeros((len(heads), 3), dtype=np.int64)  # true positives, false positives, false negatives
    axes = [tile_starts(s, p) for s, p in zip(roi.shape, patch, strict=True)]
    for tile in itertools.product(*axes):
        box = Box(tuple(o + t[0] for o, t in zip(roi.offset, tile, strict=True)), tuple(patch))
        raw = read_padded(image, box, "replicate")
        x = normalize(raw, normalization)
        x = x if x.ndim == 4 else x[None]
        targets = make_targets(read_padded(label, box.grow((margin,) * 3), "replicate"), heads, margin)
        out = logits(np.ascontiguousarray(x[None], dtype=np.float32))[0]
        scored = tuple(slice(b - s, e - s) for s, b, e in tile)
        counts += _tile_counts(out, targets, heads, threshold, scored)
    per_head = tuple((h.kind, *_scores(c)) for h, c in zip(heads, counts, strict=True))
    dice, iou = _scores(counts.sum(axis=0)) if len(heads) > 1 else per_head[0][1:]
    return ValidationScore(iteration, dice, iou, per_head)


def _tile_counts(
    out: torch.Tensor,
    targets: NDArray[np.float32],
    heads: Sequence[HeadSpec],
    threshold: float,
    scored: tuple[slice, ...],
) -> NDArray[np.int64]:
    rows, start = [], 0
    for head in heads:
        stop = start + head.channels
        head_out = out[start:stop]
        if head.activation == "softmax":
            pred = torch.nn.functional.one_hot(head_out.argmax(dim=0), head.channels).permute(3, 0, 1, 2)
            predicted = pred.numpy().astype(bool)
            truth = targets[start:stop] > 0.5
        elif head.activation == "tanh":  # a distance head: its foreground (distance > 0)
            predicted = (torch.tanh(head_out) > 0).numpy()
            truth = targets[start:stop] > 0
        else:
            predicted = (torch.sigmoid(head_out) > threshold).numpy()
            truth = targets[start:stop] > 0.5
        predicted, truth = predicted[(slice(None), *scored)], truth[(slice(None), *scored)]
        rows.append(
            [
                np.count_nonzero(predicted & truth),
                np.count_nonzero(predicted & ~truth),
                np.count_nonzero(~predicted & truth),
            ]
        )
        start = stop
    return np.array(rows, dtype=np.int64)


def _scores(counts: NDArray[np.int64]) -> tuple[float, float]:
    tp, fp, fn = (int(c) for c in counts)
    if tp + fp + fn == 0:
        return 1.0, 1.0  # nothing to find and nothing found
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
