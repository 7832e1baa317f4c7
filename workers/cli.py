"""``pytc-worker``: one process per node, one Dask worker per GPU (or CPU workers where there is none).

Each worker is a Dask ``Nanny`` (so a crashed worker process is restarted) with one compute thread,
advertising ``GPU=1``, and on a GPU node pinned to its GPU through ``CUDA_VISIBLE_DEVICES``.
SIGTERM or SIGINT drains: workers close, the scheduler hands their running blocks to other
workers (block tasks write only their own chunks and record themselves done last, so a block
handed back is simply computed again), and the process exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("pytc.worker")


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    env: dict[str, str] = field(default_factory=dict)


def visible_gpus(environ: Mapping[str, str], requested: str | None) -> list[str]:
    """GPU ids to serve: ``--gpus``, else ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L`` lists."""
    if requested:
        return [g.strip() for g in requested.split(",") if g.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ:
        return [g.strip() for g in environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


def plan_workers(
    name: str, gpus: Sequence[str], cpu_workers: int, cores: int, torch_threads: int | None
) -> list[WorkerSpec]:
    """One worker per GPU, pinned; or ``cpu_workers`` CPU workers sharing the cores evenly."""
    if gpus:
        threads = str(torch_threads or max(1, cores // len(gpus)))
        return [
            WorkerSpec(f"{name}-gpu{g}", {"CUDA_VISIBLE_DEVICES": g, "PYTC_TORCH_THREADS": threads})
            for g in gpus
        ]
    threads = str(torch_threads or max(1, cores // cpu_workers))
    return [
        WorkerSpec(f"{name}-cpu{i}", {"CUDA_VISIBLE_DEVICES": "", "PYTC_TORCH_THREADS": threads})
        for i in range(cpu_workers)
    ]


async def serve(args: argparse.Namespace, specs: list[WorkerSpec]) -> int:
    from distributed import Nanny

    from workers.plugin import ModelCachePlugin

    nannies = [
        Nanny(
            args.scheduler,
            nthreads=1,
            resources={"GPU": 1},
            name=spec.name,
            env=spec.env,
            memory_limit=args.memory_limit,
            local_directory=args.local_directory,
            host=args.host,
            plugins={ModelCachePlugin()},
        )
        for spec in specs
    ]
    await asyncio.gather(*(n.start() for n in nannies))
    log.info("%d workers connected to %s: %s", len(nannies), args.scheduler, ", ".join(s.name for s in specs))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: closing %d workers", len(nannies))
    await asyncio.gather(
        *(n.close(timeout=args.drain_timeout, reason="pytc-worker stopping") for n in nannies)
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytc-worker", description=__doc__.split("\n")[0])
    parser.add_argument("--scheduler", default=os.environ.get("PYTC_SCHEDULER"), help="tcp://HOST:8786")
    parser.add_argument(
        "--gpus", default=None, help="comma-separated GPU ids, e.g. 0,2 (default: all visible)"
    )
    parser.add_argument("--cpu-workers", type=int, default=1, help="workers on a node without GPUs")
    parser.add_argument("--memory-limit", default="auto", help="per worker, e.g. 16GB")
    parser.add_argument("--name", default=os.uname().nodename)
    parser.add_argument("--local-directory", default=None, help="worker scratch space (spill, logs)")
    parser.add_argument("--nthreads-torch", type=int, default=None, help="torch threads per worker")
    parser.add_argument(
        "--host", default=None, help="address to listen on (default: the scheduler's interface)"
    )
    parser.add_argument(
        "--drain-timeout", type=float, default=120.0, help="seconds to finish or hand back blocks"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.scheduler:
        print("error: --scheduler (or PYTC_SCHEDULER) is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    specs = plan_workers(
        args.name,
        visible_gpus(os.environ, args.gpus),
        args.cpu_workers,
        os.cpu_count() or 1,
        args.nthreads_torch,
    )
    return asyncio.run(serve(args, specs))


if __name__ == "__main__":
    sys.exit(main())
