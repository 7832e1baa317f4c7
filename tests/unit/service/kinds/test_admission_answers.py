"""What the kinds do with a worker's answer to their checks: a refusal becomes the SpecError it
holds, a lost connection stays a lost connection (503, never a 422 blaming the model), and a
damaged model file is refused from its bytes without asking a worker at all."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from models.ref import ModelInfo, ModelRef
from service.errors import SchedulerUnavailableError, SpecError
from service.kinds.base import AdmitEnv
from service.kinds.inference import InferenceKind
from service.kinds.training import TrainingKind
from tests.helpers import make_job
from tests.training_helpers import training_doc, write_data
from workers.errors import Refusal
from workers.inference.job import WindowSpec

WINDOW = WindowSpec((5, 5, 5), (4, 4, 4), "gaussian")


def _job(root: Path, model: ModelRef) -> Any:
    return make_job(root / "in.zarr", root / "out.zarr", WINDOW, model=model)


def _torch_file(root: Path) -> Path:
    """A zip archive: what a file torch wrote looks like from its bytes (no torch needed here)."""
    path = root / "net.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("net/data.pkl", b"")
    return path


def test_a_refusal_is_raised_as_its_spec_error(tmp_path: Path) -> None:
    job = _job(tmp_path, ModelRef("torchscript", path=str(_torch_file(tmp_path))))
    refusal = Refusal((("model.torchscript", "torchscript model net.pt is damaged"),))
    with pytest.raises(SpecError) as info:
        InferenceKind().model_info(job, lambda fn, *args: refusal)
    assert (info.value.field, info.value.reason) == refusal.errors[0]


def test_an_answer_is_kept_per_model_and_device(tmp_path: Path) -> None:
    job = _job(tmp_path, ModelRef("torchscript", path=str(_torch_file(tmp_path))))
    calls: list[tuple[Any, ...]] = []

    def on_worker(fn: Any, *args: Any) -> ModelInfo:
        calls.append(args)
        return ModelInfo(1, 1, "sha")

    kind = InferenceKind()
    kind.model_info(job, on_worker)
    kind.model_info(job, on_worker)
    assert len(calls) == 1 and calls[0][2] == job.compute.device  # asked once, for the job's device
    kind.model_info(replace(job, compute=replace(job.compute, device="cpu")), on_worker)
    assert len(calls) == 2


def test_no_worker_is_a_lost_connection_not_a_bad_model(tmp_path: Path) -> None:
    job = _job(tmp_path, ModelRef("torchscript", path=str(_torch_file(tmp_path))))

    def unreachable(fn: Any, *args: Any) -> Any:
        raise SchedulerUnavailableError("Dask is not available: not connected yet")

    with pytest.raises(SchedulerUnavailableError):
        InferenceKind().model_info(job, unreachable)


def test_a_damaged_model_file_is_refused_without_a_worker(tmp_path: Path) -> None:
    (tmp_path / "cut.pth").write_bytes(b"PK\x03\x04 and then nothing")
    (tmp_path / "empty.pt").write_bytes(b"")
    cases = [
        (
            ModelRef("architecture", architecture="unet3d", checkpoint=str(tmp_path / "cut.pth")),
            "model.checkpoint",
        ),
        (ModelRef("torchscript", path=str(tmp_path / "empty.pt")), "model.torchscript"),
        (
            ModelRef("architecture", architecture="unet3d", checkpoint=str(tmp_path / "gone.pth")),
            "model.checkpoint",
        ),
    ]

    def no_worker(fn: Any, *args: Any) -> Any:
        pytest.fail("a worker was asked about a file its bytes already condemn")

    for ref, field in cases:
        with pytest.raises(SpecError) as info:
            InferenceKind().model_info(_job(tmp_path, ref), no_worker)
        assert info.value.field == field and str(ref.path or ref.checkpoint) in info.value.reason


def test_training_admission_raises_the_workers_refusal(tmp_path: Path) -> None:
    from service.documents.training import parse_training

    write_data(tmp_path)
    job = parse_training(training_doc(), [tmp_path])
    refusal = Refusal((("compute.precision", "the CPU of worker w has no native float16"),))
    with pytest.raises(SpecError) as info:
        TrainingKind().admit(job, AdmitEnv(on_worker=lambda fn, *args: refusal))
    assert info.value.errors == refusal.errors
