"""The driver's schedule and done record at scale: per-axis dependency tables agree with the block
plan's own per-chunk answer, the order is always safe, and a driver killed mid-job at 10^4 blocks
resumes from its record with nothing recorded done handed out again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import workers.inference.ledger
from volumes.blocks import BlockPlan, plan_blocks
from volumes.windows import WindowGrid
from workers.inference.ledger import Ledger, read_bits
from workers.inference.schedule import Schedule


def plan_of(roi: tuple[int, ...], chunk: int, block: int, patch: int, stride: int, pad: int = 0) -> BlockPlan:
    grid = WindowGrid.over_roi(roi, (patch,) * 3, (stride,) * 3, (pad,) * 3)
    return plan_blocks(roi, (chunk,) * 3, (block,) * 3, grid)


@st.composite
def plans(draw: st.DrawFn) -> BlockPlan:
    chunk = draw(st.integers(1, 4))
    block = chunk * draw(st.integers(1, 3))
    patch = draw(st.integers(1, 9))
    stride = draw(st.integers(1, patch))
    roi = tuple(draw(st.integers(1, 14)) for _ in range(3))
    return plan_of(roi, chunk, block, patch, stride, draw(st.integers(0, 2)))


@settings(max_examples=30, deadline=None)
@given(plans())
def test_per_axis_tables_agree_with_the_plan(plan: BlockPlan) -> None:
    schedule = Schedule(
        plan, Ledger(Path("/nonexistent"), plan.n_blocks, bytearray(plan.n_blocks), bytearray(plan.n_blocks))
    )
    for block in plan.blocks():
        i = schedule.index(block)
        assert schedule.block(i) == block
        sources = {schedule.block(s) for s in schedule._around(schedule._sources, i)}
        border = bool(plan.border_chunks(block))
        assert bool(schedule.border[i]) == border
        assert bool(schedule.spills[i]) == bool(plan.spill_chunks(block))
        if border:
            exact = plan.pass2_dependencies(block)
            assert exact <= sources  # never less: a pass 2 never runs before a source's pass 1
            if not any(plan.extent(b).is_empty() for b in plan.blocks()):
                assert sources <= exact | {block}  # and no more, but where blocks own no window
        for s in schedule._around(schedule._consumers, i):
            assert i in schedule._around(schedule._sources, s)  # consumers are sources, reversed


def big_plan() -> BlockPlan:
    """10,000 blocks (25 x 20 x 20) of 4^3 voxels, chunks of 2, windows of 5 every 3."""
    return plan_of((100, 80, 80), 2, 4, 5, 3)


def drive(schedule: Schedule, plan: BlockPlan, stop_after: int | None, seed: int) -> list[tuple[int, int]]:
    """Finish tasks in a random order with up to 64 in flight; stop (a kill: the tasks in flight
    are lost, nothing is closed) after ``stop_after`` finished. Checks every pass 2 is safe."""
    rng = np.random.default_rng(seed)
    in_flight: list[tuple[int, int]] = []
    handed: list[tuple[int, int]] = []
    p1 = schedule.ledger.p1
    finished = 0
    while True:
        while len(in_flight) < 64 and (step := schedule.next_step()) is not None:
            phase, i = step
            if phase == 2:
                deps = plan.pass2_dependencies(schedule.block(i))
                assert all(p1[schedule.index(d)] for d in deps)
            handed.append(step)
            in_flight.append(step)
        if not in_flight or (stop_after is not None and finished >= stop_after):
            return handed
        phase, i = in_flight.pop(int(rng.integers(len(in_flight))))
        schedule.finished(phase, i)
        schedule.ledger.flush()
        finished += 1


def test_a_killed_driver_at_10k_blocks_resumes_without_redoing_what_it_recorded(tmp_path: Path) -> None:
    plan = big_plan()
    assert plan.n_blocks == 10_000
    ledger = Ledger.open(tmp_path, plan.n_blocks)
    first = Schedule(plan, ledger)
    drive(first, plan, stop_after=9_000, seed=1)  # then killed: no close, no sync
    p1_before, p2_before = (b.astype(bool) for b in read_bits(tmp_path, plan.n_blocks))
    assert 0 < p2_before.sum() < plan.n_blocks
    assert np.array_equal(p1_before, np.frombuffer(ledger.p1, np.uint8).astype(bool))  # all on disk
    assert len(list(tmp_path.iterdir())) <= 2  # the whole record: a log (and a snapshot)

    again = Schedule(plan, Ledger.open(tmp_path, plan.n_blocks))
    handed = drive(again, plan, stop_after=None, seed=2)
    for phase, i in handed:
        assert not p2_before[i], f"block {i} was recorded done and ran again"
        assert not (phase == 1 and p1_before[i]), f"pass 1 of {i} was recorded and ran again"
    assert again.idle()
    p1, p2 = read_bits(tmp_path, plan.n_blocks)
    assert p1.all() and p2.all()


def test_lost_spill_files_are_found_at_start_and_their_pass_1_is_run_again(tmp_path: Path) -> None:
    plan = plan_of((24, 24, 24), 4, 8, 5, 3)
    ledger = Ledger.open(tmp_path, plan.n_blocks)
    first = Schedule(plan, ledger)
    while (step := first.next_step()) is not None:
        if step[0] == 1:
            first.finished(*step)  # every pass 1, no pass 2
    ledger.flush()
    spills = np.frombuffer(first.spills, np.uint8).astype(bool)
    present = spills.copy()
    lost = int(np.flatnonzero(spills)[0])
    present[lost] = False  # one block's spill file is gone
    again = Schedule(plan, Ledger.open(tmp_path, plan.n_blocks), present)
    assert again.lost == [lost]
    assert list(again.pass1) == [lost]  # only that pass 1 runs again
    assert read_bits(tmp_path, plan.n_blocks)[0][lost] == 0  # and the record says so on disk
    handed = drive(again, plan, stop_after=None, seed=3)
    assert (1, lost) in handed and again.idle()


def test_spill_files_are_dropped_once_every_reader_finished(tmp_path: Path) -> None:
    plan = plan_of((24, 24, 24), 4, 8, 5, 3)
    schedule = Schedule(plan, Ledger.open(tmp_path, plan.n_blocks))
    finished_p2: set[int] = set()
    dropped: list[int] = []
    while (step := schedule.next_step()) is not None:
        schedule.finished(*step)
        if step[0] == 2:
            finished_p2.add(step[1])
        for source in schedule.take_dropped():
            readers = [c for c in schedule._around(schedule._consumers, source) if schedule.border[c]]
            assert all(c in finished_p2 for c in readers)
            dropped.append(source)
    assert sorted(dropped) == np.flatnonzero(np.frombuffer(schedule.spills, np.uint8)).tolist()


def test_the_done_record_compacts_and_reads_past_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workers.inference.ledger, "COMPACT_RECORDS", 1)  # one record per block
    ledger = Ledger.open(tmp_path, 50)
    for i in range(50):
        ledger.record(1, i)
        ledger.flush()
    for i in range(0, 50, 2):
        ledger.record(2, i)
    ledger.flush()  # 75 records: over one per block, so the log was folded into a snapshot
    assert (tmp_path / "done.log").stat().st_size < 75 * 8
    with open(tmp_path / "done.log", "ab") as handle:
        handle.write(bytes(8) + b"\x01\x02\x03")  # a crash of the machine: zeros, half a record
    p1, p2 = read_bits(tmp_path, 50)
    assert p1.all() and np.flatnonzero(p2).tolist() == list(range(0, 50, 2))
    ledger.close()
    (tmp_path / "done.snap").write_bytes(b"damaged")  # a damaged snapshot: recomputed, never trusted
    assert not read_bits(tmp_path, 50)[0].any()
