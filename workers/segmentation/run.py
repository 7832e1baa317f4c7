"""The segmentation run: which steps come next, what an earlier run finished, and the final check.

``SegmentationRun.start`` opens the input once, checks it is a prediction, and decides about the
output: absent, this job's own (resumed; complete already: nothing to do), or another's
(``OutputExistsError``, or deleted first with ``overwrite``). The steps go in stages, each stage a
barrier (every block's step before any of the next stage)::

    label (blocks) -> link (blocks) -> number (once) [-> rank (blocks) -> dilate (blocks) -> sizes (once)]
    -> write (blocks) -> pyramid (workers.pyramid, rule ``mode``, level after level) -> complete

bc_connected has no rank step: its dilate step reads the block's local labels and its neighbours'
strips (``steps.Plan.by_strips``).

affinity_agglomerate: label, link, number (its fragments: components of the steepest edges) ->
edges (blocks: the region graph) -> agglomerate (once: the whole graph, every threshold) -> write
(every threshold's image) -> the pyramid of each image.

``complete`` checks every block's write record and every pyramid task's marker, writes the table of
objects, marks the output complete and drops the run folder: success is never reported over a hole.
``run_serially`` is the loop in one process; ``service.kinds.segmentation`` pumps the same tasks through Dask.
"""

from __future__ import annotations

import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from volumes.detect import node_kind
from volumes.errors import VolumeError, VolumeNotFoundError
from volumes.labels.merge import Objects, table_rows
from volumes.labels.output import table_path, write_table
from volumes.ome import image_level0, image_levels
from volumes.open import open_volume
from volumes.output import delete_dataset
from volumes.pyramid import Factors, LabelRule
from workers.confine import confined
from workers.errors import IncompleteRunError, OutputExistsError
from workers.inference.rundir import RunDir
from workers.pyramid import PyramidStage, PyramidStages, run_pyramid_task
from workers.segmentation.job import SegmentationJob, check_input, open_prediction
from workers.segmentation.steps import (
    AGGLOMERATE,
    EDGES,
    NUMBER,
    ONCE,
    OUTPUT_ATTRS_KEY,
    SIZES,
    WRITE,
    Index,
    Plan,
    group_record,
    label_levels,
    made_by,
    objects_file,
    write_group,
)

LABEL_RULE: LabelRule = "mode"  # the label pyramid's rule: each coarse voxel the most frequent id under it

STEP_NAMES = {
    1: "label", 2: "link", 3: "rank", 4: "dilate", 5: "write", 6: "edges",
    10: "number", 11: "sizes", 12: "agglomerate",
}  # fmt: skip


@dataclass(frozen=True)
class Task:
    plan: Plan
    step: int
    block: Index


class SegmentationRun:
    def __init__(
        self, plan: Plan, already_complete: bool, resumed: bool, levels: tuple[Factors, ...] = ((1, 1, 1),)
    ) -> None:
        self.plan = plan
        job = plan.job
        key = f"pytc-seg-{plan.layout_key}-{plan.attempt}-"
        stages = [
            PyramidStage(
                job.output.path,
                dataset,
                job.output.format,
                ((1, 1, 1),) if already_complete else levels,
                job.output.chunks,
                plan.grid.shape,
                LABEL_RULE,
                plan.run_dir.root / "pyramid" / (str(i) if plan.grouped else ""),
                job.data_roots,
                f"{key}pyr-t{i}-" if plan.grouped else key,
            )
            for i, (dataset, _) in enumerate(plan.images())
        ]
        self.pyramid: PyramidStage | PyramidStages = (
            stages[0] if len(stages) == 1 else PyramidStages(stages, key)
        )
        self.already_complete = already_complete
        self.resumed = resumed
        self.started = time.perf_counter()
        self.done: set[tuple[int, Index]] = set()
        self.ledger = plan.run_dir.ledger(plan.grid.counts)
        for step in self.stages_flat():
            self.done |= {(step, b) for b in self.ledger.done_blocks(step)}
        if already_complete:
            self.done = {(s, b) for s, blocks in self.stages() for b in blocks}
        self.skipped = len(self.done)

    @classmethod
    def start(cls, job: SegmentationJob, max_voxels: int | None = None) -> SegmentationRun:
        source = open_prediction(job)
        check_input(job, source, max_voxels)
        plan = Plan(
            job, tuple(source.shape), job.layout_key(tuple(source.shape), source.dtype), secrets.token_hex(4)
        )
        complete, resumed = _output_state(plan)
        plan.run_dir.clear_cancel()
        return cls(plan, complete, resumed, label_levels(plan, source))

    def stages(self) -> list[tuple[int, list[Index]]]:
        blocks = list(self.plan.grid.indices())
        steps = self.plan.block_steps()
        out: list[tuple[int, list[Index]]] = [(steps[0], blocks), (steps[1], blocks), (NUMBER, [ONCE])]
        if self.plan.agglomerates:
            out += [(EDGES, blocks), (AGGLOMERATE, [ONCE])]
        elif self.plan.dilates:  # rank and dilate (watershed: grow), or bc_connected's dilate alone
            out += [*((step, blocks) for step in steps[2:-1]), (SIZES, [ONCE])]
        return [*out, (WRITE, blocks)]

    def stages_flat(self) -> list[int]:
        return [step for step, _ in self.stages()]

    def ready(self) -> list[Task]:
        """The tasks of the first stage not finished (none left: empty)."""
        for step, blocks in self.stages():
            todo = [Task(self.plan, step, b) for b in blocks if (step, b) not in self.done]
            if todo:
                return todo
        return []

    def finished(self, task: Task) -> None:
        """The task returned: its step is recorded done (in the ledger, written now)."""
        if (task.step, task.block) not in self.done:
            self.ledger.record(task.step, task.block)
        self.done.add((task.step, task.block))

    def counts(self) -> dict[str, list[int]]:
        parts = {
            STEP_NAMES[step]: [sum(1 for b in blocks if (step, b) in self.done), len(blocks)]
            for step, blocks in self.stages()
        }
        if self.pyramid.chunks_total:
            parts["pyramid"] = [self.pyramid.chunks_done, self.pyramid.chunks_total]
        return parts

    def pyramid_stage(self) -> PyramidStage | PyramidStages:
        """The label pyramid's tasks, once every block's write is recorded (level 0 whole)."""
        self._check_written()
        return self.pyramid

    def _check_written(self) -> None:
        if self.already_complete:
            return
        plan = self.plan
        missing = [b for b in plan.grid.indices() if not self.ledger.is_done(WRITE, b)]
        if missing:
            raise IncompleteRunError(
                f"{len(missing)} blocks are not recorded written, first {missing[0]}; "
                "the output stays marked incomplete"
            )

    def request_cancel(self) -> None:
        self.plan.run_dir.request_cancel()

    def complete(self) -> dict[str, Any]:
        """Success only over a whole output: every block's write must be recorded and every pyramid
        task's marker on disk."""
        plan, job = self.plan, self.plan.job
        self._check_written()
        self.pyramid.check()
        images = plan.images()
        if not self.already_complete:
            job.output_node()
            confined(plan.run_dir.root, job.data_roots)
            for i, (dataset, _) in enumerate(images):
                with np.load(objects_file(plan, i)) as data:
                    objects = Objects(data["count"], data["first"], data["lo"], data["hi"], data["sums"])
                    final = data["table_final"] if "table_final" in data.files else data["final"]
                rows = table_rows(objects, final)
                write_table(table_path(job.output.path, dataset), rows)
                volume = open_volume(job.output.path, dataset, mode="r+")
                record = dict(volume.attrs.get(OUTPUT_ATTRS_KEY, {}))
                extra = {"complete": True, "objects": int(rows.shape[0]), "max_id": int(final.max(initial=0))}
                volume.set_attrs({OUTPUT_ATTRS_KEY: {**record, **extra}})
            if plan.grouped:
                write_group(plan, complete=True)
            self.ledger.close()
            shutil.rmtree(RunDir.all_for_dataset(job.output.path, job.output.dataset), ignore_errors=True)
        described = []
        for dataset, threshold in images:
            volume = open_volume(job.output.path, dataset)
            record = volume.attrs.get(OUTPUT_ATTRS_KEY, {})
            described.append(
                {
                    "dataset": dataset,
                    "threshold": threshold,
                    "table": str(table_path(job.output.path, dataset)),
                    "objects": record.get("objects"),
                    "max_id": record.get("max_id"),
                    "dtype": str(volume.dtype),
                    "levels": len(image_levels(Path(job.output.path, dataset), job.output.format)),
                }
            )
        first = described[0]
        out = {
            "output_path": job.output.path,
            "dataset": job.output.dataset,
            **{k: first[k] for k in ("table", "objects", "max_id", "dtype", "levels")},
            "pyramid_seconds": self.pyramid.seconds,
            "blocks_total": plan.grid.counts[0] * plan.grid.counts[1] * plan.grid.counts[2],
            "steps_skipped": self.skipped,
            "resumed": self.resumed,
            "seconds": time.perf_counter() - self.started,
        }
        if plan.agglomerates:
            out["images"] = described
        return out


def output_state(plan: Plan) -> str:
    """``absent``, ``resume`` (this job's own, incomplete), ``complete`` (this job's own, done) or
    ``replace`` (another's, with ``overwrite``); another's without ``overwrite`` is an
    OutputExistsError. Nothing is changed here."""
    job = plan.job
    if plan.grouped or group_record(plan) is not None:  # several images: the group's record decides
        return _group_state(plan)
    if not Path(job.output.path, job.output.dataset).exists():  # the container may hold only the run folder
        return "resume" if plan.run_dir.root.is_dir() else "absent"
    try:
        existing = open_volume(job.output.path, job.output.dataset)
    except VolumeNotFoundError:
        return "resume" if plan.run_dir.root.is_dir() else "absent"
    except (VolumeError, OSError) as err:  # a damaged or unreadable output
        if not job.output.overwrite:
            raise OutputExistsError(
                "output.path", f"{job.output.path} exists and is not a volume this job can resume ({err})"
            ) from err
        return "replace"
    if made_by(plan, existing.attrs, existing.shape):
        return "complete" if existing.attrs.get(OUTPUT_ATTRS_KEY, {}).get("complete") else "resume"
    if not job.output.overwrite:
        raise OutputExistsError(
            "output.path",
            f"{job.output.path} (dataset {job.output.dataset!r}) exists and was not made by this job; "
            "set overwrite: true to replace it, or choose another output.path or output.dataset",
        )
    return "replace"


def _group_state(plan: Plan) -> str:
    """:func:`output_state` for several images in the group ``output.dataset``: the group's record."""
    job = plan.job
    node = Path(job.output.path, job.output.dataset)
    if not node.exists():
        return "resume" if plan.run_dir.root.is_dir() else "absent"
    record = group_record(plan)
    if record is not None and record.get("layout_key") == plan.layout_key:
        return "complete" if record.get("complete") else "resume"
    if not job.output.overwrite:
        raise OutputExistsError(
            "output.path",
            f"{job.output.path} (dataset {job.output.dataset!r}) exists and was not made by this job; "
            "set overwrite: true to replace it, or choose another output.path or output.dataset",
        )
    kind = node_kind(node)
    replaceable = (kind is not None and kind[1] == "array") or image_level0(node, kind[0] if kind else "n5")
    if record is None and not replaceable:
        raise OutputExistsError(
            "output.dataset",
            f"{node} is a group that no segmentation job made; overwrite does not replace it: "
            "choose another output.dataset",
        )
    return "replace"


def _output_state(plan: Plan) -> tuple[bool, bool]:
    """(complete already, resumed); another job's output replaced (``overwrite``) is deleted first,
    with the run folders of what it replaces."""
    state = output_state(plan)
    if state != "replace":
        return state == "complete", state != "absent"
    job = plan.job
    job.output_node()
    node = Path(job.output.path, job.output.dataset)
    if node.exists() and group_record(plan) is not None:  # a group of labels images
        shutil.rmtree(node)
    elif node.exists():
        delete_dataset(job.output.path, job.output.dataset)
    shutil.rmtree(RunDir.all_for_dataset(job.output.path, job.output.dataset), ignore_errors=True)
    return False, False


def run_serially(
    job: SegmentationJob, on_step: Callable[[SegmentationRun], None] | None = None
) -> dict[str, Any]:
    """Every step in this process, in order (tests and small volumes)."""
    from workers.segmentation.steps import run_step

    run = SegmentationRun.start(job)
    for task in _all(run):
        run_step(task.plan, task.step, task.block)
        run.finished(task)
        if on_step is not None:
            on_step(run)
    stage = run.pyramid_stage()
    while (pyramid_task := stage.next_task()) is not None:
        run_pyramid_task(pyramid_task)
        stage.finished(pyramid_task)
    return run.complete()


def _all(run: SegmentationRun) -> Iterator[Task]:
    while tasks := run.ready():
        yield from tasks
