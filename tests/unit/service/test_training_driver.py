"""The control plane's side of training, without Dask: checkpoint-folder records, the task's progress
record as the one progress value and its line, and a name resolved from the file registry."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from models.ref import ModelRef
from service.errors import ModelNotRegisteredError
from service.kinds import parse_job
from service.kinds.base import ParseEnv, model_resolver
from service.kinds.training import progress_of
from service.progress import Progress, ProgressLine, format_progress
from service.store.model_file import FileModelRegistry
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
    report = progress_of(tdir.read_progress() or {})
    assert (report.done, report.total, report.eta_seconds) == (3, 10, 3.5)
    assert report.to_json()["fraction"] == pytest.approx(0.3) and report.to_json()["unit"] == "iterations"
    tdir.request_cancel()
    assert tdir.is_cancelled()
    tdir.clear_cancel()
    assert not tdir.is_cancelled()


def test_progress_line() -> None:
    record = {
        "state": "validating", "iteration": 120, "total": 400, "loss": 0.31214, "lr": 1e-3,
        "iterations_per_second": 5.2, "attempts": [{}, {}],
        "validation": [{"iteration": 100, "dice": 0.91234, "iou": 0.8}],
    }  # fmt: skip
    text = format_progress(progress_of(record))
    for part in ("iterations 120/400 (30.0%)", "5.20 iterations/s", "ETA 54s", "loss 0.3121", "lr 1.00e-03",
                 "val dice 0.912 @100", "(attempt 2)", "[validating]"):  # fmt: skip
        assert part in text, part
    stream = io.StringIO()
    clock = iter([0.0, 1.0, 1.5, 2.0, 10.0])
    line = ProgressLine(stream, interval_s=5.0, tty=False, clock=lambda: next(clock))

    def at(done: int, phase: str) -> Progress:
        return Progress(done, 5, "iterations", details={"phase": phase})

    line(at(1, "training"))
    line(at(2, "training"))  # the first that moved in this run: shown
    line(at(3, "training"))  # too soon: skipped
    line(at(3, "saving"))  # a new phase: shown
    line(at(5, "saving"))  # the last report: shown
    assert [text.split()[1] for text in stream.getvalue().splitlines()] == ["1/5", "2/5", "3/5", "5/5"]


def test_pytc_run_resolves_a_name_from_the_file_registry(tmp_path: Path) -> None:
    registry = FileModelRegistry(tmp_path / ".pytc")
    with pytest.raises(ModelNotRegisteredError):
        registry.get("mito")
    config = (("filters", (2, 4)), ("out_channels", 1))
    checkpoint = str(tmp_path / "c.pth")
    trained = ModelRef("architecture", architecture="unet3d", config=config, checkpoint=checkpoint)
    ref = registry.register("mito", trained, "ab").ref
    assert ref.kind == "architecture" and ref.architecture == "unet3d" and ref.name == "mito"
    doc = {
        "input": {"path": "em.zarr"},
        "model": {"name": "mito"},
        "window": {"patch_size": [5, 17, 17]},
        "output": {"path": "out.zarr"},
    }
    env = ParseEnv((tmp_path.resolve(),), model_resolver(registry, [tmp_path]))
    kind, job = parse_job(doc, env)
    assert kind.name == "inference" and job.model == ref
    assert parse_job(training_doc(), env)[0].name == "training"
