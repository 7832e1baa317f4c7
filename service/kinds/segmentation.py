"""``kind: segmentation``: instance labels with global IDs from a prediction, equal to PyTC's decoder
on the whole volume.

The run (:class:`workers.segmentation.run.SegmentationRun`) owns the order of the steps, what an
earlier run finished and the final check; this kind checks the job and pumps the run's tasks
through Dask, a few in flight per worker, stage by stage, then the label pyramid's
(:func:`service.kinds.stages.drive_pyramid`). Progress is counted in steps (one block's
step, or a merge, and a pyramid chunk), with each stage's count in ``details["parts"]``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import Any

from distributed import Client, Future

from service.documents.segmentation import SegmentationDocument, parse_segmentation
from service.errors import JobCancelledError, JobFailedError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target
from service.kinds.stages import drive_pyramid
from service.kinds.waiting import CANCEL_WAIT_S, HEARTBEAT_S, WAKE_S, wait_for_tasks, wait_some
from service.progress import Progress, format_duration
from workers.errors import BlockCancelledError, IncompleteRunError
from workers.inference.rundir import RunDir
from workers.segmentation.job import SegmentationJob, check_input, open_prediction
from workers.segmentation.run import SegmentationRun, Task, output_state
from workers.segmentation.rundir import SegRunDir
from workers.segmentation.steps import Plan, run_step


class SegmentationKind:
    name = "segmentation"
    document = SegmentationDocument

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> SegmentationJob:
        return parse_segmentation(doc, env.roots, limits=env.limits)

    def target(self, job: SegmentationJob) -> Target:
        return Target(job.output.path, job.output.dataset)

    def admit(self, job: SegmentationJob, env: AdmitEnv) -> None:
        """The input is a prediction with the decoder's channels, within the bounds; the output is
        absent, this job's own, or ``overwrite`` is set (else OutputExistsError). Nothing written."""
        source = open_prediction(job)
        check_input(job, source, env.limits.max_input_voxels)
        output_state(Plan(job, tuple(source.shape), job.layout_key(tuple(source.shape), source.dtype)))

    def run(self, job: SegmentationJob, env: RunEnv, checked: Any = None) -> dict[str, Any]:
        run = SegmentationRun.start(job, env.limits.max_input_voxels)
        if run.resumed:
            env.notice(f"resuming the existing output {job.output.path} ({job.output.dataset})")
        driver = _Driver(run, env)
        driver.drive()
        try:
            drive_pyramid(run.pyramid_stage(), env, driver.report)
            return run.complete()
        except IncompleteRunError as err:
            raise JobFailedError(str(err)) from err

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

    def summary(self, result: Mapping[str, Any]) -> Summary:
        line = (
            f"succeeded: {result.get('output_path')} (dataset {result.get('dataset')!r}), "
            f"{result.get('objects')} objects ({result.get('dtype')}), table {result.get('table')}, "
            f"{result.get('blocks_total')} blocks in {format_duration(float(result.get('seconds') or 0.0))}"
        )
        output = result.get("output_path")
        return Summary((line,), str(output) if output is not None else None)


SEGMENTATION = SegmentationKind()


class _Driver:
    def __init__(self, run: SegmentationRun, env: RunEnv) -> None:
        self.run, self.env = run, env
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
        parts = self.run.counts()
        done = sum(d for d, _ in parts.values())
        total = sum(t for _, t in parts.values())
        elapsed = time.perf_counter() - self.run.started
        self.env.report(Progress(done, total, "steps", elapsed, details={"parts": parts}))

    def stop(self) -> None:
        self.run.request_cancel()
        self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        wait_for_tasks(self.client, (self.prefix,), CANCEL_WAIT_S)
