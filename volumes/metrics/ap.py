"""MitoEM's instance average precision, given each predicted object's best IoU.

The MitoEM challenge scores instances with a 3D adaptation of COCO's evaluation (the
``mAP_3Dvolume`` tool its organisers published, ``vol3d_eval.py`` / ``vol3d_util.py``). What it
computes, for the size range "all" that AP-50 and AP-75 report, is:

1. Predicted objects are ranked by a score; without a score file, by their size in voxels,
   largest first. (The tool sorts with numpy's default, unstable, sort; we break ties by the
   smaller id first, so equal sizes always give the same figure.)
2. Each predicted object is matched to the ground-truth object with which its IoU (voxels in
   both / voxels in either, over the whole volume) is highest. Matching is *not* exclusive: a
   ground-truth object may be the best match of several predictions. At IoU >= 0.5 this differs
   from a one-to-one matching only when two predictions each cover exactly half of one object.
3. At threshold t, a prediction is a true positive when that best IoU >= t, else a false positive.
   With cumulative counts down the ranking, recall = TP / (ground-truth objects) and precision =
   TP / (TP + FP + eps), eps = ``np.spacing(1)``; precision is made non-increasing from the end.
4. AP is the mean over the 101 recall thresholds 0, 0.01, ..., 1 of the precision at the first
   rank whose recall reaches the threshold (0 where none does). No ground-truth object: undefined
   (the tool reports -1; we report NaN, shown as null).

Everything here depends only on the sizes of the objects and of their overlaps, so it is computed
from the contingency table alone, exactly as on the whole volume.
"""

from __future__ import annotations

import numpy as np

from volumes.metrics.table import ContingencyTable

# The tool's own expressions, so that the thresholds are the same floats.
IOU_THRESHOLDS = 0.5 + 0.05 * np.arange(0, 10)
RECALL_THRESHOLDS = 0.01 * np.arange(0, 101)


def ranked_best_ious(table: ContingencyTable) -> tuple[np.ndarray, int]:
    """Each predicted object's best IoU with a ground-truth object, in ranking order (size
    descending, then id ascending), and the number of ground-truth objects."""
    gt_ids, gt_sizes = table.gt_sizes()
    pred_ids, pred_sizes = table.pred_sizes()
    gt_sizes, gt_ids = gt_sizes[gt_ids != 0], gt_ids[gt_ids != 0]
    pred_sizes, pred_ids = pred_sizes[pred_ids != 0], pred_ids[pred_ids != 0]
    best = np.zeros(len(pred_ids), np.float64)
    both = (table.gt != 0) & (table.pred != 0)
    if both.any():
        g, p, c = table.gt[both], table.pred[both], table.count[both]
        pi = np.searchsorted(pred_ids, p)
        union = pred_sizes[pi] + gt_sizes[np.searchsorted(gt_ids, g)] - c
        np.maximum.at(best, pi, c / union)
    order = np.lexsort((pred_ids, -pred_sizes))
    return best[order], len(gt_ids)


def average_precision(best_iou: np.ndarray, gt_objects: int, threshold: float) -> float:
    """MitoEM's AP at one IoU threshold, from :func:`ranked_best_ious`."""
    if gt_objects == 0:
        return float("nan")
    hit = best_iou >= threshold
    tp = np.cumsum(hit).astype(np.float64)
    fp = np.cumsum(~hit).astype(np.float64)
    recall = tp / gt_objects
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    at = np.searchsorted(recall, RECALL_THRESHOLDS, side="left")
    reached = at < len(precision)
    values = np.zeros(len(RECALL_THRESHOLDS))
    values[reached] = precision[at[reached]]
    return float(values.mean())
