"""The same metrics computed in memory on whole label arrays, the way the published scripts do it
(a sparse overlap matrix of the whole volume, as PyTC's ``connectomics/utils/evaluate.py`` and the
SNEMI3D script build it): the reference the out-of-core path (:mod:`volumes.metrics.blockwise`) is
tested against, and what ``bench_evaluate.py`` times it against. Definitions:
:mod:`volumes.metrics.scores`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from volumes.metrics.ap import IOU_THRESHOLDS, average_precision


@dataclass(frozen=True)
class _Overlap:
    """``matrix[i, j]``: voxels of the i-th gt id and the j-th pred id (ids ascending, 0 first
    when present)."""

    matrix: sparse.csr_matrix
    gt_ids: np.ndarray
    pred_ids: np.ndarray


def _overlap(gt: np.ndarray, pred: np.ndarray) -> _Overlap:
    if gt.shape != pred.shape:
        raise ValueError(f"the label arrays differ in shape: {gt.shape} and {pred.shape}")
    gt_ids, gi = np.unique(np.ravel(gt), return_inverse=True)
    pred_ids, pj = np.unique(np.ravel(pred), return_inverse=True)
    ones = np.ones(gi.size, np.int64)
    matrix = sparse.coo_matrix((ones, (gi.ravel(), pj.ravel())), shape=(len(gt_ids), len(pred_ids)))
    return _Overlap(matrix.tocsr(), gt_ids, pred_ids)


def adapted_rand_error(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """SNEMI3D's (error, precision, recall)."""
    o = _overlap(gt, pred)
    n = float(gt.size)
    rows = o.matrix[o.gt_ids != 0]
    a = np.asarray(rows.sum(axis=1), np.float64).ravel()
    inner = rows[:, o.pred_ids != 0]
    b = np.asarray(inner.sum(axis=0), np.float64).ravel()
    c = float(rows[:, o.pred_ids == 0].sum())
    sum_a = float(np.sum(a * a))
    sum_b = float(np.sum(b * b)) + c / n
    sum_ab = float(inner.multiply(inner).sum()) + c / n
    if sum_a == 0 or sum_b == 0:
        return (float("nan"),) * 3
    precision, recall = sum_ab / sum_b, sum_ab / sum_a
    return 1.0 - 2.0 * precision * recall / (precision + recall), precision, recall


def variation_of_information(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(split, merge) = (H(pred | gt), H(gt | pred)) in bits over the voxels with gt != 0."""
    o = _overlap(gt, pred)
    rows = o.matrix[o.gt_ids != 0].astype(np.float64)
    total = rows.sum()
    if total == 0:
        return float("nan"), float("nan")
    pxy = (rows / total).tocoo()
    px = np.asarray(pxy.sum(axis=1)).ravel()
    py = np.asarray(pxy.sum(axis=0)).ravel()
    v = pxy.data
    split = -float(np.sum(v * np.log2(v / px[pxy.row])))
    merge = -float(np.sum(v * np.log2(v / py[pxy.col])))
    return split + 0.0, merge + 0.0


def foreground_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    g, p = np.asarray(gt) != 0, np.asarray(pred) != 0
    either = int(np.count_nonzero(g | p))
    return int(np.count_nonzero(g & p)) / either if either else float("nan")


def instance_ap(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MitoEM's AP-50, AP-75 and AP-50:95, matching each prediction to its best-IoU object."""
    o = _overlap(gt, pred)
    gt_size = np.asarray(o.matrix.sum(axis=1)).ravel()
    pred_size = np.asarray(o.matrix.sum(axis=0)).ravel()
    inner = o.matrix[o.gt_ids != 0][:, o.pred_ids != 0].tocoo()
    g_size, p_size = gt_size[o.gt_ids != 0], pred_size[o.pred_ids != 0]
    iou = inner.data / (g_size[inner.row] + p_size[inner.col] - inner.data)
    best = np.zeros(len(p_size))
    np.maximum.at(best, inner.col, iou)
    order = np.lexsort((o.pred_ids[o.pred_ids != 0], -p_size))
    n_gt = int(np.count_nonzero(o.gt_ids))
    per_threshold = [average_precision(best[order], n_gt, float(t)) for t in IOU_THRESHOLDS]
    mean = float(np.mean(per_threshold)) if n_gt else float("nan")
    return {"ap_50": per_threshold[0], "ap_75": per_threshold[5], "ap_50_95": mean}
