"""What runs on a worker: open both volumes (confined to the job's data roots again) and count the
contingency table of a few blocks. The result is the table, a few arrays of one entry per distinct
(gt, pred) pair in those blocks: small, never the voxels."""

from __future__ import annotations

from collections.abc import Sequence

from volumes.box import Box
from volumes.metrics.blockwise import check_pair, table_of_boxes
from volumes.metrics.table import ContingencyTable
from volumes.open import open_volume
from volumes.volume import Volume
from workers.confine import confined, node
from workers.evaluation.job import EvaluationJob, LabelRef


def open_labels(ref: LabelRef, roots: Sequence[str]) -> Volume:
    """The label array, its path resolved inside the data roots again."""
    confined(node(ref.path, ref.dataset), roots)
    return open_volume(ref.path, ref.dataset, labels=True)


def open_pair(job: EvaluationJob) -> tuple[Volume, Volume, tuple[int, int, int]]:
    """Both volumes and their common (z, y, x) shape (LabelError otherwise)."""
    seg = open_labels(job.segmentation, job.data_roots)
    gt = open_labels(job.ground_truth, job.data_roots)
    return seg, gt, check_pair(seg, gt)


def table_task(job: EvaluationJob, boxes: tuple[Box, ...]) -> ContingencyTable:
    """The merged table of ``boxes`` (a Dask task)."""
    seg, gt, _ = open_pair(job)
    return table_of_boxes(seg, gt, boxes)
