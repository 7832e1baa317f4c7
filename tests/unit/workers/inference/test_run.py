"""The engine's run object: the two-pass protocol, resume, lost partial sums, the final check, and
one opening of each volume per phase. Driven by the serial runner that ships with the package."""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

import volumes.open
import workers.inference.checks
import workers.inference.run
from models.ref import ModelInfo
from tests.unit.workers.inference.conftest import SHAPE
from volumes.box import Box
from volumes.open import open_volume
from workers.errors import IncompleteRunError, OutputExistsError
from workers.inference.job import OUTPUT_ATTRS_KEY, InferenceJob
from workers.inference.run import InferenceRun, run_serially
from workers.inference.rundir import RunDir, drop_dataset_scratch
from workers.inference.steps import StepCounts
from workers.inference.tasks import run_block

INFO = ModelInfo(1, 1, "sha-of-the-test-model")


def doubled(batch: np.ndarray) -> np.ndarray:
    return batch * 2.0


def output_of(job: InferenceJob) -> np.ndarray:
    volume = open_volume(job.output.path, job.output.dataset)
    return volume.read(Box.of_shape(volume.shape))


def test_a_serial_run_completes_and_marks_the_output(job: InferenceJob) -> None:
    summary = run_serially(job, INFO, predict=doubled)
    plan_blocks = 2 * 3 * 3
    assert summary.blocks_total == plan_blocks and summary.blocks_skipped == 0 and not summary.resumed
    assert summary.tasks_run["pass1"] == plan_blocks and summary.tasks_run["pass2"] > 0
    record = open_volume(job.output.path, job.output.dataset).attrs[OUTPUT_ATTRS_KEY]
    assert record["complete"] is True and record["model_sha256"] == INFO.sha256
    assert not list((Path(job.output.path) / ".pytc-run").rglob("*.spill"))  # scratch dropped


def test_running_the_same_job_again_resumes_with_nothing_to_do(job: InferenceJob) -> None:
    run_serially(job, INFO, predict=doubled)
    first = output_of(job)
    again = run_serially(job, INFO, predict=lambda b: b * 0.0)  # would change every voxel if it ran
    assert again.resumed and again.blocks_skipped == again.blocks_total
    assert again.tasks_run == {"pass1": 0, "pass2": 0}
    np.testing.assert_array_equal(output_of(job), first)


def test_an_output_of_another_job_is_refused_before_anything_is_written(job: InferenceJob) -> None:
    run_serially(job, INFO, predict=doubled)
    files = sorted(p for p in Path(job.output.path).rglob("*"))
    other = replace(job, window=replace(job.window, stride=(2, 4, 4)))
    with pytest.raises(OutputExistsError, match="overwrite"):
        InferenceRun.start(other, INFO)
    assert sorted(p for p in Path(job.output.path).rglob("*")) == files
    rerun = run_serially(replace(other, output=replace(other.output, overwrite=True)), INFO, predict=doubled)
    assert rerun.blocks_skipped == 0 and not rerun.resumed


def test_lost_partial_sums_are_recomputed_never_a_hole(job: InferenceJob) -> None:
    clean = replace(job, output=replace(job.output, path=job.output.path + ".clean"))
    run_serially(clean, INFO, predict=doubled)
    # Pass 1 of every block, then lose every partial sum (scratch cleaned by hand) and start again.
    run = InferenceRun.start(job, INFO)
    while (task := run.next_task()) is not None and task.phase == 1:
        run.finished(task, run_block(task, predict=doubled))
    spilled = list((Path(job.output.path) / ".pytc-run").rglob("*.spill"))
    assert spilled
    for path in spilled:
        path.unlink()
    summary = run_serially(job, INFO, predict=doubled)
    assert summary.tasks_run["pass1"] > 0
    np.testing.assert_array_equal(output_of(job), output_of(clean))


def test_success_is_never_reported_over_a_hole(job: InferenceJob) -> None:
    run = InferenceRun.start(job, INFO)
    while (task := run.next_task()) is not None:
        run.finished(task, run_block(task, predict=doubled))
    run.ledger.forget(2, [run.plan.n_blocks - 1])  # a block whose record vanished
    with pytest.raises(IncompleteRunError, match="not recorded done"):
        run.complete()
    assert open_volume(job.output.path, job.output.dataset).attrs[OUTPUT_ATTRS_KEY]["complete"] is False


def test_the_run_pumps_tasks_in_a_safe_order(job: InferenceJob) -> None:
    """Whatever order a driver finishes tasks in, no pass 2 is handed out before its contributors'
    pass 1, and every block ends done exactly once."""
    run = InferenceRun.start(job, INFO)
    plan = run.plan
    in_flight, pass1_done, pass2 = [], set(), []
    rng = np.random.default_rng(0)
    while True:
        while len(in_flight) < 5 and (task := run.next_task()) is not None:
            if task.phase == 2:
                assert plan.pass2_dependencies(task.block) <= pass1_done
                pass2.append(task.block)
            in_flight.append(task)
        if not in_flight:
            break
        task = in_flight.pop(int(rng.integers(len(in_flight))))
        run.finished(task, run_block(task, predict=doubled))
        if task.phase == 1:
            pass1_done.add(task.block)
    assert run.finished_all() and run.blocks_done == plan.n_blocks
    assert len(pass2) == len(set(pass2))
    run.complete()


def test_starting_a_run_opens_the_input_once_and_checks_the_output_once(
    job: InferenceJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[tuple[str, str | None]] = []
    real = volumes.open.open_volume

    def counting(path, dataset=None, mode="r", **kw):  # type: ignore[no-untyped-def]
        opened.append((str(path), dataset))
        return real(path, dataset, mode, **kw)

    for module in (workers.inference.checks, workers.inference.run):
        monkeypatch.setattr(module, "open_volume", counting)
    InferenceRun.start(job, INFO)
    assert opened.count((job.input.path, job.input.dataset)) == 1
    assert (
        opened.count((job.output.path, job.output.dataset)) == 1
    )  # the output check; creating it is not a read


def test_two_outputs_of_one_container_never_share_a_run_folder(job: InferenceJob) -> None:
    """``a/b`` and ``a__b`` once mapped to one run folder: the second job's start deleted the first
    one's partial sums, and the first failed."""
    first = replace(job, output=replace(job.output, dataset="a/b"))
    second = replace(job, output=replace(job.output, dataset="a__b"))
    assert RunDir.all_for_dataset(first.output.path, "a/b") != RunDir.all_for_dataset(
        second.output.path, "a__b"
    )
    run = InferenceRun.start(first, INFO)
    while (task := run.next_task()) is not None:  # pass 1 of every block; pass 2 left for later
        if task.phase == 1:
            run.finished(task, run_block(task, predict=doubled))
    run.close()  # the driver stops (its records written)
    spilled = sorted(run.run_dir.root.rglob("*.spill"))
    assert spilled
    run_serially(second, INFO, predict=doubled)  # creates and finishes its own output meanwhile
    assert sorted(run.run_dir.root.rglob("*.spill")) == spilled
    finished = run_serially(first, INFO, predict=doubled)
    assert finished.resumed and finished.tasks_run["pass1"] == 0
    np.testing.assert_array_equal(
        open_volume(first.output.path, "a/b").read(Box.of_shape((1, *SHAPE))),
        open_volume(second.output.path, "a__b").read(Box.of_shape((1, *SHAPE))),
    )


def test_the_engine_reports_every_batch_and_every_pass2_chunk(job: InferenceJob) -> None:
    """Through the block context's hook, as a driver hears it: counts that never go back, a report
    after every batch before the next one runs, every pass-2 chunk counted, the exact totals at the end."""
    seen: list[object] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        seen.append("batch")
        return doubled(batch)

    run_serially(job, INFO, predict=predict, on_progress=seen.append)
    reports = [r for r in seen if isinstance(r, StepCounts)]
    batches = seen.count("batch")
    assert batches > 0 and all(
        isinstance(after, StepCounts) for before, after in pairwise(seen) if before == "batch"
    ), "a batch ran with no report after it"
    assert all(a.done <= b.done for a, b in pairwise(reports))
    assert all(
        a.windows_done <= b.windows_done and a.chunks_done <= b.chunks_done for a, b in pairwise(reports)
    )
    chunk_moves = [b.chunks_done - a.chunks_done for a, b in pairwise(reports)]
    last = reports[-1]
    assert last.chunks_total > 0 and chunk_moves.count(1) == last.chunks_total  # one chunk at a time
    plan = InferenceRun.start(job, INFO).plan
    assert last.windows_done == last.windows_total == plan.grid.count
    assert last.chunks_done == last.chunks_total == sum(len(plan.border_chunks(b)) for b in plan.blocks())
    assert last.blocks_done == last.blocks_total == plan.n_blocks
    assert last.voxels_done == last.voxels_total == int(np.prod(SHAPE))


def test_a_resumed_run_counts_what_was_done_before(job: InferenceJob) -> None:
    run = InferenceRun.start(job, INFO)
    first = []
    for _ in range(3):  # three pass-1 tasks, then the process dies
        task = run.next_task()
        assert task is not None and task.phase == 1
        run.finished(task, run_block(task, predict=doubled))
        first.append(task.block)
    run.ledger.flush()  # what it had written 50 ms later (workers.inference.ledger.WRITE_S)
    resumed = InferenceRun.start(job, INFO).counts()
    plan = run.plan
    assert resumed.windows_done == sum(len(list(plan.windows(b))) for b in first) > 0
    assert resumed.chunks_done == 0 < resumed.chunks_total  # no pass 2 ran
    counts: list[StepCounts] = []
    run_serially(job, INFO, predict=doubled, on_progress=counts.append)
    assert counts[0].windows_done > resumed.windows_done and counts[-1].done == counts[-1].total


def test_a_job_whose_scratch_was_dropped_after_a_failure_runs_again_to_the_same_output(
    job: InferenceJob,
) -> None:
    """What the service does when a job fails for good (drop_dataset_scratch) costs the next run the
    pass 1 of the blocks whose sums it needs, and nothing of the result."""
    clean = replace(job, output=replace(job.output, path=job.output.path + ".clean"))
    run_serially(clean, INFO, predict=doubled)
    run = InferenceRun.start(job, INFO)
    failing_at = (1, 1, 1)
    while (task := run.next_task()) is not None and not (task.phase == 1 and task.block == failing_at):
        run.finished(task, run_block(task, predict=doubled))
    assert list((Path(job.output.path) / ".pytc-run").rglob("*.spill"))  # sums waiting for pass 2
    drop_dataset_scratch(job.output.path, job.output.dataset)
    assert not list((Path(job.output.path) / ".pytc-run").rglob("*.spill"))
    summary = run_serially(job, INFO, predict=doubled)
    assert summary.resumed and summary.tasks_run["pass1"] > 0
    np.testing.assert_array_equal(output_of(job), output_of(clean))


def test_a_run_folder_of_an_older_version_is_read_into_the_done_record_once(job: InferenceJob) -> None:
    """Before the done record, each block and pass left a marker file: a run started over such a
    folder (a job resumed across an upgrade) takes them as done, and never reads them again."""
    run_serially(job, INFO, predict=doubled)
    first = output_of(job)
    run_dir = next((Path(job.output.path) / ".pytc-run").glob("*/*"))
    plan = InferenceRun.start(job, INFO).plan
    for name in ("done.snap", "done.log"):
        (run_dir / name).unlink(missing_ok=True)
    (run_dir / "done").mkdir()
    for block in plan.blocks():
        for phase in (1, 2):
            (run_dir / "done" / f"p{phase}_{'_'.join(map(str, block))}.json").write_text("{}")
    again = run_serially(job, INFO, predict=lambda b: b * 0.0)  # would change every voxel if it ran
    assert again.blocks_skipped == again.blocks_total and again.tasks_run == {"pass1": 0, "pass2": 0}
    np.testing.assert_array_equal(output_of(job), first)
