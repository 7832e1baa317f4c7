"""``pytc evaluate SEG --gt GT``: a segmentation scored against its ground truth, out of core.

The same job as ``kind: evaluation`` (:mod:`service.kinds.evaluation`), built from the flags: paths
inside the data roots, both volumes checked before anything is read (exit 2 naming the flag), then
the blocks counted one after the other in this process, or as tasks on the Dask cluster named by
``--scheduler`` / ``PYTC_SCHEDULER``. Memory is one block of each volume and the merged table,
whatever the volumes' size. The figures go to stdout as a table, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from service.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_SPEC, positive_int
from service.errors import SpecError
from service.kinds.base import AdmitEnv
from service.progress import Progress, ProgressLine
from volumes.metrics.scores import METRICS

# The job's fields, as the flags that set them.
FLAGS = {
    "segmentation.path": "SEG",
    "segmentation.dataset": "--dataset",
    "ground_truth.path": "--gt",
    "ground_truth.dataset": "--gt-dataset",
    "metrics": "--metrics",
    "compute.block_shape": "--block-shape",
    "roi": "--roi",
    "compute.blocks_per_task": "--blocks-per-task",
}

DESCRIPTION = """\
Score a segmentation (integer labels, 0 = background) against its ground truth, block by block:
each block's contingency table (voxels per pair of ids) is counted and the tables summed, so the
figures equal those computed on the whole volume in memory, in memory flat in the volume's size.
Both arrays may be zarr v2/v3, N5, HDF5 or a tile set, (z, y, x) or (1, z, y, x)."""

EPILOG = f"""\
metrics (--metrics, comma-separated; default: all):
  adapted_rand  adapted Rand error as SNEMI3D (and PyTC) define it, its precision and recall,
                and scikit-image's adapted_rand_error beside it
  voi           variation of information: split H(seg|gt), merge H(gt|seg), in bits
  iou           foreground IoU (id != 0 in both / in either)
  ap            MitoEM's instance AP at IoU 0.5 and 0.75 (and 0.5:0.95)
  Ground-truth background (0) is ignored by adapted Rand and VOI. Definitions: docs/evaluation.md.

examples:
  pytc evaluate seg.zarr --dataset mito_seg --gt em.zarr --gt-dataset mito
  pytc evaluate seg.zarr --dataset cells --gt em.zarr --gt-dataset cells --metrics adapted_rand,voi --json
  pytc evaluate seg.zarr --dataset mito_seg --gt em.zarr --gt-dataset mito --scheduler tcp://HOST:8786

The same as a job (pytc run, POST /v1/jobs):
  kind: evaluation
  segmentation: {{path: seg.zarr, dataset: mito_seg}}
  ground_truth: {{path: em.zarr, dataset: mito}}
  metrics: [{", ".join(METRICS)}]

exit codes:
  0    the figures were printed
  1    reading a volume failed (the message names it)
  2    the command line is invalid or a volume cannot be scored (not found, outside the data
       roots, not labels, another shape): the message names the flag
  130  interrupted (Ctrl-C)"""


def add_evaluate_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cmd = commands.add_parser(
        "evaluate",
        help="score a segmentation against its ground truth (adapted Rand, VOI, IoU, AP), out of core",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("segmentation", metavar="SEG", help="the segmentation's container (or the array itself)")
    cmd.add_argument("--dataset", help="the segmentation's array inside SEG (default: SEG is the array)")
    cmd.add_argument("--gt", required=True, metavar="GT", help="the ground truth's container (or the array)")
    cmd.add_argument("--gt-dataset", metavar="DATASET", help="the ground truth's array inside GT")
    cmd.add_argument(
        "--metrics", default=",".join(METRICS),
        help=f"comma-separated, some of {', '.join(METRICS)} (default: all)",
    )  # fmt: skip
    cmd.add_argument(
        "--roi", type=int, nargs=6, metavar=("Z", "Y", "X", "D", "H", "W"),
        help="score only this region: its corner (z, y, x) and its size (default: the whole volumes)",
    )  # fmt: skip
    cmd.add_argument(
        "--block-shape", type=positive_int, nargs=3, metavar=("Z", "Y", "X"),
        help="voxels per block (default: whole chunks of SEG, about 16 Mi voxels)",
    )  # fmt: skip
    cmd.add_argument(
        "--blocks-per-task", type=positive_int, default=4, help="blocks per Dask task (default: 4)"
    )
    cmd.add_argument(
        "--scheduler",
        help="run the blocks on this Dask scheduler, e.g. tcp://HOST:8786 (default: $PYTC_SCHEDULER, "
        "else in this process)",
    )
    cmd.add_argument(
        "--data-root", action="append", type=Path, metavar="DIR",
        help="folder both volumes must lie in; repeatable (default: $PYTC_DATA_ROOTS, else the current "
        "directory); relative paths resolve against the first",
    )  # fmt: skip
    cmd.add_argument("--json", action="store_true", help="print the figures as JSON instead of a table")
    cmd.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    cmd.set_defaults(command=evaluate_command)


def evaluate_command(args: argparse.Namespace) -> int:
    from service.cli import data_roots
    from service.documents.evaluation import parse_evaluation
    from service.kinds.evaluation import check_job_volumes
    from workers.limits import limits_from_env

    roots = tuple(Path(root).resolve() for root in data_roots(args.data_root, os.environ))
    try:
        limits = limits_from_env(os.environ)
        job = parse_evaluation(document_of(args), roots, limits=limits)
        check_job_volumes(job, AdmitEnv(lambda fn, *a: fn(*a), limits))
    except SpecError as err:
        return _flag_failure(err)
    line = None if args.quiet else ProgressLine(sys.stderr)
    started = time.perf_counter()
    try:
        scores = _evaluate(job, args.scheduler or os.environ.get("PYTC_SCHEDULER") or None, line)
    except KeyboardInterrupt:
        _close(line)
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SpecError as err:
        _close(line)
        return _flag_failure(err)
    except OSError as err:
        _close(line)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    _close(line)
    _print(job, scores.to_json(), time.perf_counter() - started, args.json)
    return EXIT_OK


def document_of(args: argparse.Namespace) -> dict[str, Any]:
    """The ``kind: evaluation`` document the flags describe."""
    compute: dict[str, Any] = {"blocks_per_task": args.blocks_per_task}
    if args.block_shape is not None:
        compute["block_shape"] = list(args.block_shape)
    doc: dict[str, Any] = {
        "kind": "evaluation",
        "segmentation": {"path": args.segmentation, "dataset": args.dataset},
        "ground_truth": {"path": args.gt, "dataset": args.gt_dataset},
        "metrics": [m.strip() for m in args.metrics.split(",") if m.strip()],
        "compute": compute,
    }
    if args.roi is not None:
        doc["roi"] = {"offset": args.roi[:3], "shape": args.roi[3:]}
    return doc


def _evaluate(job: Any, scheduler: str | None, line: ProgressLine | None) -> Any:
    from service.kinds.evaluation import field_of
    from volumes.errors import VolumeError
    from workers.errors import PathEscapeError
    from workers.evaluation.run import evaluate_on_client, evaluate_serially

    started = time.perf_counter()

    def report(done: int, total: int) -> None:
        if line is not None:
            line(Progress(done, total, "blocks", time.perf_counter() - started))

    try:
        if scheduler is None:
            return evaluate_serially(job, report)
        from service.cluster import connect

        client = connect(scheduler)
        try:
            return evaluate_on_client(job, client, on_progress=report, stop=threading.Event().is_set)
        finally:
            client.close()
    except (VolumeError, PathEscapeError) as err:
        if isinstance(err, ValueError | PermissionError):  # labels that cannot be scored, a path escaped
            raise SpecError(field_of(err), str(err)) from None
        raise


def _flag_failure(err: SpecError) -> int:
    for field, reason in err.errors:
        flag = FLAGS.get(field.split("[", 1)[0], field)
        print(f"error: {flag}: {reason}" if flag else f"error: {reason}", file=sys.stderr)
    return EXIT_SPEC


def _print(job: Any, scores: dict[str, Any], seconds: float, as_json: bool) -> None:
    from service.kinds.evaluation import EVALUATION

    result = {
        "segmentation": {"path": job.segmentation.path, "dataset": job.segmentation.dataset},
        "ground_truth": {"path": job.ground_truth.path, "dataset": job.ground_truth.dataset},
        "metrics": list(job.metrics),
        "scores": scores,
        "seconds": seconds,
    }
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print("\n".join(EVALUATION.summary(result).lines))


def _close(line: ProgressLine | None) -> None:
    if line is not None:
        line.close()
