"""One inference job's run: the engine's two-pass protocol, whatever runs its tasks.

The engine owns the protocol; a driver only moves tasks. :class:`InferenceRun` opens the input
once, checks the output once and creates it (or finds it ready to resume), finds the blocks a
previous run finished, and from then on hands out block tasks in an order that is always safe::

    run = InferenceRun.start(job, info)         # nothing runs yet; an OutputExistsError writes nothing
    while not run.finished_all():
        task = run.next_task()     # pass 1 in block order; pass 2 once its chunks' contributors are done
        ... run it anywhere: run_block(task) on a Dask worker, or in this process ...
        run.finished(task, result)
    stage = run.pyramid_stage()                 # every block done: the coarser levels (workers.pyramid)
    while not stage.finished_all(): ... run_pyramid_task(task) ...; stage.finished(task)
    run.complete()               # every block and pyramid task recorded done, else IncompleteRunError

Progress is counted in steps (:mod:`workers.inference.steps`): ``run.steps_reported(...)`` takes
what a running task says, :meth:`InferenceRun.counts` tells the figures at any moment.

:func:`run_serially` is that loop in this process, for tests and debugging; the control plane's
driver submits the same tasks to Dask and keeps several in flight. Success is never reported over
a hole: a block is recorded done (``workers.inference.ledger``, by this process only) after its
task returned, so after its chunks were written; pass-1 partial sums found missing at start are
recomputed; and the output is marked complete only after the record read back from disk holds
every block, and every pyramid task's marker is on disk (its levels are filled after level 0 is
complete). The bookkeeping costs the same few microseconds per task at any job size
(``workers.inference.schedule``).
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from models.ref import ModelInfo
from volumes.blocks import BlockPlan, Index
from volumes.open import open_volume
from volumes.output import create_output, level_path
from volumes.pyramid import Factors, pyramid_factors
from volumes.volume import Volume
from workers.confine import confined
from workers.errors import IncompleteRunError
from workers.inference.checks import OutputState, check_input, open_input, output_state, roi_shape
from workers.inference.engine import BlockResult
from workers.inference.geometry import JobGeometry, build_geometry
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob
from workers.inference.ledger import SNAPSHOT, Ledger, linear, read_bits
from workers.inference.mask import record_without_tasks
from workers.inference.rundir import Janitor, RunDir
from workers.inference.schedule import Schedule
from workers.inference.steps import BlockSteps, StepCounts, StepHook, StepTally
from workers.inference.tasks import BlockTask, run_block
from workers.limits import Limits
from workers.pyramid import PyramidStage, run_pyramid_task
from workers.version import package_version

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]


@dataclass
class RunSummary:
    """What a run did: the job's ``result``, and the figures the benchmarks read."""

    output_path: str
    dataset: str
    layout_key: str
    blocks_total: int
    blocks_skipped: int  # already done before this run (resume)
    resumed: bool = False  # the output existed, made by this same job
    tasks_run: dict[str, int] = field(default_factory=lambda: {"pass1": 0, "pass2": 0})
    windows: int = 0
    scratch_bytes: int = 0
    output_bytes: int = 0
    blocks_read_ahead: int = 0  # pass-1 tasks whose input a worker read during the previous block
    windows_masked: int = 0  # windows input.mask left out (never computed)
    blocks_masked: int = 0  # blocks input.mask left with nothing to compute (no task ran)
    levels: int = 1  # the output image's levels: full resolution and its pyramid's
    level0: str = ""  # the path of level 0 in the container (``pred/0``; N5 ``pred/s0``)
    pyramid_seconds: float = 0.0  # the pyramid stage's time in this run
    seconds: float = 0.0
    task_seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def add(self, result: BlockResult) -> None:
        self.tasks_run[f"pass{result.phase}"] += 1
        self.windows += result.windows
        self.scratch_bytes += result.scratch_bytes
        self.output_bytes += result.output_bytes
        self.blocks_read_ahead += int(result.read_ahead)
        for name, seconds in result.seconds.items():
            self.task_seconds[name] = self.task_seconds.get(name, 0.0) + seconds


class InferenceRun:
    """The two-pass protocol of one job over its blocks (see the module docstring)."""

    def __init__(
        self,
        job: InferenceJob,
        info: ModelInfo,
        geometry: JobGeometry,
        run_dir: RunDir,
        levels: tuple[Factors, ...] = ((1, 1, 1),),
    ) -> None:
        self.job, self.info, self.geometry, self.run_dir = job, info, geometry, run_dir
        self.layout_key = run_dir.root.name
        # This run's token: its Dask keys, progress topic and the workers' caches are named by it,
        # so that nothing of an earlier run of the job (a failed or cancelled one) is handed back.
        self.attempt = secrets.token_hex(4)
        out = job.output
        self.pyramid = PyramidStage(
            out.path, out.dataset, out.format, levels, out.chunks, (info.out_channels, *geometry.roi.shape),
            "mean", run_dir.root / "pyramid", job.data_roots, f"pytc-{self.layout_key}-{self.attempt}-",
        )  # fmt: skip
        self.plan: BlockPlan = geometry.plan
        self.blocks_masked = 0  # blocks recorded done without a task (input.mask)
        self.started = time.perf_counter()
        self.ledger = _open_ledger(run_dir, self.plan)
        flags = geometry.mask_blocks  # input.mask: what no task needs to run for
        self.windows_masked = 0  # windows input.mask leaves out, of this run's share
        if flags is not None:
            self.blocks_masked = record_without_tasks(self.ledger.p1, self.ledger.p2, flags)
            assert geometry.mask is not None
            self.windows_masked = geometry.mask.owned_windows(self.plan, ~flags[0])
        no_spill = None if flags is None else ~flags[0].reshape(-1)
        self._schedule = Schedule(self.plan, self.ledger, _spill_files(run_dir, self.plan), no_spill)
        for (
            index
        ) in self._schedule.orphans:  # no block reads them any more (a run killed before it dropped them)
            run_dir.drop_spill(self._schedule.block(index))
        self.ledger.snapshot()  # the log starts empty: a resume reads a snapshot and one run's records
        shape = self.plan.block_counts
        p1 = np.frombuffer(self.ledger.p1, dtype=np.uint8).reshape(shape).astype(bool)
        p2 = np.frombuffer(self.ledger.p2, dtype=np.uint8).reshape(shape).astype(bool)
        self._blocks_done = int(p2.sum())
        self._lengths = [[e - b for b, e in map(a.write_range, range(a.n_blocks))] for a in self.plan.axes]
        self._janitor = Janitor(run_dir.spill_path)
        self._voxels_done = _voxels_of(self.plan, p2)
        self._steps = BlockSteps(self.plan)
        self._tally = StepTally(self._steps, self._is_finished)
        self._tally.preset(1, self._steps.total_over(1, p1 | p2))
        self._tally.preset(2, self._steps.total_over(2, p2))
        self.summary = RunSummary(
            job.output.path,
            job.output.dataset,
            self.layout_key,
            self.plan.n_blocks,
            self._blocks_done,
            windows_masked=self.windows_masked,
            blocks_masked=self.blocks_masked,
        )

    @classmethod
    def start(
        cls,
        job: InferenceJob,
        info: ModelInfo,
        *,
        source: Volume | None = None,
        checked: OutputState | None = None,
        limits: Limits | None = None,
    ) -> InferenceRun:
        """Open the input (once; or take ``source``, already opened and checked), check the output
        (or take ``checked``, the answer of a check made a moment ago in this process), create it or
        find it ready to resume, and look at what an earlier run finished. With ``limits``, the
        input's shape is bounded again before its geometry is built (a job recorded long ago, or an
        input whose metadata changed since its admission)."""
        if source is None:
            source = open_input(job)
            check_input(job, source, limits)
        layout_key = job.layout_key(info.sha256)
        geometry = build_geometry(job, tuple(source.shape), source)
        run_dir = RunDir.for_output(job.output.path, job.output.dataset, layout_key)
        state = checked or output_state(job, info.sha256, roi_shape(job, source))
        levels = output_levels(job, geometry.roi.shape, source.voxel_size)
        if state == "absent":
            _create(job, info, layout_key, geometry, source, levels)
        run_dir.clear_cancel()  # running the job again after a cancel resumes it
        run = cls(job, info, geometry, run_dir, levels)
        run.summary.resumed = state == "resume"
        return run

    # --- what the driver asks -------------------------------------------------------------------

    @property
    def blocks_done(self) -> int:
        return self._blocks_done

    @property
    def voxels_done(self) -> int:
        return self._voxels_done

    @property
    def voxels_total(self) -> int:
        return int(np.prod(self.geometry.roi.shape))

    def counts(self) -> StepCounts:
        """The run's figures now: steps finished (and reported by running tasks), blocks, voxels."""
        return StepCounts(
            self._tally.windows_done,
            self._steps.windows_total,
            self._tally.chunks_done,
            self._steps.chunks_total,
            self.blocks_done,
            self.plan.n_blocks,
            self.voxels_done,
            self.voxels_total,
            self.pyramid.chunks_done,
            self.pyramid.chunks_total,
        )

    def steps_reported(self, phase: int, block: Index, done: int) -> bool:
        """A running task of (``phase``, ``block``) has finished ``done`` steps; True when that
        moved the count. Repeated, late or retried reports never count twice."""
        return self._tally.report(phase, block, done)

    def next_task(self) -> BlockTask | None:
        """A task that may run now, or None (nothing is ready until a task in flight finishes)."""
        step = self._schedule.next_step()
        if step is None:
            return None
        phase, index = step
        block = self._schedule.block(index)
        return BlockTask(self.job, self.layout_key, block, phase, self.info.out_channels, self.attempt)  # type: ignore[arg-type]

    def finished(self, task: BlockTask, result: BlockResult) -> None:
        """``task`` ran to its end with ``result``: recorded (one append to the done record), and
        the spill files no block reads any more are dropped, after the records that free them."""
        index = self._schedule.index(task.block)
        p1, p2 = self.ledger.p1, self.ledger.p2
        was_done = p2[index]
        counted = was_done or (task.phase == 1 and p1[index])
        self._schedule.finished(task.phase, index)
        if not counted:
            self._tally.finished(task.phase, task.block)
        if p2[index] and not was_done:
            self._blocks_done += 1
            self._voxels_done += math.prod(t[k] for t, k in zip(self._lengths, task.block, strict=True))
        self.summary.add(result)
        if task.phase == 1 and self.geometry.mask is not None:  # the windows its mask left out
            owned = math.prod(len(r) for r in self.plan.window_ranges(task.block))
            self.summary.windows_masked += owned - result.windows
        if self.ledger.flush(lazy=True):  # the records freeing these files are written
            for source in self._schedule.take_dropped():  # off this thread: a file system may be slow
                self._janitor.drop(self._schedule.block(source))

    def _is_finished(self, phase: int, block: Index) -> bool:
        """Whether (``phase``, ``block``) is recorded done (a block done counts its pass 1 done too)."""
        index = self._schedule.index(block)
        return bool(self.ledger.p2[index] or (phase == 1 and self.ledger.p1[index]))

    def finished_all(self) -> bool:
        return self._schedule.idle()

    def request_cancel(self) -> None:
        """Make tasks already running stop at their next batch (a flag file every worker sees)."""
        self.run_dir.request_cancel()

    def pyramid_stage(self) -> PyramidStage:
        """The pyramid's tasks, once level 0 is whole (every block recorded done on disk)."""
        self._check_blocks()
        return self.pyramid

    def _check_blocks(self) -> None:
        """The done record, synced and read back from disk, must hold every block's pass 2. A block
        is recorded only after its task returned, which it does after every chunk of its write box
        was written: a whole record is a whole level 0."""
        self.ledger.flush(sync=True)
        _, p2 = read_bits(self.run_dir.root, self.plan.n_blocks)
        missing = np.flatnonzero(p2 == 0)
        if len(missing):
            first = self._schedule.block(int(missing[0]))
            raise IncompleteRunError(
                f"{len(missing)} blocks are not recorded done, first {first}; "
                "the output stays marked incomplete"
            )

    def complete(self) -> RunSummary:
        """Success only over a whole output: every block recorded done (:meth:`_check_blocks`), and
        every pyramid task's marker on disk."""
        self._check_blocks()
        self.pyramid.check()
        self.close()
        self.job.output_node()  # the output marked complete is the one inside the roots
        confined(self.run_dir.root, self.job.data_roots)
        self.run_dir.drop_all_scratch()
        volume = open_volume(self.job.output.path, self.job.output.dataset, mode="r+")
        record = dict(volume.attrs.get(OUTPUT_ATTRS_KEY, {}))
        volume.set_attrs({OUTPUT_ATTRS_KEY: {**record, "complete": True}})
        self.summary.levels = len(self.pyramid.levels)
        self.summary.level0 = level_path(self.job.output.format, self.job.output.dataset, 0)
        self.summary.pyramid_seconds = self.pyramid.seconds
        self.summary.seconds = time.perf_counter() - self.started
        return self.summary

    def close(self) -> None:
        """The run ends without completing (failed, cancelled): what it recorded is synced."""
        self.ledger.close()
        for source in self._schedule.take_dropped():
            self._janitor.drop(self._schedule.block(source))
        self._janitor.drain()


def output_levels(
    job: InferenceJob, shape: tuple[int, ...], voxel_size: tuple[float, float, float] | None
) -> tuple[Factors, ...]:
    """The output's levels: its pyramid's (``output.pyramid``), else level 0 alone (a precomputed
    output's always: it is written as one scale)."""
    if not job.output.pyramid or job.output.format == "precomputed":
        return ((1, 1, 1),)
    return pyramid_factors(shape, job.output.chunks, voxel_size)


def output_translation(job: InferenceJob, source: Volume) -> tuple[float, float, float] | None:
    """Where the output's voxel 0 lies (nm): the input's own translation plus the ROI's offset times
    the input's voxel size (voxels where that is unknown); None at the origin of an unplaced input."""
    base = source.translation
    offset = job.input.roi.offset if job.input.roi is not None else (0, 0, 0)
    if base is None and not any(offset):
        return None
    voxel = source.voxel_size or (1.0, 1.0, 1.0)
    z, y, x = ((t or 0.0) + o * v for t, o, v in zip(base or (0.0, 0.0, 0.0), offset, voxel, strict=True))
    return z, y, x


def _create(
    job: InferenceJob,
    info: ModelInfo,
    layout_key: str,
    geometry: JobGeometry,
    source: Volume,
    levels: tuple[Factors, ...],
) -> None:
    """Create the output (once, before any block), dropping the run folders of what it replaces."""
    shutil.rmtree(RunDir.all_for_dataset(job.output.path, job.output.dataset), ignore_errors=True)
    attrs = {
        OUTPUT_ATTRS_KEY: {
            "layout_key": layout_key,
            "complete": False,
            "job": json.loads(job.document),
            "model_sha256": info.sha256,
            "version": package_version(),
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
        translation=output_translation(job, source),
        levels=levels,
        shards=job.output.shards,
    )


def _open_ledger(run_dir: RunDir, plan: BlockPlan) -> Ledger:
    """The run's done record; a run folder of an older version (one marker file per block and
    pass) is read once into it."""
    ledger = Ledger.open(run_dir.root, plan.n_blocks)
    if not (run_dir.root / SNAPSHOT).exists():
        counts = plan.block_counts
        for phase in (1, 2):
            for block in run_dir.legacy_done_blocks(phase):
                if all(0 <= i < n for i, n in zip(block, counts, strict=True)):
                    ledger.record(phase, linear(block, counts))
    return ledger


def _spill_files(run_dir: RunDir, plan: BlockPlan) -> np.ndarray:
    """Which blocks have a spill file, from one listing of the scratch folder."""
    present = np.zeros(plan.n_blocks, dtype=bool)
    counts = plan.block_counts
    for block in run_dir.spill_blocks():
        if len(block) == len(counts) and all(0 <= i < n for i, n in zip(block, counts, strict=True)):
            present[linear(block, counts)] = True
    return present


def _voxels_of(plan: BlockPlan, mask: np.ndarray) -> int:
    """Voxels of the write boxes of the blocks where ``mask`` is true (per-axis lengths)."""
    out = mask.astype(np.int64)
    for axis in reversed(plan.axes):
        lengths = [e - b for b, e in (axis.write_range(k) for k in range(axis.n_blocks))]
        out = out @ np.asarray(lengths, dtype=np.int64)
    return int(out)


def run_serially(
    job: InferenceJob,
    info: ModelInfo,
    *,
    predict: Predict | None = None,
    on_task: Callable[[InferenceRun], None] | None = None,
    on_progress: Callable[[StepCounts], None] | None = None,
) -> RunSummary:
    """The whole run in this process, one task after the other (tests, debugging, no Dask).

    ``predict`` replaces the model (a function of a batch of windows, for tests); ``on_task`` is
    called after every task, with the run; ``on_progress`` with the run's figures after every batch
    of pass 1, every chunk of pass 2 and every task's end.
    """
    run = InferenceRun.start(job, info)
    while (task := run.next_task()) is not None:
        hook = None
        if on_progress is not None:
            hook = _serial_hook(run, task, on_progress)
        run.finished(task, run_block(task, predict=predict, progress=hook))
        if on_task is not None:
            on_task(run)
        if on_progress is not None:
            on_progress(run.counts())
    pyramid_serially(run, on_task=on_task, on_progress=on_progress)
    return run.complete()


def pyramid_serially(
    run: InferenceRun,
    *,
    on_task: Callable[[InferenceRun], None] | None = None,
    on_progress: Callable[[StepCounts], None] | None = None,
) -> None:
    """The pyramid stage of ``run`` (every block done) in this process, task after task."""
    stage = run.pyramid_stage()
    while (task := stage.next_task()) is not None:
        run_pyramid_task(task)
        stage.finished(task)
        if on_task is not None:
            on_task(run)
        if on_progress is not None:
            on_progress(run.counts())


def _serial_hook(run: InferenceRun, task: BlockTask, on_progress: Callable[[StepCounts], None]) -> StepHook:
    def hook(done: int) -> None:
        run.steps_reported(task.phase, task.block, done)
        on_progress(run.counts())

    return hook
