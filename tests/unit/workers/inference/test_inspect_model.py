"""The model check a worker runs for admission: what it reports, and what it refuses without raising."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_checkpoint
from models.ref import ModelInfo, ModelRef
from models.unet3d import build_unet3d
from workers.errors import Refusal
from workers.inference.tasks import inspect_model
from workers.runtime.precision import unsupported_precisions

CONFIG = (("in_channels", 1), ("out_channels", 2), ("filters", (2, 4)), ("isotropy", (False, False)))
PATCH = (5, 17, 17)


@pytest.fixture(autouse=True)
def _fresh_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.runtime import state

    monkeypatch.setattr(state, "_PROCESS_STATE", state.WorkerState())


def _architecture(checkpoint: Path | None = None, **config: object) -> ModelRef:
    return ModelRef(
        "architecture",
        architecture="unet3d",
        config=tuple(dict(CONFIG, **config).items()),
        checkpoint=str(checkpoint) if checkpoint else None,
    )


def test_a_model_that_loads_is_reported_with_its_device(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    save_checkpoint(path, {"state_dict": build_unet3d(dict(CONFIG))})
    info = inspect_model(_architecture(path), PATCH, "cpu")
    assert isinstance(info, ModelInfo) and (info.in_channels, info.out_channels) == (1, 2)
    assert (info.device, info.unsupported_precisions) == unsupported_precisions("cpu")


def test_what_cannot_load_comes_back_as_a_refusal_naming_the_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00junk" * 100)
    holds_a_class = tmp_path / "class.pth"
    torch.save({"state_dict": torch.nn.Conv3d(1, 1, 1)}, holds_a_class)
    cases = [
        (_architecture(junk), "model.checkpoint", "junk.pth"),
        (_architecture(holds_a_class), "model.checkpoint", "Conv3d"),
        (_architecture(kernel=3), "model.config", "kernel"),
        (ModelRef("torchscript", path=str(junk)), "model.torchscript", "junk.pth"),
        (ModelRef("exported", path=str(junk)), "model.exported", "junk.pth"),
        (replace(_architecture(junk), name="mito-v1"), "model.name", "junk.pth"),
    ]
    with caplog.at_level(logging.DEBUG):
        for ref, field, says in cases:
            caplog.clear()
            answer = inspect_model(ref, PATCH)
            assert isinstance(answer, Refusal), ref
            (got_field, reason), *more = answer.errors
            assert got_field == field and says in reason and not more, (ref, answer)
            assert answer.error().field == field and answer.error().reason == reason
            # the traceback is in the debug log, and nothing above it
            assert [r.levelno for r in caplog.records if r.exc_info] == [logging.DEBUG], ref
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING], ref


def test_a_config_whose_weights_exceed_the_model_bound_is_refused_before_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted on the meta device, nothing allocated: filters [64, 128] hold 633,154 parameters (2.4 MiB)."""
    monkeypatch.setenv("PYTC_MAX_MODEL_BYTES", "1MiB")
    answer = inspect_model(_architecture(filters=(64, 128)), PATCH, "cpu")
    assert isinstance(answer, Refusal)
    field, reason = answer.errors[0]
    assert field == "model.config" and "parameters" in reason and "PYTC_MAX_MODEL_BYTES" in reason, answer
    monkeypatch.setenv("PYTC_MAX_MODEL_BYTES", "64MiB")
    assert isinstance(inspect_model(_architecture(filters=(64, 128)), PATCH, "cpu"), ModelInfo)
