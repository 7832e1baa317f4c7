"""``kind: evaluation``: a segmentation scored against its ground truth, out of core.

The volumes are cut into blocks; Dask tasks count each block's contingency table
(:mod:`workers.evaluation`), the driver merges them as they come back and computes the figures
from the merged table (:mod:`volumes.metrics`): adapted Rand error (SNEMI3D's and
scikit-image's), VOI split and merge, foreground IoU, MitoEM's AP-50/AP-75. Nothing is written:
the job's result holds the figures. Progress is counted in blocks; a cancel stops at the next
finished task. Running it again computes it again (it is a read of the volumes, cheap next to the
segmentation that made them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from service.documents.evaluation import EvaluationDocument, check_block_memory, parse_evaluation
from service.errors import JobCancelledError, SpecError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target
from service.progress import Progress, format_duration
from volumes.errors import GeometryError, VolumeError
from volumes.metrics.blockwise import LabelError, block_shape_for, label_shape, region_of
from volumes.volume import Volume
from workers.errors import BlockCancelledError, PathEscapeError
from workers.evaluation.job import EvaluationJob, LabelRef
from workers.evaluation.run import evaluate_on_client
from workers.evaluation.tasks import open_labels

# The figures as a person reads them: (key in the result's ``scores``, label).
FIGURES = (
    ("adapted_rand_error", "adapted Rand error (SNEMI3D)"),
    ("adapted_rand_precision", "  precision"),
    ("adapted_rand_recall", "  recall"),
    ("adapted_rand_error_skimage", "adapted Rand error (scikit-image)"),
    ("voi_split", "VOI split"),
    ("voi_merge", "VOI merge"),
    ("voi", "VOI"),
    ("foreground_iou", "foreground IoU"),
    ("ap_50", "AP-50 (MitoEM)"),
    ("ap_75", "AP-75 (MitoEM)"),
    ("ap_50_95", "AP-50:95"),
)


class EvaluationKind:
    name = "evaluation"
    document = EvaluationDocument

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> EvaluationJob:
        return parse_evaluation(doc, env.roots, limits=env.limits)

    def target(self, job: EvaluationJob) -> Target:
        """Nothing is written: the target only keeps one evaluation of a pair active at a time."""
        return Target(
            job.segmentation.path,
            f"evaluation of {job.segmentation.dataset or 'the array'} vs {job.ground_truth}",
        )

    def admit(self, job: EvaluationJob, env: AdmitEnv) -> None:
        """Both volumes open, hold integer labels, have one shape; a block fits a task."""
        check_job_volumes(job, env)

    def run(self, job: EvaluationJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        started = time.perf_counter()

        def report(done: int, total: int) -> None:
            env.report(Progress(done, total, "blocks", time.perf_counter() - started))

        try:
            scores = evaluate_on_client(
                job,
                env.client,
                on_progress=report,
                stop=env.cancel.is_set,
                retries=env.retries,
                priority=env.priority,
            )
        except BlockCancelledError as err:
            raise JobCancelledError(str(err)) from None
        except (LabelError, VolumeError, PathEscapeError) as err:
            raise SpecError(field_of(err), str(err)) from None
        return {
            "segmentation": _ref_json(job.segmentation),
            "ground_truth": _ref_json(job.ground_truth),
            "metrics": list(job.metrics),
            "scores": scores.to_json(),
            "seconds": time.perf_counter() - started,
        }

    def summary(self, result: Mapping[str, Any]) -> Summary:
        scores = result.get("scores") or {}
        seconds = float(result.get("seconds") or 0.0)
        head = (
            f"evaluated {scores.get('voxels', 0):,} voxels in {format_duration(seconds)}: "
            f"{scores.get('gt_objects', 0)} ground-truth objects, {scores.get('pred_objects', 0)} predicted"
        )
        return Summary((head, *score_lines(scores)), None)


EVALUATION = EvaluationKind()


def score_lines(scores: Mapping[str, Any]) -> list[str]:
    """One line per figure present: ``label  value`` (n/a where undefined)."""
    width = max(len(label) for _, label in FIGURES)
    lines = []
    for key, label in FIGURES:
        if key in scores:
            value = scores[key]
            shown = (
                "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.6f}"
            )
            lines.append(f"{label:<{width}}  {shown}")
    return lines


def check_job_volumes(job: EvaluationJob, env: AdmitEnv) -> tuple[Volume, Volume]:
    """Open both volumes, each problem a SpecError on its own field."""
    seg = _open(job.segmentation, job, "segmentation")
    gt = _open(job.ground_truth, job, "ground_truth")
    shapes = []
    for volume, field, what in ((seg, "segmentation", "segmentation"), (gt, "ground_truth", "ground truth")):
        try:
            shapes.append(label_shape(volume, what))
        except LabelError as err:
            raise SpecError(_volume_field(field, volume), str(err)) from None
    if shapes[0] != shapes[1]:
        raise SpecError(
            "ground_truth.path",
            f"{job.ground_truth} has shape {shapes[1]}, the segmentation {job.segmentation} {shapes[0]}; "
            "they must cover the same voxels",
        )
    try:
        region = region_of(shapes[0], job.roi)
    except GeometryError as err:
        raise SpecError("roi", str(err)) from None
    check_block_memory(job.block_shape or block_shape_for(region.shape, seg.chunks), env.limits)
    return seg, gt


def _open(ref: LabelRef, job: EvaluationJob, field: str) -> Volume:
    try:
        return open_labels(ref, job.data_roots)
    except (VolumeError, PathEscapeError, OSError) as err:
        raise SpecError(
            f"{field}.dataset" if ref.dataset and _dataset_missing(err) else f"{field}.path", str(err)
        ) from None


def _dataset_missing(err: Exception) -> bool:
    return "no dataset" in str(err)


def _volume_field(field: str, volume: Volume) -> str:
    return f"{field}.dataset" if volume.dataset else f"{field}.path"


def field_of(err: Exception) -> str:
    """The field a volume's problem found while running belongs to."""
    if isinstance(err, GeometryError):
        return "roi"
    return "ground_truth.path" if str(err).startswith("ground truth") else "segmentation.path"


def _ref_json(ref: LabelRef) -> dict[str, Any]:
    return {"path": ref.path, "dataset": ref.dataset}
