"""``kind: inference``: a model over a volume, written as a (c, z, y, x) array.

The engine owns the run (:class:`workers.inference.run.InferenceRun`: output creation, the order of
the two passes, lost partial sums, the final check and the completion mark). This kind only checks
the job, and pumps the run's tasks through Dask: a few in flight per worker, pass 2 ahead of pass 1,
each task reported back to the run when it ends. Progress counts finished blocks.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from distributed import Client, Future, wait

from models.errors import ModelError
from models.ref import ModelInfo, ModelRef
from service.documents.inference import InferenceDocument, parse_inference
from service.errors import JobCancelledError, JobFailedError, SpecError
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, Summary, Target, WorkerCall
from service.progress import Progress, format_duration
from volumes.lru import LRU
from volumes.volume import Volume
from workers.errors import BlockCancelledError, IncompleteRunError
from workers.inference.checks import (
    OutputState,
    check_input,
    check_model,
    open_input,
    output_state,
    roi_shape,
)
from workers.inference.job import InferenceJob
from workers.inference.readahead import task_key
from workers.inference.run import InferenceRun
from workers.inference.tasks import BlockTask, inspect_model, run_block
from workers.resources import ONE_ACCELERATOR

log = logging.getLogger(__name__)

CANCEL_WAIT_S = 60.0  # how long a cancel waits for running blocks to stop at their next batch
PASS2_PRIORITY = 10  # pass-2 tasks run before queued pass-1 tasks: they free scratch


@dataclass(frozen=True)
class Checked:
    """What admission learnt, for a run that starts right after it in the same process."""

    info: ModelInfo
    output: OutputState
    source: Volume


class InferenceKind:
    name = "inference"
    document = InferenceDocument

    def __init__(self) -> None:
        # Model checks by (reference, patch size, the files' size and mtime): submitting many jobs
        # with one model asks a worker once.
        self._models: LRU[ModelInfo] = LRU(256)

    def parse(self, doc: Mapping[str, Any], env: ParseEnv) -> InferenceJob:
        return parse_inference(doc, env.roots, resolve_model=env.resolve_model)

    def target(self, job: InferenceJob) -> Target:
        return Target(job.output.path, job.output.dataset)

    def admit(self, job: InferenceJob, env: AdmitEnv) -> Checked:
        """The input holds the ROI, the model loads on a worker and fits the input and the heads,
        and the output is absent or this job's own (else OutputExistsError, unless overwrite)."""
        source = open_input(job)
        check_input(job, source)
        info = self.model_info(job, env.on_worker)
        check_model(job, info, source)
        return Checked(info, output_state(job, info.sha256, roi_shape(job, source)), source)

    def model_info(self, job: InferenceJob, on_worker: WorkerCall) -> ModelInfo:
        ref, patch = job.model, job.window.patch_size
        for path in (ref.path, ref.checkpoint):
            if path is not None and not os.path.isfile(path):
                raise SpecError(_model_field(ref), f"{path} does not exist or is not a file")
        key = (ref, patch, _files_signature(ref))
        info = self._models.get(key)
        if info is None:
            try:
                info = on_worker(inspect_model, ref, patch)
            except (ModelError, OSError) as err:  # a model file the worker cannot load or read
                raise SpecError(_model_field(ref), str(err)) from err
            self._models.put(key, info)
        return info

    def run(self, job: InferenceJob, env: RunEnv, checked: Checked | None = None) -> dict[str, Any]:
        if checked is None:
            info = self.model_info(job, lambda fn, *args: _on_a_worker(env.client, fn, *args))
            run = InferenceRun.start(job, info)
        else:
            run = InferenceRun.start(job, checked.info, source=checked.source, checked=checked.output)
        if run.summary.resumed:
            env.notice(f"resuming the existing output {job.output.path} ({job.output.dataset})")
        _Driver(run, env).drive()
        try:
            return run.complete().to_json()
        except IncompleteRunError as err:
            raise JobFailedError(str(err)) from err

    def summary(self, result: Mapping[str, Any]) -> Summary:
        line = (
            f"succeeded: {result.get('output_path')} (dataset {result.get('dataset')!r}), "
            f"{result.get('blocks_total')} blocks ({result.get('blocks_skipped')} already done) "
            f"in {format_duration(float(result.get('seconds') or 0.0))}"
        )
        output = result.get("output_path")
        return Summary((line,), str(output) if output is not None else None)


INFERENCE = InferenceKind()


class _Driver:
    """Keeps a few of the run's tasks in flight on Dask until none is left."""

    def __init__(self, run: InferenceRun, env: RunEnv) -> None:
        self.run, self.env = run, env
        self.client: Client = env.client
        workers = len(self.client.scheduler_info(n_workers=-1).get("workers", {}))
        self.limit = max(4, 2 * workers + 2)
        self.in_flight: dict[Future, BlockTask] = {}
        self.key_prefix = f"pytc-{run.layout_key}-"

    def drive(self) -> None:
        self.report()
        try:
            while True:
                while len(self.in_flight) < self.limit and (task := self.run.next_task()) is not None:
                    self.in_flight[self.submit(task)] = task
                if not self.in_flight:
                    return
                done = _wait_some(list(self.in_flight))
                if self.env.cancel.is_set():
                    self.stop()
                    raise JobCancelledError(
                        f"job cancelled with {self.run.blocks_done}/{self.run.plan.n_blocks} blocks done"
                    )
                for future in done:
                    task = self.in_flight.pop(future)
                    self.run.finished(task, self.result(future, task))
                if done:
                    self.report()
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            if self.in_flight:
                self.client.cancel(list(self.in_flight))

    def submit(self, task: BlockTask) -> Future:
        return self.client.submit(
            run_block,
            task,
            key=task_key(task.layout_key, task.phase, task.block),  # workers.inference.readahead reads it
            retries=self.env.retries,
            pure=False,
            priority=self.env.priority + (PASS2_PRIORITY if task.phase == 2 else 0),
            resources=ONE_ACCELERATOR,
        )

    def result(self, future: Future, task: BlockTask) -> Any:
        if future.status == "finished":
            return future.result()
        error = future.exception()
        if isinstance(error, BlockCancelledError):
            raise JobCancelledError(f"job cancelled while block {task.block} ran")
        raise JobFailedError(
            f"block {task.block} (pass {task.phase}) failed after {self.env.retries} retries: {error!r}"
        )

    def report(self) -> None:
        run = self.run
        self.env.report(
            Progress(
                run.blocks_done,
                run.plan.n_blocks,
                "blocks",
                time.perf_counter() - run.started,
                details={"voxels_done": run.voxels_done, "voxels_total": run.voxels_total},
            )
        )

    def stop(self) -> None:
        """Drop queued blocks, make running ones stop at their next batch, wait until none runs."""
        self.run.request_cancel()
        self.client.cancel(list(self.in_flight))
        self.in_flight.clear()
        deadline = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < deadline:
            processing = self.client.processing().values()
            if not any(str(k).startswith(self.key_prefix) for keys in processing for k in keys):
                return
            time.sleep(0.2)
        log.warning("block tasks still ran %.0f s after the cancel", CANCEL_WAIT_S)


def _wait_some(futures: list[Future], timeout_s: float = 0.5) -> set[Future]:
    """The futures that ended, waiting at most ``timeout_s`` (so a cancel is seen promptly)."""
    try:
        return set(wait(futures, timeout=timeout_s, return_when="FIRST_COMPLETED").done)
    except TimeoutError:
        return set()


def _on_a_worker(client: Client, fn: Any, *args: Any) -> Any:
    return client.submit(fn, *args, pure=False, resources=ONE_ACCELERATOR).result()


def _model_field(ref: ModelRef) -> str:
    if ref.name is not None:
        return "model.name"
    return {"torchscript": "model.torchscript", "exported": "model.exported"}.get(ref.kind, "model")


def _files_signature(ref: ModelRef) -> tuple[tuple[int, int] | None, ...]:
    def stat(path: str | None) -> tuple[int, int] | None:
        try:
            info = os.stat(path) if path else None
        except OSError:
            return None
        return None if info is None else (info.st_size, info.st_mtime_ns)

    return (stat(ref.path), stat(ref.checkpoint))
