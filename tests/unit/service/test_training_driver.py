"""The control plane's side of training, without Dask: checkpoint-folder records, the file registry,
progress reports and their display."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from service.errors import ModelNotRegisteredError
from service.model_file_registry import FileModelRegistry, state_dir
from service.spec import parse_job_document
from service.training_progress import TrainingProgressLine, format_training_progress
from service.training_runner import TrainingProgress, progress_from_record
from tests.training_helpers import training_doc
from workers.training.checkpoint_dir import TrainingDir


def test_training_dir_lists_records_and_prunes_only_its_own(tmp_path: Path) -> None:
    tdir = TrainingDir(tmp_path, "key")
    for i in (2, 4, 6, 8):
        tdir.checkpoint_path(i).write_bytes(b"x")
        tdir.record_checkpoint(i)
    foreign = tdir.checkpoint_path(1)
    foreign.write_bytes(b"someone else's")
    (tmp_path / "checkpoint_x.pth.tar").write_bytes(b"not ours by name")
    assert [i for i, _ in tdir.checkpoints()] == [1, 2, 4, 6, 8]
    removed = tdir.prune(keep_last=2, keep={2})
    assert sorted(p.name for p in removed) == ["checkpoint_00004.pth.tar"]
    assert tdir.own_iterations() == [2, 6, 8] and foreign.exists()


def test_progress_and_cancel_records(tmp_path: Path) -> None:
    tdir = TrainingDir(tmp_path, "key")
    assert tdir.read_progress() is None and not tdir.is_cancelled()
    tdir.write_progress({"iteration": 3, "total": 10, "loss": 0.5, "lr": 1e-3, "iterations_per_second": 2.0})
    report = progress_from_record(tdir.read_progress() or {})
    assert (report.done, report.total, report.eta_seconds) == (3, 10, 3.5)
    assert report.to_json()["fraction"] == pytest.approx(0.3) and report.to_json()["unit"] == "iterations"
    tdir.request_cancel()
    assert tdir.is_cancelled()
    tdir.clear_cancel()
    assert not tdir.is_cancelled()


def test_progress_line() -> None:
    report = TrainingProgress(
        done=120, total=400, state="validating", loss=0.31214, lr=1e-3, iterations_per_second=5.2, attempt=2,
        validation=[{"iteration": 100, "dice": 0.91234, "iou": 0.8}],
    )  # fmt: skip
    text = format_training_progress(report)
    for part in ("iteration 120/400 (30.0%)", "loss 0.3121", "lr 1.00e-03", "5.20 it/s", "ETA 54s",
                 "val dice 0.912 @100", "(attempt 2)", "[validating]"):  # fmt: skip
        assert part in text, part
    stream = io.StringIO()
    clock = iter([0.0, 1.0, 1.5, 10.0])
    line = TrainingProgressLine(stream, interval_s=5.0, tty=False, clock=lambda: next(clock))
    line(TrainingProgress(done=1, total=4, state="training"))
    line(TrainingProgress(done=2, total=4, state="training"))  # too soon: skipped
    line(TrainingProgress(done=2, total=4, state="saving"))  # a new state: shown
    line(TrainingProgress(done=4, total=4, state="saving"))
    assert stream.getvalue().count("\n") == 3


def test_file_registry(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / ".pytc")
    with pytest.raises(ModelNotRegisteredError):
        registry.resolve("mito")
    registry.register(
        "mito", str(tmp_path / "c.pth.tar"), "unet3d", {"filters": [2, 4], "out_channels": 1}, "ab"
    )
    ref = registry.resolve("mito")
    assert ref.kind == "architecture" and ref.architecture == "unet3d" and ref.name == "mito"
    assert ref.checkpoint == str(tmp_path / "c.pth.tar") and ref.config_dict()["filters"] == [2, 4]
    assert registry.entries()["mito"]["sha256"] == "ab"
    assert state_dir({"PYTC_STATE_DIR": "/x"}) == Path("/x") and state_dir({}) == Path(".pytc")
    doc = {
        "input": {"path": "em.zarr"},
        "model": {"name": "mito"},
        "window": {"patch_size": [5, 17, 17]},
        "output": {"path": "out.zarr"},
    }
    job = parse_job_document(doc, [tmp_path], resolve_model=registry.resolve)
    assert job.model == ref  # type: ignore[union-attr]
    assert parse_job_document(training_doc(), [tmp_path]).kind == "training"  # type: ignore[union-attr]
