"""Drives one inference job over Dask: plans blocks, submits pass-1 and pass-2 tasks with bounded
tasks in flight, resumes from the done markers, and reports progress.

Progress is durable and outside Dask: a block counts as done only when its pass-2 marker is on
disk, which is written after its chunks. The output is marked complete only when every block has
that marker; a failed or cancelled job leaves it marked incomplete.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from distributed import Client, Future, wait

from models.ref import ModelInfo
from service.errors import JobCancelledError, JobFailedError
from service.progress import Progress
from volumes.blocks import BlockPlan
from volumes.output import create_output
from volumes.volume import open_volume
from workers.errors import BlockCancelledError
from workers.inference.checks import check_output
from workers.inference.geometry import JobGeometry, build_geometry
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob
from workers.inference.readahead import task_key
from workers.inference.rundir import Index, RunDir
from workers.inference.tasks import BlockTask, inspect_model, run_block

log = logging.getLogger(__name__)

# Every block task asks for one accelerator slot; pytc-worker advertises one per GPU (or per CPU worker).
GPU = {"GPU": 1}


def software_version() -> str:
    try:
        return version("pytc-service")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@dataclass
class RunResult:
    output_path: str
    dataset: str
    layout_key: str
    blocks_total: int
    blocks_skipped: int  # already done before this run (resume)
    tasks_run: dict[str, int] = field(default_factory=lambda: {"pass1": 0, "pass2": 0})
    windows: int = 0
    scratch_bytes: int = 0
    output_bytes: int = 0
    blocks_read_ahead: int = 0  # pass-1 tasks whose input a worker read during the previous block
    seconds: float = 0.0
    task_seconds: dict[str, float] = field(default_factory=dict)


def prepare_output(job: InferenceJob, info: ModelInfo, layout_key: str, geometry: JobGeometry) -> RunDir:
    """Create the output (once, before any block) or find it ready for a resume."""
    run_dir = RunDir.for_output(job.output.path, job.output.dataset, layout_key)
    if check_output(job, info.sha256) == "resume":
        return run_dir
    shutil.rmtree(RunDir.all_for_dataset(job.output.path, job.output.dataset), ignore_errors=True)
    source = open_volume(job.input.path, job.input.dataset)
    attrs = {
        OUTPUT_ATTRS_KEY: {
            "layout_key": layout_key,
            "complete": False,
            "job": json.loads(job.document),
            "model_sha256": info.sha256,
            "version": software_version(),
        }
    }
    create_output(
        job.output.path,
        job.output.dataset,
        job.output.format,
        (info.out_channels, *geometry.roi.shape),
        job.output.dtype,
        job.output.chunks,
        source.voxel_size,
        attrs,
        overwrite=job.output.overwrite,
    )
    return run_dir


def _mark_complete(job: InferenceJob, complete: bool) -> None:
    volume = open_volume(job.output.path, job.output.dataset, mode="r+")
    record = dict(volume.attrs.get(OUTPUT_ATTRS_KEY, {}))
    record["complete"] = complete
    volume.set_attrs({OUTPUT_ATTRS_KEY: record})


class _Scheduler:
    """Which task to submit next: pass 1 in block order, pass 2 once its contributors' pass 1 is done."""

    def __init__(self, plan: BlockPlan, run_dir: RunDir) -> None:
        self.plan = plan
        self.p1_done = run_dir.done_blocks(1)
        self.p2_done = run_dir.done_blocks(2)
        self.p1_done -= self._lost_spills(run_dir)
        self.pass1 = [b for b in plan.blocks() if b not in self.p1_done]
        self.waiting = {b: plan.pass2_dependencies(b) for b in plan.blocks() if b not in self.p2_done}
        self.ready: list[Index] = []
        self._release()

    def _lost_spills(self, run_dir: RunDir) -> set[Index]:
        """Blocks whose pass 1 is recorded but whose partial sums for an unfinished chunk are gone
        (scratch cleaned by hand, a marker removed): their pass 1 runs again rather than leave a hole."""
        lost: set[Index] = set()
        for block in self.plan.blocks():
            if block in self.p2_done:
                continue
            for chunk in self.plan.border_chunks(block):
                for source in self.plan.contributors(chunk):
                    if source in self.p1_done and not run_dir.scratch_path(chunk, source).exists():
                        lost.add(source)
        if lost:
            log.warning("recomputing pass 1 of %d blocks whose partial sums are missing", len(lost))
            for block in lost:
                run_dir.marker(1, block).unlink(missing_ok=True)
        return lost

    def _release(self) -> None:
        for block, deps in list(self.waiting.items()):
            if block in self.p2_done:
                del self.waiting[block]
            elif block in self.p1_done and deps <= self.p1_done:
                self.ready.append(block)
                del self.waiting[block]

    def finished(self, phase: int, block: Index) -> None:
        if phase == 1:
            self.p1_done.add(block)
            if not self.plan.border_chunks(block):
                self.p2_done.add(block)
        else:
            self.p2_done.add(block)
        self._release()

    def next_task(self) -> tuple[int, Index] | None:
        if self.ready:
            return 2, self.ready.pop(0)
        if self.pass1:
            return 1, self.pass1.pop(0)
        return None


def run_inference(
    job: InferenceJob,
    client: Client,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    max_in_flight: int | None = None,
    retries: int = 2,
    priority: int = 0,
) -> RunResult:
    """Run the job to completion on ``client``'s cluster; resumes from what is already done."""
    started = time.perf_counter()
    info: ModelInfo = client.submit(
        inspect_model, job.model, job.window.patch_size, pure=False, resources=GPU
    ).result()
    layout_key = job.layout_key(info.sha256)
    geometry = build_geometry(job, tuple(open_volume(job.input.path, job.input.dataset).shape))
    plan = geometry.plan
    run_dir = prepare_output(job, info, layout_key, geometry)
    run_dir.clear_cancel()  # running the job again after a cancel resumes it
    state = _Scheduler(plan, run_dir)
    result = RunResult(job.output.path, job.output.dataset, layout_key, plan.n_blocks, len(state.p2_done))
    voxels = {b: plan.write_box(b).size for b in plan.blocks()}
    total_voxels = sum(voxels.values())
    limit = max_in_flight or max(4, 2 * len(client.scheduler_info().get("workers", {})) + 2)

    def report() -> None:
        if on_progress is not None:
            done_vox = sum(voxels[b] for b in state.p2_done)
            on_progress(
                Progress(
                    len(state.p2_done),
                    plan.n_blocks,
                    "blocks",
                    done_vox,
                    total_voxels,
                    time.perf_counter() - started,
                )
            )

    def submit(phase: int, block: Index) -> Future:
        task = BlockTask(job, layout_key, block, phase, info.out_channels)  # type: ignore[arg-type]
        key = task_key(layout_key, phase, block)  # workers.inference.readahead reads these keys
        return client.submit(
            run_block,
            task,
            key=key,
            retries=retries,
            pure=False,
            priority=priority + (10 if phase == 2 else 0),
            resources=GPU,
        )

    report()
    in_flight: dict[Future, tuple[int, Index]] = {}
    try:
        while True:
            while len(in_flight) < limit and (nxt := state.next_task()) is not None:
                in_flight[submit(*nxt)] = nxt
            if not in_flight:
                break
            done = _wait_some(list(in_flight))
            if cancel is not None and cancel.is_set():
                _cancel(client, run_dir, list(in_flight), f"pytc-{layout_key}-")
                in_flight.clear()
                raise JobCancelledError(
                    f"job cancelled with {len(state.p2_done)}/{plan.n_blocks} blocks done"
                )
            for future in done:
                phase, block = in_flight.pop(future)
                _check(future, phase, block, retries)
                _record(result, future.result())
                state.finished(phase, block)
            if done:
                report()
    except KeyboardInterrupt:
        _cancel(client, run_dir, list(in_flight), f"pytc-{layout_key}-")
        in_flight.clear()
        raise
    finally:
        if in_flight:
            client.cancel(list(in_flight))
    _verify_and_complete(job, run_dir, plan)
    result.seconds = time.perf_counter() - started
    return result


def _wait_some(futures: list[Future], timeout_s: float = 0.5) -> set[Future]:
    """The futures that ended, waiting at most ``timeout_s`` (so a cancel is seen promptly)."""
    try:
        return set(wait(futures, timeout=timeout_s, return_when="FIRST_COMPLETED").done)
    except TimeoutError:
        return set()


def _check(future: Future, phase: int, block: Index, retries: int) -> None:
    if future.status == "finished":
        return
    error = future.exception()
    if isinstance(error, BlockCancelledError):
        raise JobCancelledError(f"job cancelled while block {block} ran")
    raise JobFailedError(f"block {block} (pass {phase}) failed after {retries} retries: {error!r}")


def _cancel(client: Client, run_dir: RunDir, futures: list[Future], key_prefix: str) -> None:
    """Drop pending blocks, make running ones stop at their next batch, and wait until none runs."""
    run_dir.request_cancel()
    client.cancel(futures)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        running = [k for keys in client.processing().values() for k in keys if str(k).startswith(key_prefix)]
        if not running:
            return
        time.sleep(0.2)
    log.warning("block tasks still ran 60 s after the cancel")


def _record(result: RunResult, block_result: Any) -> None:
    result.tasks_run[f"pass{block_result.phase}"] += 1
    result.windows += block_result.windows
    result.scratch_bytes += block_result.scratch_bytes
    result.output_bytes += block_result.output_bytes
    result.blocks_read_ahead += int(getattr(block_result, "read_ahead", False))
    for name, seconds in block_result.seconds.items():
        result.task_seconds[name] = result.task_seconds.get(name, 0.0) + seconds


def _verify_and_complete(job: InferenceJob, run_dir: RunDir, plan: BlockPlan) -> None:
    """Success only over a whole output: every block's final marker must be on disk."""
    missing = [b for b in plan.blocks() if not run_dir.is_done(2, b)]
    if missing:
        raise JobFailedError(
            f"{len(missing)} blocks are not recorded done, first {missing[0]}; "
            "the output stays marked incomplete"
        )
    run_dir.drop_all_scratch()
    _mark_complete(job, True)
