"""The evaluation document: YAML/JSON -> :class:`EvaluationDocument` ->
:class:`workers.evaluation.job.EvaluationJob`.

::

    kind: evaluation
    segmentation: {path: seg.zarr, dataset: mito_seg}   # labels: integer ids, 0 = background
    ground_truth: {path: data/em.zarr, dataset: mito}
    roi: {offset: [0, 0, 0], shape: [64, 512, 512]}      # optional: the voxels to score
    metrics: [adapted_rand, voi, iou, ap]                # default: all four
    compute: {block_shape: [64, 512, 512]}               # default: whole chunks, ~16 Mi voxels

Paths are confined to the data roots as for every job; nothing is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from service.documents.sections import (
    PosTriple,
    RoiSection,
    Section,
    Text,
    box_of,
    located,
    require_kind,
    resolved_roots,
    triple,
    validate,
)
from volumes.metrics.scores import METRICS, Metric
from workers.errors import SpecError
from workers.evaluation.job import EvaluationJob, LabelRef
from workers.limits import DEFAULT_LIMITS, Limits

# Bytes a block costs per voxel while it is counted: both volumes read (up to 8 bytes each), both
# as uint64, their pair keys and the sort's copy.
BLOCK_BYTES_PER_VOXEL = 48


class LabelSection(Section):
    """A label array (integer ids, 0 = background): a container (zarr, N5, HDF5 or a tile set) and
    the dataset in it; (z, y, x), or (1, z, y, x)."""

    path: Text
    dataset: Text | None = None


class EvaluationComputeSection(Section):
    """How the volumes are cut: `block_shape` voxels per block (default: whole chunks of the
    segmentation, about 16 Mi voxels) and `blocks_per_task` blocks in one Dask task."""

    block_shape: PosTriple | None = None
    blocks_per_task: Annotated[int, Field(strict=True, ge=1, le=4096)] = 4


class EvaluationDocument(Section):
    """An evaluation job: a segmentation scored against its ground truth out of core (contingency
    tables per block, merged): adapted Rand error (SNEMI3D's, and scikit-image's), VOI split and
    merge, foreground IoU, MitoEM's instance AP at IoU 0.5 and 0.75 (docs/evaluation.md), over
    the whole volumes or a region of them (`roi`)."""

    kind: Literal["evaluation"]
    segmentation: LabelSection
    ground_truth: LabelSection
    roi: RoiSection | None = None
    metrics: Annotated[list[Metric], Field(min_length=1)] = list(METRICS)
    compute: EvaluationComputeSection = EvaluationComputeSection()


def parse_evaluation(
    doc: object, data_roots: Sequence[str | Path], *, limits: Limits = DEFAULT_LIMITS
) -> EvaluationJob:
    """Validate a ``kind: evaluation`` document and build the job; SpecError naming the field."""
    roots = resolved_roots(data_roots)
    parsed = validate(EvaluationDocument, require_kind(doc, "evaluation"))
    block = triple(parsed.compute.block_shape) if parsed.compute.block_shape is not None else None
    if block is not None:
        check_block_memory(block, limits)
    return EvaluationJob(
        segmentation=_ref(parsed.segmentation, roots, "segmentation"),
        ground_truth=_ref(parsed.ground_truth, roots, "ground_truth"),
        metrics=tuple(m for m in METRICS if m in parsed.metrics),
        roi=box_of(parsed.roi),
        block_shape=block,
        blocks_per_task=parsed.compute.blocks_per_task,
        data_roots=tuple(str(root) for root in roots),
    )


def check_block_memory(block: Sequence[int], limits: Limits) -> None:
    """A block's counting memory within what a task may hold; a SpecError on compute.block_shape."""
    voxels = 1
    for size in block:
        voxels *= int(size)
    need = voxels * BLOCK_BYTES_PER_VOXEL
    if need > limits.task_bytes:
        raise SpecError(
            "compute.block_shape",
            f"a block of {list(block)} needs about {need:,} bytes to count; a task may hold "
            f"{limits.task_bytes:,} (half of PYTC_WORKER_MEMORY_BYTES): give a smaller block",
        )


def _ref(section: LabelSection, roots: Sequence[Path], where: str) -> LabelRef:
    path, dataset = located(section.path, section.dataset, roots, where)
    return LabelRef(path, dataset)
