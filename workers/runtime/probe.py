"""Admission probes (``inspect_model``, ``inspect_training``) in a child process of the worker,
bounded in time and memory, off the worker's thread pool.

A probe loads a model someone submitted and runs it once on the job's patch: a model of five
768-filter levels held the only worker of a service for a minute, and a job waiting behind it
answered 503. Here the probe leaves the worker's thread pool at once (``secede``, as a training
task does), so a running block keeps its thread and its accelerator slot, and runs in a fresh
Python process (``python -m workers.runtime.probe``) at lower priority, with its address space
capped and killed at its deadline: a probe that does not finish is a refusal naming the model and
the bound, and leaves nothing behind in the worker (no half-loaded model, no stuck thread).

The answer comes back as JSON of one of the answer types below (never a pickle: the child ran a
model someone else wrote). The child loads the model afresh, so the worker's model cache is not
filled by a probe; the job's first block loads it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from models.ref import ModelInfo
from workers.errors import Refusal, SpecError
from workers.training.job import TrainingModelInfo

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0
PROBE_NICENESS = 10
_ANSWERS: dict[str, type] = {cls.__name__: cls for cls in (ModelInfo, TrainingModelInfo, Refusal)}
_REQUEST, _ANSWER, _LOG, _READY = "request.pickle", "answer.json", "stderr.txt", "ready"
# The child's own start (a Python importing torch), not counted in the probe's time, at most this.
START_S = 60.0
POLL_S = 0.05


def probe_in_child(
    fn: Callable[..., Any], args: tuple[Any, ...], timeout_s: float, memory_bytes: int | None
) -> Any:
    """``fn(*args)`` in a child process, at most ``timeout_s`` seconds and ``memory_bytes`` of
    address space from the moment it has imported torch (None: no memory cap). Returns
    ``fn``'s answer (one of ModelInfo, TrainingModelInfo, Refusal) or a Refusal saying which bound
    the probe ran past."""
    _leave_thread_pool()
    with tempfile.TemporaryDirectory(prefix="pytc-probe-") as folder:
        Path(folder, _REQUEST).write_bytes(pickle.dumps((fn, args)))
        command = [sys.executable, "-m", "workers.runtime.probe", folder, str(memory_bytes or 0)]
        with open(Path(folder, _LOG), "wb") as errors:
            child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=errors, stderr=errors)
            if not _finished(child, Path(folder, _READY), timeout_s):
                log.info("model probe %s ran past %.0f s; killed", getattr(fn, "__name__", fn), timeout_s)
                return _refusal(
                    f"checking the model (loading it and running it once on the job's patch) took "
                    f"more than {timeout_s:.0f} s (PYTC_MODEL_PROBE_TIMEOUT_S); the probe was stopped: "
                    "use a smaller model or patch"
                )
        answer = Path(folder, _ANSWER)
        if not answer.is_file():
            return _refusal(_died(child.returncode, Path(folder, _LOG), memory_bytes))
        return decode_answer(json.loads(answer.read_text()))


def _finished(child: subprocess.Popen[bytes], ready: Path, timeout_s: float) -> bool:
    """Whether ``child`` ended within ``timeout_s`` of being ready (torch imported: its start-up,
    seconds on a busy machine, is not the model's), waiting at most ``START_S`` for that; killed
    otherwise."""
    deadline, counting = time.monotonic() + START_S, False
    while child.poll() is None:
        if not counting and ready.exists():
            deadline, counting = time.monotonic() + timeout_s, True
        if time.monotonic() > deadline:
            child.kill()
            child.wait()
            return False
        time.sleep(POLL_S)
    return True


def encode_answer(answer: Any) -> dict[str, Any]:
    name = type(answer).__name__
    if _ANSWERS.get(name) is not type(answer):
        raise TypeError(f"a probe answers one of {sorted(_ANSWERS)}, not {name}")
    fields: dict[str, Any] = dataclasses.asdict(answer)  # type: ignore[call-overload]
    return {"type": name, "fields": fields}


def decode_answer(data: dict[str, Any]) -> Any:
    """The answer a child wrote, rebuilt as its type (lists back to tuples)."""
    cls = _ANSWERS[data["type"]]
    return cls(**{key: _tuples(value) for key, value in data["fields"].items()})


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _refusal(reason: str) -> Refusal:
    return Refusal.of(SpecError("model", reason))


def _died(code: int, errors: Path, memory_bytes: int | None) -> str:
    text = errors.read_text(errors="replace").strip().splitlines()
    last = text[-1] if text else f"exit status {code}"
    if memory_bytes and ("MemoryError" in last or "can't allocate memory" in last or code == -9):
        return (
            f"checking the model needs more than {memory_bytes:,} bytes of memory beyond torch "
            f"(4 x PYTC_MAX_MODEL_BYTES): {last}"
        )
    return f"checking the model failed in its process ({last})"


def _leave_thread_pool() -> None:
    """Off the Dask worker's thread pool, as a training task is: a block keeps its thread."""
    try:
        from distributed import get_worker, secede

        get_worker()
    except (ImportError, ValueError):  # not on a worker (a test, pytc run's own process)
        return
    secede()


def _cap_memory(extra_bytes: int) -> None:
    """The address space limited to what this process maps now plus ``extra_bytes``."""
    with open("/proc/self/status") as status:
        line = next(row for row in status if row.startswith("VmSize:"))
    mapped = int(line.split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + extra_bytes, resource.RLIM_INFINITY))


def main(argv: list[str]) -> int:
    """The child: load the request, import torch, cap the memory, answer, write JSON."""
    folder, memory = Path(argv[0]), int(argv[1])
    os.nice(PROBE_NICENESS)
    fn, args = pickle.loads(Path(folder, _REQUEST).read_bytes())  # written by our parent
    import torch  # noqa: F401  (mapped before the cap: the cap is on what the model takes)

    if memory:
        _cap_memory(memory)
    Path(folder, _READY).touch()  # the deadline runs from here
    answer = encode_answer(fn(*args))
    partial = Path(folder, _ANSWER + ".partial")
    partial.write_text(json.dumps(answer))
    partial.replace(Path(folder, _ANSWER))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
