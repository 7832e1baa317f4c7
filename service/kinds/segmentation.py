"""``kind: segmentation``: instance labels with global IDs from a prediction, equal to PyTC's decoder
on the whole volume.

With ``inference:`` instead of ``input:``, the inference job runs first as a stage of the same job
(:data:`service.kinds.inference.INFERENCE`, resumable from its done blocks; a finished one runs
nothing) and its prediction is kept; the segmentation then reads it. Progress counts both stages'
steps, the inference's under ``details["parts"]["inference"]``.

The run (:class:`workers.segmentation.run.SegmentationRun`) owns the order of the steps, what an
earlier run finished and the final check; this kind checks the job and pumps the run's tasks
through Dask, a few in flight per worker, stage by stage, then the label pyramid's
(:func:`service.kinds.stages.drive_pyramid`). Progress is counted in steps (one block's
step, or a merge, and a pyramid chunk), with each stage's count in ``details["parts"]``.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import Client, Future

from service.documents.segmentation import SegmentationDocument, parse_segmentation, prefixed
from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target
from service.kinds.inference import INFERENCE, Checked
from service.kinds.stages import drive_pyramid
from service.kinds.waiting import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S, wait_for_tasks, wait_some
from service.progress import Progress, format_duration
from workers.errors import BlockCancelledError, IncompleteRunError, SpecError
from workers.inference.checks import open_input, roi_shape
from workers.inference.rundir import RunDir
from workers.segmentation.job import SegmentationJob, channels_read, check_input, open_prediction
from workers.segmentation.run import SegmentationRun, Task, output_state
from workers.segmentation.rundir import SegRunDir
from workers.segmentation.steps import Plan, run_step

STAGE = "inference."  # what the inference stage's errors are named under


@dataclass(frozen=True)
class StageChecked:
    """What admission learnt of the inference stage, and the prediction's shape it will write."""

    stage: Checked
    shape: tuple[int, ...]


class SegmentationKind:
    name = "segmentation"
    document = SegmentationDocument

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> SegmentationJob:
        return parse_segmentation(doc, env.roots, limits=env.limits, resolve_model=env.resolve_model)

    def target(self, job: SegmentationJob) -> Target:
        return Target(job.output.path, job.output.dataset)

    def admit(self, job: SegmentationJob, env: AdmitEnv) -> StageChecked | None:
        """The input is a prediction with the decoder's channels, within the bounds; the output is
        absent, this job's own, or ``overwrite`` is set (else OutputExistsError). Nothing written.
        An inference stage is admitted as its own job would be (errors named ``inference.<field>``),
        and the prediction it will write is checked from its model's channels."""
        if job.inference is None:
            source = open_prediction(job)
            check_input(job, source, env.limits.max_input_voxels)
            output_state(Plan(job, tuple(source.shape), job.layout_key(tuple(source.shape), source.dtype)))
            return None
        try:
            stage = INFERENCE.admit(job.inference, env)
        except SpecError as err:
            raise prefixed(err, STAGE) from None
        shape = (stage.info.out_channels, *roi_shape(job.inference, stage.source))
        check_stage_channels(job, shape[0])
        dtype = np.dtype(job.inference.output.dtype)
        output_state(Plan(job, shape, job.layout_key(shape, dtype)))
        return StageChecked(stage, shape)

    def run(self, job: SegmentationJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        stage: dict[str, Any] | None = None
        done_before: dict[str, list[int]] = {}
        if job.inference is not None:
            stage = self.run_stage(job, env, checked if isinstance(checked, StageChecked) else None)
            done_before = {"inference": [int(stage.get("steps_total") or 0)] * 2}
        run = SegmentationRun.start(job, env.limits.max_input_voxels)
        if run.resumed:
            env.notice(f"resuming the existing output {job.output.path} ({job.output.dataset})")
        driver = _Driver(run, env, done_before)
        driver.drive()
        try:
            drive_pyramid(run.pyramid_stage(), env, driver.report)
            result = run.complete()
        except IncompleteRunError as err:
            raise JobFailedError(str(err)) from err
        return result if stage is None else {**result, "inference": stage}

    def run_stage(self, job: SegmentationJob, env: RunEnv, checked: StageChecked | None) -> dict[str, Any]:
        """The inference stage, its progress reported as the whole job's (the segmentation's steps
        counted from the plan it will have); its result, with its last step count."""
        assert job.inference is not None
        last: list[Progress] = []
        if checked is not None:
            spatial = checked.shape[1:]
        else:
            try:
                spatial = tuple(roi_shape(job.inference, open_input(job.inference)))
            except SpecError as err:
                raise prefixed(err, STAGE) from None
        later = _segmentation_steps(job, (1, *spatial))  # the channels change no step count

        def report(progress: Progress) -> None:
            last[:] = [progress]
            parts = {"inference": [progress.done, progress.total], "segmentation": [0, later]}
            env.report(
                Progress(
                    progress.done, progress.total + later, "steps", progress.elapsed_s, progress.rate,
                    details={**progress.details, "stage": "inference", "parts": parts},
                )
            )  # fmt: skip

        env.notice(f"inference stage: {job.inference.output.path} ({job.inference.output.dataset})")
        try:
            result = INFERENCE.run(
                job.inference,
                dataclasses.replace(env, report=report),
                checked.stage if checked is not None else None,
            )
        except SpecError as err:
            raise prefixed(err, STAGE) from None
        steps = last[0].total if last else 0
        return {**result, "steps_total": steps}

    def discard(self, job: SegmentationJob, env: RunEnv | None) -> None:
        """The job failed for good: its run folders (local labels, numbers) go; a rerun starts over."""
        folders = [
            f for f in RunDir.all_for_dataset(job.output.path, job.output.dataset).glob("*") if f.is_dir()
        ]
        for folder in folders:
            SegRunDir(folder).request_cancel()
        if env is not None:
            wait_for_tasks(env.client, tuple(f"pytc-seg-{f.name}-" for f in folders), CANCEL_WAIT_S)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
        if job.inference is not None:
            INFERENCE.discard(job.inference, env)

    def summary(self, result: Mapping[str, Any]) -> Summary:
        line = (
            f"succeeded: {result.get('output_path')} (dataset {result.get('dataset')!r}), "
            f"{result.get('objects')} objects ({result.get('dtype')}), table {result.get('table')}, "
            f"{result.get('blocks_total')} blocks in {format_duration(float(result.get('seconds') or 0.0))}"
        )
        lines = [line]
        images = result.get("images")
        if isinstance(images, list) and len(images) > 1:
            lines = [
                f"succeeded: {result.get('output_path')} (group {result.get('dataset')!r}), {len(images)} "
                f"labels images ({result.get('dtype')}), {result.get('blocks_total')} blocks in "
                f"{format_duration(float(result.get('seconds') or 0.0))}"
            ]
            lines += [
                f"  threshold {i.get('threshold')}: {i.get('dataset')!r}, {i.get('objects')} objects, "
                f"table {i.get('table')}"
                for i in images
                if isinstance(i, Mapping)
            ]
        stage = result.get("inference")
        if isinstance(stage, Mapping):
            lines.append(
                f"  its inference stage: {stage.get('output_path')} (image {stage.get('dataset')!r}), "
                f"{stage.get('blocks_total')} blocks ({stage.get('blocks_skipped')} already done), kept"
            )
        output = result.get("output_path")
        return Summary(tuple(lines), str(output) if output is not None else None)


SEGMENTATION = SegmentationKind()


def check_stage_channels(job: SegmentationJob, channels: int) -> None:
    """The decoder's channels are among those the inference stage's model writes."""
    wanted = channels_read(job)
    if max(wanted) < channels:
        return
    field = "channels" if job.input.channels is not None else "decoder.name"
    raise SpecError(
        field,
        f"decoder {job.decoder.name} reads channel(s) {list(wanted)}; the inference stage's model "
        f"writes {channels} (0..{channels - 1})",
    )


def _segmentation_steps(job: SegmentationJob, shape: tuple[int, ...]) -> int:
    """The steps a segmentation of a prediction of ``shape`` runs before its pyramid."""
    plan = Plan(job, shape, "")
    blocks = sum(1 for _ in plan.grid.indices())
    once = 2 if plan.dilates or plan.agglomerates else 1  # the numbering; the sizes or the merging after it
    return blocks * len(plan.block_steps()) + once


class _Driver:
    def __init__(self, run: SegmentationRun, env: RunEnv, before: dict[str, list[int]] | None = None) -> None:
        self.run, self.env = run, env
        self.before = before or {}  # the stages finished before this one: {name: [done, total]}
        self.client: Client = env.client
        workers = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        self.limit = max(2, 2 * workers)
        self.in_flight: dict[Future, Task] = {}
        plan = run.plan
        self.prefix = f"pytc-seg-{plan.layout_key}-{plan.attempt}-"

    def drive(self) -> None:
        self.report()
        last = time.monotonic()
        try:
            while True:
                ready = [t for t in self.run.ready() if t not in self.in_flight.values()]
                while ready and len(self.in_flight) < self.limit:
                    task = ready.pop(0)
                    self.in_flight[self.submit(task)] = task
                if not self.in_flight:
                    return
                done = wait_some(list(self.in_flight), WAKE_S)
                if self.env.cancel.is_set():
                    self.stop()
                    raise JobCancelledError("job cancelled")
                for future in done:
                    self.finish(future, self.in_flight.pop(future))
                if done or time.monotonic() - last >= HEARTBEAT_S:
                    self.report()
                    last = time.monotonic()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            if self.in_flight:
                self.client.cancel(list(self.in_flight))

    def submit(self, task: Task) -> Future:
        key = f"{self.prefix}s{task.step}-{'_'.join(map(str, task.block))}"
        return self.client.submit(
            run_step,
            task.plan,
            task.step,
            task.block,
            key=key,
            retries=self.env.retries,
            pure=False,
            priority=self.env.priority,
        )

    def finish(self, future: Future, task: Task) -> None:
        try:
            if future.status == "finished":
                self.run.finished(task)
                return
            error = future.exception() if future.status == "error" else None
        finally:
            future.release()
        if isinstance(error, BlockCancelledError):
            raise JobCancelledError(f"job cancelled while block {task.block} ran")
        raise JobFailedError(
            f"block {task.block} (step {task.step}) failed after {self.env.retries} retries: {error!r}"
        )

    def report(self) -> None:
        parts = {**self.before, **self.run.counts()}
        done = sum(d for d, _ in parts.values())
        total = sum(t for _, t in parts.values())
        elapsed = time.perf_counter() - self.run.started
        self.env.report(Progress(done, total, "steps", elapsed, details={"parts": parts}))

    def stop(self) -> None:
        self.run.request_cancel()
        self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        wait_for_tasks(self.client, (self.prefix,), CANCEL_WAIT_S)
