"""A real ``pytc-serve`` for tests: a subprocess on 127.0.0.1 with its own SQLite state, started and
stopped by its pid (and its Dask worker processes by theirs), plus tiny data and a TorchScript model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch
import zarr

from tests.net_helpers import free_port
from volumes.box import Box
from volumes.open import open_volume

PATCH, STRIDE = [5, 17, 17], [2, 8, 8]


class TinyNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def make_data(root: Path, shape: tuple[int, int, int] = (12, 40, 40)) -> Path:
    """``em.zarr/raw`` (uint8) and ``net.pt`` (a scripted 3x3x3 Conv3d, 1 -> 2 channels)."""
    root.mkdir(parents=True, exist_ok=True)
    data = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    zarr.open_group(root / "em.zarr", mode="w").create_array("raw", data=data, chunks=(4, 16, 16))
    torch.jit.script(TinyNet().eval()).save(str(root / "net.pt"))
    return root


def job_doc(output: str = "out.zarr", **sections: Any) -> dict[str, Any]:
    """The contract's job document; ``sections`` replace whole sections or ``section__key`` values."""
    doc: dict[str, Any] = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": PATCH, "stride": STRIDE, "batch_size": 4},
        "output": {
            "path": output,
            "dataset": "pred",
            "heads": [2],
            "activation": ["sigmoid"],
            "chunks": [4, 16, 16],
        },
        "compute": {"block_shape": [4, 16, 16]},
    }
    for name, value in sections.items():
        section, _, key = name.partition("__")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    return doc


def read_output(path: Path, dataset: str = "pred") -> np.ndarray:
    volume = open_volume(path, dataset)
    return volume.read(Box.of_shape(volume.shape))


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path below ``folder`` with its size and mtime (symlinks not followed)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


@dataclass
class Service:
    url: str
    root: Path
    state_dir: Path
    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pids: set[int] = field(default_factory=set)

    def start(self, wait: bool = True) -> Service:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.http.serve", "--port", str(self.port)],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.pids.add(self.proc.pid)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"pytc-serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self._remember_children()
                    return
            time.sleep(0.2)
        raise TimeoutError(f"pytc-serve not ready after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def _remember_children(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            self.pids.update(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True))

    def kill9(self) -> None:
        """``kill -9`` of the service process only (its worker processes notice and exit)."""
        assert self.proc is not None
        self._remember_children()
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        alive = []
        for pid in self.pids - {self.proc.pid}:
            with contextlib.suppress(psutil.Error):
                alive.append(psutil.Process(pid))
        psutil.wait_procs(alive, timeout=15)  # workers exit when their parent is gone

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._remember_children()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in sorted(self.pids):  # worker processes the service may have left behind
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                if child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()

    def service_pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def make_service(root: Path, state_dir: Path, **env: str) -> Service:
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTC_")}
    full_env = {
        **inherited,
        "PYTC_DATA_ROOTS": str(root),
        "PYTC_STATE_DIR": str(state_dir),
        "PYTC_TORCH_THREADS": "1",
        "PYTC_LOG_LEVEL": "info",
        **env,
    }
    state_dir.mkdir(parents=True, exist_ok=True)
    return Service(f"http://127.0.0.1:{port}", root, state_dir, full_env, port, state_dir / "service.log")


@contextlib.contextmanager
def running_service(root: Path, state_dir: Path, **env: str) -> Iterator[Service]:
    service = make_service(root, state_dir, **env)
    try:
        yield service.start()
    finally:
        service.stop()


def wait_for_state(url: str, job_id: str, states: tuple[str, ...], headers: dict[str, str] | None = None,
                   timeout_s: float = 300.0) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            job: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers, timeout=30).json()
        except httpx.TimeoutException:  # a loaded machine; the job's state is what is being waited for
            continue
        if job["state"] in states:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} not in {states} after {timeout_s} s")


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 problem with this status; returns the body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"], body
    return body


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()
