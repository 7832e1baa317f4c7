"""The evaluation job as the engine sees it: frozen, parsed once at the edge
(``service.documents.evaluation``)."""

from __future__ import annotations

from dataclasses import dataclass

from volumes.box import Box
from volumes.metrics.scores import METRICS, Metric


@dataclass(frozen=True)
class LabelRef:
    """A label array: its container and the dataset in it (paths already confined)."""

    path: str
    dataset: str | None = None

    def __str__(self) -> str:
        return f"{self.path}" + (f" (dataset {self.dataset})" if self.dataset else "")


@dataclass(frozen=True)
class EvaluationJob:
    segmentation: LabelRef
    ground_truth: LabelRef
    metrics: tuple[Metric, ...] = METRICS
    roi: Box | None = None  # (z, y, x) voxels to score; None: the whole volume
    block_shape: tuple[int, int, int] | None = None  # None: whole chunks of the segmentation, ~16 Mi voxels
    blocks_per_task: int = 4
    data_roots: tuple[str, ...] = ()  # resolved; checked again whenever a worker opens a path
