"""Admission probes in a child process: the same answer as in process, and refusals (not hangs, not
a worker held) for a model that runs past the probe's deadline or memory."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import pytest
import torch

from models.ref import ModelInfo, ModelRef
from service.errors import ProbesBusyError, SchedulerUnavailableError
from service.jobs.submission import ProbeGate
from workers.errors import Refusal
from workers.inference.tasks import inspect_model
from workers.runtime.probe import decode_answer, encode_answer, probe_in_child

PATCH = (5, 17, 17)
ENV = {"PYTHONPATH": str(Path(__file__).parents[4])}


class Small(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Slow(torch.nn.Module):
    """Runs for minutes on any input: a model too big to check within the deadline."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(1000000000):
            x = x + 1.0
        return x


class Greedy(torch.nn.Module):
    """Asks for 512 MiB on every input: over a probe capped at 128 MiB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.zeros(134217728).sum()


def _scripted(folder: Path, module: torch.nn.Module, name: str) -> ModelRef:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module).save(str(folder / name))
    return ModelRef("torchscript", path=str(folder / name))


@pytest.fixture(autouse=True)
def _child_imports_this_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])


def test_a_probe_in_a_child_answers_as_in_process(tmp_path: Path) -> None:
    ref = _scripted(tmp_path, Small(), "small.pt")
    answer = probe_in_child(inspect_model, (ref, PATCH, "cpu"), 120, 2**30)
    assert isinstance(answer, ModelInfo) and answer == inspect_model(ref, PATCH, "cpu")
    assert (answer.in_channels, answer.out_channels) == (1, 3)


def test_a_probe_past_its_deadline_is_killed_and_refused(tmp_path: Path) -> None:
    ref = _scripted(tmp_path, Slow(), "slow.pt")
    start = time.monotonic()
    answer = probe_in_child(inspect_model, (ref, PATCH, "cpu"), 8, None)
    assert time.monotonic() - start < 8 + 40  # its own start-up (torch) is not counted
    assert isinstance(answer, Refusal)
    field, reason = answer.errors[0]
    assert field == "model" and "took more than 8 s (PYTC_MODEL_PROBE_TIMEOUT_S)" in reason, reason
    # the child is gone: no process of ours is left running python -m workers.runtime.probe
    left = [p for p in os.listdir("/proc") if p.isdigit() and _probe_child_of_us(p)]
    assert left == []


def _probe_child_of_us(pid: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return False
    return b"workers.runtime.probe" in cmdline and ppid == os.getpid()


def test_a_probe_over_its_memory_is_refused_naming_the_allocation(tmp_path: Path) -> None:
    ref = _scripted(tmp_path, Greedy(), "greedy.pt")
    answer = probe_in_child(inspect_model, (ref, PATCH, "cpu"), 120, 128 * 2**20)
    assert isinstance(answer, Refusal)
    field, reason = answer.errors[0]
    assert field.startswith("model") and "can't allocate memory" in reason, reason


def test_answers_travel_as_json_of_their_own_types() -> None:
    info = ModelInfo(1, 2, "ab" * 32, "torchscript x", "cpu", (("float16", "no native float16"),))
    assert decode_answer(encode_answer(info)) == info
    refusal = Refusal((("model", "too slow"),))
    assert decode_answer(encode_answer(refusal)) == refusal
    with pytest.raises(TypeError):
        encode_answer({"type": "ModelInfo"})
    with pytest.raises(KeyError):
        decode_answer({"type": "Popen", "fields": {}})


def test_the_gate_lets_n_probes_through_and_answers_503_to_the_next() -> None:
    gate = ProbeGate(1, wait_s=0.2)
    with gate.slot():
        start = time.monotonic()
        with pytest.raises(ProbesBusyError, match="1 model check") as caught, gate.slot():
            pass
        assert 0.15 < time.monotonic() - start < 2
        assert isinstance(caught.value, SchedulerUnavailableError)  # a 503 with Retry-After
    with gate.slot():  # released: the next one goes through
        pass
