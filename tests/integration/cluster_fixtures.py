"""A real cluster on 127.0.0.1 for tests: a ``dask scheduler`` process and ``pytc-worker`` processes,
each started and stopped by its pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr

from tests.net_helpers import free_port
from workers.inference.ledger import done_count

BIN = Path(sys.executable).parent


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: Path = Path(".")

    def add_worker(self, name: str, threads: int = 1, *flags: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 (kept open for the process)
        env = {**os.environ, "PYTC_TORCH_THREADS": str(threads)}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "workers.runtime.cli",
                "--scheduler",
                self.address,
                "--cpu-workers",
                "1",
                "--name",
                name,
                "--host",
                "127.0.0.1",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, count: int, timeout: float = 60) -> None:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            client.wait_for_workers(count, timeout=timeout)


@contextmanager
def running_cluster(tmp: Path, n_workers: int, pin_cores: bool = False) -> Iterator[Cluster]:
    """A scheduler and ``n_workers`` pytc-workers; with ``pin_cores`` worker i is pinned to the
    i-th core this process may use (``--cpu-cores``), so the workers never share a core."""
    port = free_port()
    log = open(tmp / "scheduler.log", "wb")  # noqa: SIM115
    scheduler = subprocess.Popen(
        [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    cluster = Cluster(f"tcp://127.0.0.1:{port}", scheduler, logs=tmp)
    try:
        cores = sorted(os.sched_getaffinity(0))
        for i in range(n_workers):
            pin = ("--cpu-cores", str(cores[i % len(cores)])) if pin_cores else ()
            cluster.add_worker(f"w{i}", 1, *pin)
        if n_workers:
            cluster.wait_for_workers(n_workers)
        yield cluster
    finally:
        for proc in cluster.workers:
            stop(proc)
        stop(scheduler)


class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv3d(1, 8, 3, padding=1)
        self.b = torch.nn.Conv3d(8, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def make_data(root: Path, shape: tuple[int, int, int] = (16, 96, 96)) -> None:
    data = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    zarr.open_group(root / "em.zarr", mode="w").create_array("raw", data=data, chunks=(8, 32, 32))
    torch.jit.script(SmallNet().eval()).save(str(root / "net.pt"))


def write_job(root: Path, output: str = "out.zarr", name: str = "job.yaml", batch: int = 2) -> Path:
    doc = {
        "kind": "inference",
        "input": {"path": "em.zarr", "dataset": "raw"},
        "model": {"torchscript": "net.pt"},
        "window": {"patch_size": [5, 33, 33], "stride": [2, 16, 16], "batch_size": batch},
        "output": {"path": output, "dataset": "pred", "activation": ["sigmoid"], "chunks": [4, 16, 16]},
        "compute": {"block_shape": [4, 32, 32]},
    }
    path = root / name
    path.write_text(yaml.safe_dump(doc))
    return path


def pytc_run(
    root: Path, job: Path, scheduler: str | None, report: Path | None = None
) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "run", str(job), "--quiet", "--data-root", str(root)]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    if report:
        cmd += ["--report", str(report)]
    return subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def done_blocks(output: Path, phase: int = 2) -> int:
    """Blocks of ``output`` (dataset ``pred``) recorded done in ``phase``, in every run folder."""
    return sum(done_count(folder)[phase - 1] for folder in output.glob(".pytc-run/pred/*") if folder.is_dir())


def wait_until(predicate, timeout: float = 120, every: float = 0.1) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(every)
    raise TimeoutError("condition not reached in time")
