"""The one progress value: its contract JSON, rates of this run only, the status line."""

from __future__ import annotations

import io

import pytest

from service.progress import (
    LOG_HEARTBEAT_S,
    Progress,
    ProgressLine,
    Throughput,
    format_duration,
    format_progress,
)


def test_the_contract_json_round_trips_with_the_kinds_figures() -> None:
    report = Progress(12, 48, "blocks", 10.0, 0.6, {"voxels_done": 3, "voxels_total": 12})
    record = report.to_json()
    assert record == {
        "done": 12, "total": 48, "unit": "blocks", "fraction": 0.25, "rate": 0.6, "eta_seconds": 60.0,
        "elapsed_seconds": 10.0, "voxels_done": 3, "voxels_total": 12,
    }  # fmt: skip
    assert Progress.from_json(record) == report
    assert "loss" not in record  # a kind's figures only where the kind reports them


def test_a_kind_cannot_shadow_the_core_fields() -> None:
    assert Progress(1, 2, "steps", details={"done": 99, "fraction": 7}).to_json()["done"] == 1


def test_rates_count_this_run_only() -> None:
    throughput = Throughput()
    assert throughput(Progress(30, 100, "blocks", 2.0)).rate is None  # resumed at 30: no rate yet
    later = throughput(Progress(40, 100, "blocks", 12.0))
    assert later.rate == pytest.approx(1.0) and later.eta_seconds == pytest.approx(60.0)
    assert throughput(Progress(41, 100, "iterations", 13.0, rate=5.0)).rate == 5.0  # the kind's own


def test_format_progress() -> None:
    assert (
        format_progress(Progress(12, 48, "blocks", 10.0, 0.5))
        == "blocks 12/48 (25.0%)  0.50 blocks/s  ETA 1m12s"
    )
    assert format_progress(Progress(0, 48, "blocks", 3.0)) == "blocks 0/48 (0.0%)  elapsed 3s"
    assert format_progress(Progress(5, 5, "steps", 3.0, 2500.0)) == "steps 5/5 (100.0%)  2.50 k steps/s"


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (59, "59s"), (187, "3m07s"), (7500, "2h05m")])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_lines_in_a_log_are_throttled_but_the_first_the_first_move_and_the_last_are_kept() -> None:
    stream, now = io.StringIO(), [0.0]
    line = ProgressLine(stream, interval_s=5.0, tty=False, clock=lambda: now[0])
    for step in range(10):
        now[0] = float(step)
        line(Progress(step, 10, "blocks", float(step)))
    now[0] = 10.0
    line(Progress(10, 10, "blocks", 10.0))
    line.close()
    # the first report, the first that moved (with a rate), then every 5 s, and the last
    assert [text.split()[1] for text in stream.getvalue().splitlines()] == ["0/10", "1/10", "6/10", "10/10"]


def test_on_a_terminal_one_line_is_redrawn() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, tty=True, clock=iter(range(100)).__next__)
    line(Progress(1, 2, "blocks", 1.0))
    line(Progress(2, 2, "blocks", 2.0))
    line.close()
    assert stream.getvalue().count("\r") == 2 and stream.getvalue().endswith("\n")
    assert "\n" not in stream.getvalue()[:-1]


def test_a_kinds_parts_show_in_the_line_whatever_their_names() -> None:
    parts = {"windows": [120, 400], "chunks": [0, 30], "tiles": [3, 9], "bad": "x", "short": [1]}
    text = format_progress(Progress(120, 430, "steps", 10.0, 12.0, {"parts": parts}))
    assert text == "steps 120/430 (27.9%)  12.00 steps/s  ETA 26s  windows 120/400  chunks 0/30  tiles 3/9"
    assert (
        Progress.from_json(Progress(1, 2, "steps", details={"parts": parts}).to_json()).details["parts"]
        == parts
    )


def test_a_log_hears_from_a_job_that_stands_still_at_least_every_30_s() -> None:
    """Reports that do not move (a long batch: the driver's heartbeat) still reach a log, and the
    very same line is written again at the latest after ``heartbeat_s``."""
    stream, now = io.StringIO(), [0.0]
    line = ProgressLine(stream, interval_s=5.0, tty=False, clock=lambda: now[0])
    stuck = Progress(3, 10, "steps", 1.0, rate=0.5)  # the same text every time
    written = []
    for second in range(100):
        now[0] = float(second)
        before = stream.getvalue().count("\n")
        line(stuck)
        if stream.getvalue().count("\n") > before:
            written.append(second)
    assert written == [0, LOG_HEARTBEAT_S, 2 * LOG_HEARTBEAT_S, 3 * LOG_HEARTBEAT_S]
    tty = io.StringIO()
    redrawn = ProgressLine(tty, tty=True, clock=lambda: now[0])
    for second in range(100):
        now[0] = float(second)
        redrawn(stuck)
    assert tty.getvalue().count("\r") == 1  # a terminal still shows it: never redrawn the same
