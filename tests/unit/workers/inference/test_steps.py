"""Steps, the unit of an inference run's progress: per-axis counts that agree with the block plan
block by block, and a tally that counts each (block, pass) once whatever its tasks report."""

from __future__ import annotations

from hypothesis import given

from tests.unit.volumes.test_geometry import plans
from volumes.blocks import BlockPlan, plan_blocks
from volumes.windows import WindowGrid
from workers.inference.steps import BlockSteps, StepTally


@given(plans())
def test_per_axis_counts_equal_the_plans_windows_and_border_chunks(plan: BlockPlan) -> None:
    steps = BlockSteps(plan)
    for block in plan.blocks():
        assert steps.windows(block) == len(list(plan.windows(block))), block
        assert steps.chunks(block) == len(plan.border_chunks(block)), block
    assert steps.windows_total == plan.grid.count  # every window has exactly one owner
    assert steps.chunks_total == sum(len(plan.border_chunks(b)) for b in plan.blocks())


def two_blocks() -> BlockPlan:
    """Two blocks along x, windows straddling the boundary: each block has border chunks."""
    grid = WindowGrid.over_roi((4, 8, 16), (4, 8, 6), (4, 8, 3), (0, 0, 0))
    return plan_blocks((4, 8, 16), (4, 8, 4), (4, 8, 8), grid)


def test_a_task_reported_twice_or_retried_counts_once_and_never_past_its_total() -> None:
    plan = two_blocks()
    steps = BlockSteps(plan)
    finished: set[tuple[int, tuple[int, ...]]] = set()
    tally = StepTally(steps, lambda phase, block: (phase, block) in finished)
    block = (0, 0, 1)
    windows = steps.windows(block)
    assert windows >= 3
    for done in (1, 2, 2, 1, 2):  # the same events twice, and a retry starting again from 1
        tally.report(1, block, done)
    assert tally.windows_done == 2
    assert tally.report(1, block, windows + 5)
    assert tally.windows_done == windows  # never more than the block has
    finished.add((1, block))
    tally.finished(1, block)
    assert tally.windows_done == windows
    assert not tally.report(1, block, 1)  # late news of a finished task
    assert tally.windows_done == windows and tally.chunks_done == 0
    tally.report(2, block, 1)
    assert tally.chunks_done == 1 == steps.chunks(block)
    tally.report(1, (0, 0, 0), 1)
    assert tally.windows_done == windows + 1
    finished.add((1, (0, 0, 0)))
    tally.finished(1, (0, 0, 0))  # a running count is replaced by the exact one
    assert tally.windows_done == steps.windows_total
