"""``pytc run JOB.yaml``: one job of any kind, to its end, without a server.

The job goes through its kind (:mod:`service.kinds`) as it would in the service: parsed (exit 2
names the field), admitted (the data here, the model where it will run; nothing written), run with a
progress line and Ctrl-C as the cancel, summarised. The Dask cluster is ``--scheduler`` /
``PYTC_SCHEDULER``, or an embedded cluster (one worker on a thread of this process, or
``--workers N`` processes on loopback). It starts only when a kind first asks for it, or when a
check first needs a worker of another process: with the one embedded worker, the checks run in this
process before any cluster exists (that worker would run them in this process anyway, and the model
they load is the one the blocks use), so a job whose data or model is wrong fails within seconds.
With that one worker the kinds that take a task pool (segmentation, every pyramid stage) run
``--threads`` tasks at once (default the cores the process may use, as a Dask worker's
``nthreads``), a segmentation job's in as many processes forked from this one on Linux
(:class:`service.kinds.pool.ProcessPool`), else on threads of this process
(:class:`service.kinds.pool.ThreadPool`): the same task functions, done records and resume, without
Dask's imports and start-up; a segmentation job then never starts a cluster at all.
Without a service, ``register_as`` and ``model: {name: ...}`` use the file registry
``$PYTC_STATE_DIR/models.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    positive_int,
    spec_failure,
)
from service.cli.convert import add_pytc_flags, pytc_document
from service.cli.help import RUN_DESCRIPTION, RUN_EPILOG
from service.documents.loading import load_job_file
from service.errors import JobCancelledError, JobFailedError, SchedulerUnavailableError, SpecError
from service.kinds import parse_job
from service.kinds.base import AdmitEnv, ParseEnv, RunEnv, model_resolver
from service.kinds.pool import forks_tasks
from service.progress import ProgressLine
from service.store.model_file import FileModelRegistry, state_dir
from workers.limits import limits_from_env

if TYPE_CHECKING:
    from distributed import Client

    from service.kinds.pool import ProcessPool, ThreadPool


def add_run_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run one job to completion, without a server",
        description=RUN_DESCRIPTION,
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("job", type=Path, nargs="?", metavar="JOB.yaml", help="the job document (YAML or JSON)")
    run.add_argument(
        "--pytc-config", nargs="+", metavar="BASE.yaml [EXP.yaml] [KEY VALUE ...]",
        help="run a PyTorch Connectomics v1 experiment instead of JOB.yaml: its config files and trailing "
        "KEY VALUE options, as `pytc convert` converts them",
    )  # fmt: skip
    add_pytc_flags(run)
    run.add_argument(
        "--scheduler",
        help="address of a Dask scheduler, e.g. tcp://HOST:8786 (default: $PYTC_SCHEDULER, "
        "else an embedded local cluster)",
    )
    run.add_argument(
        "--workers", type=positive_int, default=1, help="workers of the embedded cluster (default 1)"
    )
    run.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="with the one embedded worker: how many segmentation and pyramid tasks run at once "
        "(default: the cores this process may use); a segmentation job's in processes forked from "
        "this one (Linux; PYTC_FORK_TASKS=0: threads), else on threads of this process",
    )
    run.add_argument(
        "--data-root", action="append", metavar="DIR",
        help="folder every path of the job must lie in; repeatable (default: $PYTC_DATA_ROOTS, else the "
        "current directory); relative job paths resolve against the first",
    )  # fmt: skip
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument("--report", type=Path, metavar="FILE", help="write the job's result (figures) as JSON")
    run.set_defaults(command=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Parse, admit, run, summarise (see the module docstring)."""
    from service.cli import start_up_done

    try:
        return _run(args)
    finally:
        start_up_done()  # on every path out, whatever happened before the checks ended


def _run(args: argparse.Namespace) -> int:
    from service.cli import data_roots, start_up_done

    registry = FileModelRegistry(state_dir(os.environ))
    try:
        roots = tuple(data_roots(args.data_root, os.environ))
        limits = limits_from_env(os.environ)
        parse_env = ParseEnv(roots, model_resolver(registry, roots), limits)
        kind, job = parse_job(_document(args), parse_env)
    except SpecError as err:
        return spec_failure(err)
    cluster = LazyCluster(
        args.scheduler or os.environ.get("PYTC_SCHEDULER") or None,
        args.workers,
        args.threads or usable_cores(),
        forks=kind.name == "segmentation",
    )
    if args.threads is not None and not cluster.in_process:
        return spec_failure(
            SpecError(
                "--threads",
                "--threads sets the one embedded worker's threads: not with --workers N or a scheduler",
            )
        )
    if cluster.forks:
        cluster.local_pool()  # its task processes forked now, while this process has no other thread
    cancel = threading.Event()
    line = None if args.quiet else ProgressLine(sys.stderr)
    try:
        with cluster, _stop_signals():
            checked = kind.admit(job, AdmitEnv(cluster.call, limits))
            start_up_done()
            env = RunEnv(
                cluster.client,
                report=line or (lambda progress: None),
                cancel=cancel,
                models=registry,
                notice=lambda text: print(text, file=sys.stderr) if not args.quiet else None,
                limits=limits,
                local=cluster.local_pool(),
            )
            result = kind.run(job, env, checked)
    except KeyboardInterrupt:
        cancel.set()
        _close(line)
        print("interrupted: what is done is kept; run the same job again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobCancelledError as err:
        _close(line)
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SpecError as err:
        _close(line)
        return spec_failure(err)
    except (JobFailedError, SchedulerUnavailableError) as err:
        _close(line)
        print(
            f"error: the job failed: {err}" if isinstance(err, JobFailedError) else f"error: {err}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    _close(line)
    summary = kind.summary(result)
    if not args.quiet:
        print("\n".join(summary.lines), file=sys.stderr)
    if args.report is not None:
        peak = peak_rss_bytes()
        if peak is not None:
            peak += cluster.children_peak_bytes  # the task processes', where they ran the tasks
        figures = {**result, "peak_rss_bytes": peak}
        args.report.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str))
    if summary.output is not None:
        print(summary.output)
    return EXIT_OK


@contextmanager
def _stop_signals() -> Iterator[None]:
    """While a job runs, SIGINT (Ctrl-C, ``kill -INT``) and SIGTERM (a batch system's cancel, such as
    Slurm's ``scancel``) stop it as Ctrl-C does: what is done is kept, exit 130. SIGINT is taken
    even where the process started with it ignored (a shell's background job), since stopping a run
    never loses work. Only the main thread may set handlers; elsewhere they stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, signal.default_int_handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: set outside Python, nothing to put back
                signal.signal(sig, handler)


def _document(args: argparse.Namespace) -> dict[str, Any]:
    """JOB.yaml, or the ``kind: pytc_config`` document of ``--pytc-config`` (one or the other)."""
    if (args.job is None) == (args.pytc_config is None):
        raise SpecError(
            "JOB.yaml",
            "give a job document or --pytc-config BASE.yaml [EXP.yaml] [KEY VALUE ...], one of them",
        )
    if args.pytc_config is not None:
        return pytc_document(args.pytc_config, args.inference, args.checkpoint)
    if args.inference or args.checkpoint is not None:
        raise SpecError("--inference", "--inference and --checkpoint go with --pytc-config")
    return load_job_file(args.job)


def _close(line: ProgressLine | None) -> None:
    if line is not None:
        line.close()


class LazyCluster:
    """The Dask client of ``pytc run``, connected (or its embedded cluster started) on first use."""

    def __init__(self, scheduler: str | None, n_workers: int, threads: int = 1, forks: bool = False) -> None:
        self.scheduler, self.n_workers, self.threads = scheduler, n_workers, threads
        self._client: Client | None = None
        self._cluster: Any = None
        self._pool: ThreadPool | ProcessPool | None = None
        # the local pool's tasks in forked processes (segmentation: its steps are whole-block work
        # that holds the GIL in places); else (a pyramid stage after an inference, which has
        # started threads by then) on threads
        self.forks = forks and self.in_process and threads > 1 and forks_tasks()

    def __enter__(self) -> LazyCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.close()
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def client(self) -> Client:
        if self._client is None:
            from service.cluster import connect, embedded_cluster

            if self.scheduler:
                self._client = connect(self.scheduler)
            else:
                self._cluster = embedded_cluster(self.n_workers, in_process=self.in_process, dashboard=False)
                self._client = connect(self._cluster)
        return self._client

    def local_pool(self) -> ThreadPool | ProcessPool | None:
        """With the one embedded worker, where the kinds that take a task pool run ``threads`` tasks
        at once (a worker of ``threads`` threads, as Dask's ``nthreads``): for a segmentation job,
        processes forked from this one (:class:`~service.kinds.pool.ProcessPool`; Linux,
        ``threads`` > 1; made by ``_run`` before it checks the job, so that the fork finds no
        thread here), else threads of this process; None with a scheduler or several workers
        (their tasks go to Dask). connected-components-3d holds the GIL while it labels, so
        threads would label one block at a time."""
        if not self.in_process:
            return None
        if self._pool is None:
            from service.kinds.pool import ProcessPool, ThreadPool

            try:
                self._pool = ProcessPool(self.threads) if self.forks else ThreadPool(self.threads)
            except OSError:  # no fork here (a process limit, no memory): the same tasks on threads
                self._pool = ThreadPool(self.threads)
        return self._pool

    @property
    def children_peak_bytes(self) -> int:
        """The task processes' peak resident memory, summed (0 without them), once closed."""
        return int(getattr(self._pool, "children_peak_bytes", 0))

    @property
    def in_process(self) -> bool:
        """Whether the one worker is a thread of this process (no scheduler, one worker)."""
        return not self.scheduler and self.n_workers == 1

    def call(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` where the job's blocks will run: a check that loads a model or reads data.

        With the embedded worker on a thread of this process, that is here and now, with no
        cluster started: the worker keeps its models in this process's state too (it has no state
        plugin, :func:`service.cluster.connect`), so the model loaded here is the one its blocks
        use. Elsewhere (``--workers N``, a scheduler) it is a task on a worker."""
        if self.in_process:
            return fn(*args)
        return self.client().submit(fn, *args, pure=False).result()


def usable_cores() -> int:
    """The cores this process may run on (its affinity: cgroup cpusets, ``taskset``), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def peak_rss_bytes() -> int | None:
    """This process's peak resident memory (its embedded worker, when it has one, runs in it), from
    the kernel's high-water mark; None where /proc is missing. Unlike ``ru_maxrss``, which keeps the
    peak of whatever forked the process before it exec'd, ``VmHWM`` counts only this program."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return None
