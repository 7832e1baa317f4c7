"""``pytc-worker``: one process per node, one Dask worker per GPU (or CPU workers where there is none).

Each worker is a Dask ``Nanny`` (a crashed worker process is restarted) with one compute thread,
advertising ``GPU=1`` so the same GPU-tagged block tasks run on GPU and CPU-only nodes alike, and
on a GPU node pinned to its GPU through ``CUDA_VISIBLE_DEVICES``. Every worker carries the
``pytc-worker-state`` plugin (:mod:`workers.runtime.state`: its models, geometries, outputs).

SIGTERM or SIGINT drains: the workers stop taking tasks, the blocks they are running finish and
report (for at most ``--drain-timeout`` seconds), results still held are handed to other workers,
the workers leave the scheduler and the process exits 0. A block cut off by the timeout, or by a
second signal, is handed back to the scheduler and computed again elsewhere; that is harmless,
since a block writes only its own chunks and records itself done last.

Worker names are ``<prefix>-gpu<index>`` (``-mig-<uuid start>`` for a MIG slice) or
``<prefix>-cpu<i>``; the default prefix is the host name and this process's id, so that two
pytc-workers on one host (one per GPU subset, say) never take each other's names. A start that
fails on a name the scheduler already has says so, and that ``--name`` chooses another.

The parent process imports neither torch nor the models: GPUs are counted with ``nvidia-smi -L``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.resources import ONE_ACCELERATOR
from workers.runtime.affinity import ENV as AFFINITY_ENV
from workers.runtime.affinity import CoreListError, check_available, parse_cores, split_cores
from workers.version import add_version_flag

if TYPE_CHECKING:
    from distributed import Nanny

log = logging.getLogger("pytc.worker")

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
HEALTH_INTERVAL_S = 10.0
_NO_GPU = {"", "-1", "none", "NoDevFiles"}
_GPU_LINE = re.compile(r"^GPU (\d+):")
_MIG_LINE = re.compile(r"^\s+MIG\b.*\(UUID: (MIG-[^)\s]+)\)")
_NAME_TAKEN = re.compile(r"name taken, ([^'\"\s]+)")


@dataclass(frozen=True)
class WorkerSpec:
    """One Dask worker to start: its name and the environment its process gets."""

    name: str
    env: dict[str, str] = field(default_factory=dict)


def parse_nvidia_smi(listing: str) -> list[str]:
    """Device ids from ``nvidia-smi -L``: GPU indices, or the MIG instances' UUIDs for a GPU in MIG
    mode (CUDA addresses a MIG slice only by its UUID)."""
    gpus: list[tuple[str, list[str]]] = []
    for line in listing.splitlines():
        if gpu := _GPU_LINE.match(line):
            gpus.append((gpu.group(1), []))
        elif (mig := _MIG_LINE.match(line)) and gpus:
            gpus[-1][1].append(mig.group(1))
    return [device for index, migs in gpus for device in (migs or [index])]


def _split_devices(value: str) -> list[str]:
    devices = [d.strip() for d in value.split(",")]
    return [] if any(d in _NO_GPU for d in devices) else devices


def nvidia_smi_listing() -> str:
    """``nvidia-smi -L``'s output, or "" where there is no driver."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("nvidia-smi -L failed (%s): starting CPU workers", exc)
        return ""
    return done.stdout if done.returncode == 0 else ""


def visible_gpus(
    environ: Mapping[str, str],
    requested: str | None,
    listing: Callable[[], str] = nvidia_smi_listing,
) -> list[str]:
    """GPU ids to serve: ``--gpus``, else ``CUDA_VISIBLE_DEVICES``, else what ``nvidia-smi -L`` lists.

    ``none``, ``-1`` or an empty value means no GPU (CPU workers), as CUDA reads it.
    """
    if requested is not None:
        return _split_devices(requested)
    if "CUDA_VISIBLE_DEVICES" in environ:
        return _split_devices(environ["CUDA_VISIBLE_DEVICES"])
    return parse_nvidia_smi(listing())


def plan_workers(
    name: str,
    gpus: Sequence[str],
    cpu_workers: int,
    cores: int,
    torch_threads: int | None,
    cpu_cores: Sequence[int] | None = None,
) -> list[WorkerSpec]:
    """One worker per GPU, pinned to it; or ``cpu_workers`` CPU workers that see no GPU.

    Torch gets ``cores // workers`` intra-op threads each (``PYTC_TORCH_THREADS``, read by
    ``workers.runtime.affinity.torch_threads``) unless ``torch_threads`` says otherwise. With ``cpu_cores``
    each worker is pinned to its own share of them (``workers.runtime.affinity``) and its torch threads
    default to the share's size. Workers are named ``<name>-<device>`` (:func:`device_labels`), or
    ``<name>-cpu<i>``.
    """
    count = len(gpus) or cpu_workers
    shares: list[list[int] | None] = [None] * count
    if cpu_cores:
        check_available(cpu_cores)
        shares = list(split_cores(cpu_cores, count))

    def env(device: str, share: list[int] | None) -> dict[str, str]:
        threads = torch_threads or (len(share) if share else max(1, cores // count))
        values = {"CUDA_VISIBLE_DEVICES": device, "PYTC_TORCH_THREADS": str(threads)}
        if share:
            values[AFFINITY_ENV] = ",".join(map(str, share))
        return values

    if gpus:
        labels = device_labels(gpus)
        return [WorkerSpec(f"{name}-{labels[i]}", env(gpu, shares[i])) for i, gpu in enumerate(gpus)]
    return [WorkerSpec(f"{name}-cpu{i}", env("", shares[i])) for i in range(cpu_workers)]


def device_labels(gpus: Sequence[str]) -> list[str]:
    """What names each GPU worker, unique among ``gpus``: ``gpu2`` for GPU index 2; for a UUID (a
    MIG slice, a GPU named by its UUID) its kind and first 8 hex digits, ``mig-aaaaaaaa``, or all of
    it where those are not unique. A device listed twice gets its position added (``gpu0-0``,
    ``gpu0-1``). Labels name the device rather than its position in the list, so two pytc-workers
    given disjoint devices of one host never share a name."""
    for width in (12, None):
        labels = [_device_label(device, width) for device in gpus]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{label}-{i}" for i, label in enumerate(labels)]


def _device_label(device: str, width: int | None) -> str:
    if device.isdigit():
        return f"gpu{device}"
    text = re.sub(r"[^0-9a-z]+", "-", device.lower()).strip("-")
    return text[:width] if width else text


def default_name() -> str:
    """The default worker name prefix: this host and this process, ``node7-12345``."""
    return f"{os.uname().nodename}-{os.getpid()}"


def memory_limit_per_worker(requested: str | None, workers: int) -> str | float:
    """``--memory-limit`` as given (per worker), else an equal share of the node's memory.

    Dask's own default ("auto") gives a worker ``threads / cores`` of the memory: with one thread
    per GPU worker that is 1/64 of a 64-core node, far too little for a block and its windows.
    """
    return requested if requested else 1.0 / max(1, workers)


def _stop_taking_tasks(dask_worker: Any) -> tuple[int, int]:
    """Runs inside a worker: take no new task, and say how many are running and how many results
    it still holds.

    ``closing_gracefully`` is what ``Scheduler.retire_workers`` sets; setting it from the worker
    tells the scheduler the same (no new task is assigned, none queued here starts) without
    retire's catch: when no other worker can take this one's results, retire gives up and puts
    the worker back to ``running``.
    """
    from distributed.core import Status

    if dask_worker.status in (Status.running, Status.paused):
        dask_worker.status = Status.closing_gracefully
    state = dask_worker.state
    return len(state.executing) + len(state.long_running), len(dask_worker.data)


async def _probe(nanny: Nanny) -> tuple[int, int]:
    from distributed.protocol import pickle

    address = nanny.worker_address
    if address is None:
        return 0, 0
    try:
        reply = await asyncio.wait_for(
            nanny.rpc(address).run(function=pickle.dumps(_stop_taking_tasks)), timeout=10
        )
    except (OSError, TimeoutError) as exc:  # a worker already gone has nothing left to drain
        log.info("worker %s did not answer (%s)", nanny.name, exc)
        return 0, 0
    if reply.get("status") != "OK":
        log.warning("worker %s: %s", nanny.name, reply.get("exception"))
        return 0, 0
    running, held = reply["result"]
    return int(running), int(held)


async def drain(nannies: Sequence[Nanny], timeout_s: float, hurry: asyncio.Event) -> None:
    """Finish or hand back every block, then close the workers (see the module docstring)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for nanny in nannies:
        nanny.close_gracefully(reason="pytc-worker draining")  # a worker that exits is not restarted
    idle_since: float | None = None
    while not hurry.is_set() and loop.time() < deadline:
        counts = await asyncio.gather(*(_probe(n) for n in nannies))
        running, held = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if running == 0:
            idle_since = idle_since or loop.time()
            # Results wait a moment for their client to fetch them; then retire moves them.
            if held == 0 or loop.time() - idle_since > 5:
                break
        log.info("draining: %d blocks running, %d results held", running, held)
        await _sleep_unless(hurry, 0.5 if running == 0 else 1.0)
    addresses = [n.worker_address for n in nannies if n.worker_address]
    if addresses and not hurry.is_set():
        try:
            await asyncio.wait_for(
                nannies[0].scheduler.retire_workers(
                    workers=addresses,
                    close_workers=False,
                    remove=True,
                    stimulus_id=f"pytc-drain-{time.time()}",
                ),
                timeout=max(5.0, min(30.0, deadline - loop.time())),
            )
        except (OSError, TimeoutError) as exc:
            log.warning("could not retire the workers through the scheduler (%s); closing them", exc)
    await close_all(nannies, timeout_s=2.0 if hurry.is_set() else 10.0)


async def close_all(nannies: Sequence[Nanny], timeout_s: float) -> None:
    """Close every nanny and its worker process; a worker stuck past the timeout is killed."""

    async def close(nanny: Nanny) -> None:
        try:
            # Nanny.close waits for a worker that is still connecting; bound it.
            await asyncio.wait_for(
                nanny.close(timeout=timeout_s, reason="pytc-worker stopping"), 3 * timeout_s
            )
        except (OSError, TimeoutError) as exc:
            log.warning("worker %s did not close cleanly: %s", nanny.name, exc)

    await asyncio.gather(*(close(n) for n in nannies))


async def _sleep_unless(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _healthy(nanny: Nanny) -> bool:
    from distributed.core import Status

    process = nanny.process
    return nanny.status == Status.running and process is not None and process.status == Status.running


def write_health(path: Path, nannies: Sequence[Nanny]) -> None:
    """Record, atomically, whether every worker process is up (read by ``--check-health``)."""
    workers = {str(n.name): _healthy(n) for n in nannies}
    record = {"time": time.time(), "pid": os.getpid(), "healthy": all(workers.values()), "workers": workers}
    # Here, not at the top: --check-health runs often and needs none of the data plane's imports.
    from volumes.files import write_json_atomic

    write_json_atomic(path, record)


def check_health(path: Path, max_age_s: float = 3 * HEALTH_INTERVAL_S) -> int:
    """Exit status for a container healthcheck: 0 when the health file is fresh and all is up."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"unhealthy: cannot read {path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    age = time.time() - float(record.get("time", 0))
    if age > max_age_s or not record.get("healthy"):
        print(f"unhealthy: {path} is {age:.0f} s old, workers {record.get('workers')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _nanny(args: argparse.Namespace, spec: WorkerSpec, memory_limit: str | float) -> Nanny:
    from distributed import Nanny

    from workers.runtime.state import WorkerState

    # Nanny passes unknown keywords on to Worker (pickled, into the spawned process), and
    # Worker(plugins=...) installs them before it registers with the scheduler: the cache is there
    # before the first task, with this node's capacity, and without a client. (register_plugin
    # from a client would work too, but the scheduler keeps it only until it restarts.)
    return Nanny(
        args.scheduler,
        nthreads=1,
        resources=ONE_ACCELERATOR,
        name=spec.name,
        env=spec.env,
        memory_limit=memory_limit,
        local_directory=args.local_directory,
        host=args.host,
        plugins=(WorkerState(max_models=args.max_models),),
    )


async def serve(args: argparse.Namespace, specs: Sequence[WorkerSpec]) -> int:
    """Start the workers, keep them until a signal, then drain. Returns the exit status."""
    loop = asyncio.get_running_loop()
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: closing now, running blocks are handed back", sig.name)
            hurry.set()
        else:
            log.info(
                "%s: draining (at most %.0f s; send it again to stop at once)", sig.name, args.drain_timeout
            )
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    memory_limit = memory_limit_per_worker(args.memory_limit, len(specs))
    nannies = [_nanny(args, spec, memory_limit) for spec in specs]
    health = Path(args.health_file) if args.health_file else None
    stopping = asyncio.ensure_future(stop.wait())
    try:
        starting = asyncio.ensure_future(asyncio.gather(*(n.start() for n in nannies)))
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            log.info("stopped while starting")
            return EXIT_OK
        try:
            starting.result()
        except (OSError, TimeoutError, RuntimeError) as exc:  # Server.start wraps the cause in RuntimeError
            if taken := name_taken(exc):
                log.error(
                    "workers could not start against %s: a worker named %s is connected there already "
                    "(another pytc-worker with the same --name?); give this one's workers another "
                    "prefix with --name",
                    args.scheduler,
                    taken,
                )
            else:
                log.error("workers could not start against %s: %r", args.scheduler, exc.__cause__ or exc)
            return EXIT_FAILED
        log.info("%d workers on %s: %s", len(nannies), args.scheduler, ", ".join(s.name for s in specs))
        ended = asyncio.ensure_future(asyncio.gather(*(n.finished() for n in nannies)))
        while not stop.is_set() and not ended.done():
            if health is not None:
                write_health(health, nannies)
            await asyncio.wait(
                [ended, stopping], timeout=HEALTH_INTERVAL_S, return_when=asyncio.FIRST_COMPLETED
            )
        if not stop.is_set():
            log.error("every worker stopped on its own")
            return EXIT_FAILED
        await drain(nannies, args.drain_timeout, hurry)
        log.info("drained; bye")
        return EXIT_OK
    finally:
        stopping.cancel()
        await close_all(nannies, timeout_s=2.0)
        if health is not None:
            health.unlink(missing_ok=True)


def name_taken(exc: BaseException) -> str | None:
    """The worker name the scheduler refused as taken, where that is why a start failed: Dask says it
    only deep in the chain of causes (``ValueError("Unexpected response from register: {...'name
    taken, node-cpu0'...}")`` under two ``RuntimeError("... failed to start.")``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if found := _NAME_TAKEN.search(str(current)):
            return found.group(1)
        current = current.__cause__ or current.__context__
    return None


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


DESCRIPTION = """\
Start the Dask workers of this node and keep them until SIGTERM or Ctrl-C: one worker per visible
GPU, pinned to it, or --cpu-workers CPU workers where there is none. Each worker runs one block at
a time and keeps its models loaded between blocks. On SIGTERM the workers take no new block, finish
the ones they run (at most --drain-timeout seconds) and leave the scheduler."""

EPILOG = """\
examples:
  pytc-worker --scheduler tcp://10.0.0.5:8786                 every GPU nvidia-smi -L lists
  pytc-worker --scheduler tcp://10.0.0.5:8786 --gpus 0,2      these two GPUs
  pytc-worker --scheduler tcp://10.0.0.5:8786 --cpu-workers 2 --cpu-cores 0-15
                                                              no GPU: two workers, 8 cores each

worker names: PREFIX-gpu0, PREFIX-gpu2, ... (PREFIX-mig-xxxxxxxx for a MIG slice) or PREFIX-cpu0, ...;
  PREFIX is --name, by default the host name and this process's id, so that several pytc-workers
  on one host (one per GPU subset, say) never collide. A name the scheduler already has stops the
  start (exit 1) with a message saying so: choose another --name.

exit codes:
  0  stopped by SIGTERM or Ctrl-C after draining (or --check-health: healthy)
  1  the workers could not start, or all stopped on their own (or --check-health: unhealthy)
  2  invalid command line
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pytc-worker",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version_flag(parser)
    add = parser.add_argument
    env = os.environ.get
    # fmt: off
    add("--scheduler", default=env("PYTC_SCHEDULER"), metavar="ADDRESS",
        help="the Dask scheduler, tcp://HOST:8786 (default: $PYTC_SCHEDULER)")
    add("--gpus", metavar="IDS", help="comma-separated GPU ids, e.g. 0,2; 'none' for CPU workers "
        "(default: $CUDA_VISIBLE_DEVICES, else every GPU nvidia-smi -L lists)")
    add("--cpu-workers", type=_positive_int, default=1, metavar="N",
        help="workers on a node without GPUs (default: 1)")
    add("--cpu-cores", metavar="CORES",
        help="pin the workers to these cores, an equal share each, e.g. 0-15 or 0,2,4 (default: not pinned)")
    add("--memory-limit", metavar="BYTES",
        help="per worker, e.g. 16GB (default: the node's memory / workers)")
    add("--name", metavar="PREFIX",
        help="worker name prefix (default: HOST-PID, the host name and this process's id)")
    add("--local-directory", metavar="DIR", help="worker scratch space (Dask's local_directory)")
    add("--nthreads-torch", type=_positive_int, default=env("PYTC_TORCH_THREADS"), metavar="N",
        help="torch threads per worker (default: $PYTC_TORCH_THREADS, else cores / workers)")
    add("--host", help="address to listen on (default: the interface facing the scheduler)")
    add("--drain-timeout", type=float, default=120.0, metavar="SECONDS",
        help="seconds running blocks get to finish on SIGTERM before they are handed back (default: 120)")
    add("--max-models", type=_positive_int, default=4, metavar="N",
        help="models each worker keeps loaded (default: 4)")
    add("--health-file", metavar="FILE", help="keep this file up to date for --check-health")
    add("--check-health", metavar="HEALTH_FILE", help="exit 0 if the pytc-worker writing HEALTH_FILE "
        "is up with all its workers, else 1 (a container healthcheck)")
    # fmt: on
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytc-worker`` console script; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if args.check_health:
        return check_health(Path(args.check_health))
    if not args.scheduler:
        print("pytc-worker: error: --scheduler (or PYTC_SCHEDULER) is required", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from dask.system import CPU_COUNT  # honours CPU affinity and cgroup quotas, unlike os.cpu_count

    gpus = visible_gpus(os.environ, args.gpus)
    try:
        cpu_cores = parse_cores(args.cpu_cores) if args.cpu_cores is not None else None
        specs = plan_workers(
            args.name or default_name(), gpus, args.cpu_workers, CPU_COUNT, args.nthreads_torch, cpu_cores
        )
    except CoreListError as err:
        print(f"pytc-worker: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    log.info("GPUs %s -> workers %s", gpus or "none", [s.name for s in specs])
    import dask

    from workers.runtime.dask_settings import worker_settings

    dask.config.set(worker_settings())  # each Nanny hands this process's config to its worker
    return asyncio.run(serve(args, specs))


if __name__ == "__main__":
    sys.exit(main())
