"""The metrics of a segmentation against its ground truth, from their contingency table.

Notation: ``n_ij`` voxels with ground-truth id i and predicted id j (0 = background in both),
``N`` every voxel, ``a_i = sum_j n_ij`` (i > 0), ``b_j = sum_{i>0} n_ij`` (j > 0), ``c = sum_{i>0}
n_i0`` (ground-truth foreground the prediction left as background).

- ``adapted_rand_error`` (with ``_precision`` and ``_recall``): the SNEMI3D challenge's definition,
  as its MATLAB script and PyTC's ``connectomics.utils.evaluate.adapted_rand`` compute it:
  ``sumA = sum a_i^2``, ``sumB = sum b_j^2 + c/N``, ``sumAB = sum_{i,j>0} n_ij^2 + c/N``,
  precision = sumAB / sumB, recall = sumAB / sumA, error = 1 - 2PR / (P + R). Ground-truth
  background is ignored; predicted background over ground-truth foreground counts as single voxels
  (the script's ``c/N`` term, kept as it is).
- ``adapted_rand_error_skimage``: scikit-image's ``adapted_rand_error`` (pairs of distinct voxels:
  each sum of squares less its sum; ground-truth background ignored, predicted background an
  ordinary label). Both are reported because the two figures differ and both are quoted.
- ``voi_split``, ``voi_merge``: the conditional entropies H(pred | gt) and H(gt | pred) in bits over
  the voxels where the ground truth is not background, as PyTC's ``voi`` and scikit-image's
  ``variation_of_information(gt, pred, ignore_labels=[0])`` compute them; ``voi`` is their sum.
- ``foreground_iou``: voxels foreground in both / voxels foreground in either (PyTC's foreground
  IoU of a binary prediction; here foreground = id != 0).
- ``ap_50``, ``ap_75``: MitoEM's instance AP (:mod:`volumes.metrics.ap`); ``ap_50_95`` the mean
  over its ten IoU thresholds 0.5:0.05:0.95 (COCO's AP).

A figure that is undefined (no ground-truth foreground, an empty union) is NaN, shown as null.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from volumes.metrics.ap import IOU_THRESHOLDS, average_precision, ranked_best_ious
from volumes.metrics.table import ContingencyTable

Metric = Literal["adapted_rand", "voi", "iou", "ap"]
METRICS: tuple[Metric, ...] = get_args(Metric)
NAN = float("nan")


@dataclass(frozen=True)
class Scores:
    """The figures of one evaluation; those of metrics not asked for are None."""

    voxels: int
    gt_objects: int
    pred_objects: int
    pairs: int  # distinct (gt, pred) pairs: the size of the table the figures come from
    adapted_rand_error: float | None = None
    adapted_rand_precision: float | None = None
    adapted_rand_recall: float | None = None
    adapted_rand_error_skimage: float | None = None
    voi_split: float | None = None
    voi_merge: float | None = None
    voi: float | None = None
    foreground_iou: float | None = None
    ap_50: float | None = None
    ap_75: float | None = None
    ap_50_95: float | None = None

    def figures(self) -> dict[str, float]:
        """The metric figures that were computed (NaN included), by name."""
        skip = ("voxels", "gt_objects", "pred_objects", "pairs")
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes null, metrics not asked for are left out."""
        counts = {k: getattr(self, k) for k in ("voxels", "gt_objects", "pred_objects", "pairs")}
        return {**counts, **{k: (None if math.isnan(v) else v) for k, v in self.figures().items()}}


def parse_metrics(names: Iterable[str]) -> tuple[Metric, ...]:
    """Known metric names, in the canonical order, each once; ValueError naming an unknown one."""
    wanted = list(names)
    for name in wanted:
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; expected some of {', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in wanted)


def score_table(table: ContingencyTable, metrics: Iterable[Metric] = METRICS) -> Scores:
    """Every asked-for metric of the table."""
    wanted = set(metrics)
    gt_ids, _ = table.gt_sizes()
    pred_ids, _ = table.pred_sizes()
    figures: dict[str, float] = {}
    if "adapted_rand" in wanted:
        figures.update(adapted_rand(table))
        figures["adapted_rand_error_skimage"] = adapted_rand_skimage(table)
    if "voi" in wanted:
        split, merge = variation_of_information(table)
        figures.update(voi_split=split, voi_merge=merge, voi=split + merge)
    if "iou" in wanted:
        figures["foreground_iou"] = foreground_iou(table)
    if "ap" in wanted:
        figures.update(instance_ap(table))
    return Scores(
        voxels=table.voxels,
        gt_objects=int(np.count_nonzero(gt_ids)),
        pred_objects=int(np.count_nonzero(pred_ids)),
        pairs=table.pairs,
        **figures,
    )


def adapted_rand(table: ContingencyTable) -> dict[str, float]:
    """SNEMI3D's adapted Rand error, precision and recall."""
    n = float(table.voxels)
    fg = table.gt != 0
    a = _sizes(table.gt[fg], table.count[fg])
    both = fg & (table.pred != 0)
    b = _sizes(table.pred[both], table.count[both])
    c = float(table.count[fg & (table.pred == 0)].sum())
    nij = table.count[both].astype(np.float64)
    sum_a = float(a @ a)
    sum_b = float(b @ b) + (c / n if n else 0.0)
    sum_ab = float(nij @ nij) + (c / n if n else 0.0)
    if sum_a == 0 or sum_b == 0:
        return {"adapted_rand_error": NAN, "adapted_rand_precision": NAN, "adapted_rand_recall": NAN}
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    fscore = 2.0 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "adapted_rand_error": 1.0 - fscore,
        "adapted_rand_precision": precision,
        "adapted_rand_recall": recall,
    }


def adapted_rand_skimage(table: ContingencyTable) -> float:
    """scikit-image's adapted Rand error (``alpha`` 0.5, ground-truth 0 ignored)."""
    fg = table.gt != 0
    nij = table.count[fg].astype(np.float64)
    total = float(nij.sum())
    a = _sizes(table.gt[fg], table.count[fg])
    b = _sizes(table.pred[fg], table.count[fg])
    sum_ab, sum_a, sum_b = float(nij @ nij) - total, float(a @ a) - total, float(b @ b) - total
    denominator = 0.5 * sum_a + 0.5 * sum_b
    return 1.0 - sum_ab / denominator if denominator else NAN


def variation_of_information(table: ContingencyTable) -> tuple[float, float]:
    """(split, merge) = (H(pred | gt), H(gt | pred)) in bits, ground-truth background ignored."""
    fg = table.gt != 0
    g, p, c = table.gt[fg], table.pred[fg], table.count[fg].astype(np.float64)
    total = c.sum()
    if total == 0:
        return NAN, NAN
    pij = c / total
    p_gt = _per_pair_sizes(g, c) / total
    p_pred = _per_pair_sizes(p, c) / total
    split = -float(np.sum(pij * np.log2(pij / p_gt)))
    merge = -float(np.sum(pij * np.log2(pij / p_pred)))
    return split + 0.0, merge + 0.0  # -0.0 reads as 0.0


def foreground_iou(table: ContingencyTable) -> float:
    gt_fg, pred_fg = table.gt != 0, table.pred != 0
    both = int(table.count[gt_fg & pred_fg].sum())
    either = int(table.count[gt_fg | pred_fg].sum())
    return both / either if either else NAN


def instance_ap(table: ContingencyTable) -> dict[str, float]:
    best, gt_objects = ranked_best_ious(table)
    per_threshold = [average_precision(best, gt_objects, float(t)) for t in IOU_THRESHOLDS]
    return {
        "ap_50": per_threshold[0],
        "ap_75": per_threshold[5],
        "ap_50_95": float(np.mean(per_threshold)) if gt_objects else NAN,
    }


def _sizes(ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The summed counts of each distinct id, as float64 (for sums of squares)."""
    if ids.size == 0:
        return np.zeros(0)
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse, weights=count.astype(np.float64))


def _per_pair_sizes(ids: np.ndarray, count: np.ndarray) -> np.ndarray:
    """For each pair, the summed count of its id."""
    _, inverse = np.unique(ids, return_inverse=True)
    return np.bincount(inverse, weights=count)[inverse]
