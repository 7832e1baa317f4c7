"""``pytc``: run a job without a server, and make synthetic data.

``pytc run JOB.yaml`` validates the whole job before writing anything (exit 2 names the field),
then runs it on an embedded local Dask cluster or on ``--scheduler`` / ``PYTC_SCHEDULER``. Exit
codes: 0 succeeded, 1 the job failed, 2 the spec is invalid, 130 interrupted (a rerun resumes).
Training jobs (``kind: training``) run through :mod:`service.cli_training`; without a service,
``register_as`` and ``model: {name: ...}`` use the file registry ``$PYTC_STATE_DIR/models.json``.

The client commands (``submit``, ``status``, ``wait``, ``cancel``, ``jobs``, ``models``) talk to
``pytc-serve`` at ``--url`` / ``PYTC_URL`` with ``PYTC_TOKEN``; ``wait`` and ``submit --wait`` exit
0 when the job succeeded and 1 when it failed or was cancelled. Heavy modules
(distributed, the engine) are imported inside the commands, so ``pytc --help`` stays quick and
this module never pulls in torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from service.errors import ClientError, JobCancelledError, JobFailedError, SchedulerUnavailableError
from service.model_file_registry import FileModelRegistry, state_dir
from service.progress import Progress, ProgressBar, format_duration
from service.spec import load_job_file, parse_job_document
from workers.errors import SpecError
from workers.inference.checks import check_output, validate_against_data, validate_against_model
from workers.inference.job import InferenceJob
from workers.training.checks import validate_training_against_data
from workers.training.job import TrainingJob

if TYPE_CHECKING:
    from distributed import Client

    from service.client import JobEvent, PytcClient

EXIT_OK, EXIT_FAILED, EXIT_SPEC, EXIT_INTERRUPTED = 0, 1, 2, 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pytc`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or a usage error (argparse exits 2)
        return stop.code if isinstance(stop.code, int) else EXIT_SPEC
    if not hasattr(args, "command"):
        parser.print_help(sys.stderr)
        return EXIT_SPEC
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.command is not run_command:
        start_up_done()  # only run has a start-up worth pausing the collector for
    return int(args.command(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytc", description="Chunked 3D inference over zarr/N5 volumes.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    run = commands.add_parser("run", help="run one job to completion, without a server")
    run.add_argument("job", type=Path, metavar="JOB.yaml")
    run.add_argument(
        "--scheduler",
        help="address of a Dask scheduler, e.g. tcp://HOST:8786 (default: $PYTC_SCHEDULER, "
        "else an embedded local cluster)",
    )
    run.add_argument(
        "--workers", type=_positive_int, default=1, help="workers of the embedded cluster (default 1)"
    )
    run.add_argument(
        "--data-root", action="append", type=Path, metavar="DIR",
        help="folder every path of the job must lie in; repeatable (default: $PYTC_DATA_ROOTS, else the "
        "current directory); relative job paths resolve against the first",
    )  # fmt: skip
    run.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    run.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="write the run's figures (blocks, windows, bytes, seconds) as JSON",
    )
    run.set_defaults(command=run_command)

    synth = commands.add_parser(
        "synth", help="write a synthetic EM-like volume with ground truth (raw, mito, cells)"
    )
    synth.add_argument("out", type=Path, metavar="OUT.zarr")
    synth.add_argument(
        "--shape", type=_positive_int, nargs=3, default=[64, 512, 512], metavar=("Z", "Y", "X")
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--voxel-size", type=float, nargs=3, default=[30.0, 8.0, 8.0], metavar=("Z", "Y", "X"), help="in nm"
    )
    synth.add_argument(
        "--chunks", type=_positive_int, nargs=3, default=[32, 256, 256], metavar=("Z", "Y", "X")
    )
    synth.add_argument("--format", choices=["zarr3", "zarr2"], default="zarr3")
    synth.add_argument("--overwrite", action="store_true", help="replace OUT.zarr if it exists")
    synth.set_defaults(command=synth_command)
    _add_client_commands(commands)
    return parser


def data_roots(cli_roots: Sequence[Path] | None, environ: Mapping[str, str]) -> list[Path]:
    """``--data-root`` values, else ``PYTC_DATA_ROOTS`` (``:``-separated), else the current directory."""
    if cli_roots:
        return list(cli_roots)
    from_env = [Path(part) for part in environ.get("PYTC_DATA_ROOTS", "").split(":") if part]
    return from_env or [Path.cwd()]


def run_command(args: argparse.Namespace) -> int:
    """Validate (writing nothing), connect, check the model and the output (or, for training, the
    model against its targets and starting weights), run."""
    registry = FileModelRegistry(state_dir(os.environ))
    try:
        return _run_command(args, registry)
    finally:
        start_up_done()  # on every path out, whatever happened before the model check


def start_up_done() -> None:
    """End of start-up, where the ``pytc`` program paused the garbage collector (service.entry):
    freeze what start-up made, then collect again; a no-op where the collector runs.

    Start-up (the engine's and Dask's modules, the embedded cluster, torch and the model, imported
    and loaded by the model check) makes a few million objects that live as long as the process.
    The collector walked them again and again while they were made: four full collections, 0.4 s
    of a ``pytc run``'s start, most on the worker's thread while it imported torch. Once it is over,
    ``gc.freeze`` sets what was made aside (no later collection walks it; none of it is garbage)
    and the collector runs as usual for the job itself. ``run`` calls this after the model check,
    every other command as soon as it starts."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _run_command(args: argparse.Namespace, registry: FileModelRegistry) -> int:
    try:
        job = parse_job_document(
            load_job_file(args.job), data_roots(args.data_root, os.environ), resolve_model=registry.resolve
        )
        if isinstance(job, TrainingJob):
            validate_training_against_data(job)
        else:
            validate_against_data(job)
    except SpecError as err:
        return _spec_failure(err)
    scheduler = args.scheduler or os.environ.get("PYTC_SCHEDULER") or None
    cancel = threading.Event()
    try:
        with _dask_client(scheduler, args.workers) as client:
            if isinstance(job, TrainingJob):
                from service.cli_training import train_on

                return train_on(job, client, cancel, registry, quiet=args.quiet, report=args.report)
            return _run_on(job, client, cancel, quiet=args.quiet, report=args.report)
    except KeyboardInterrupt:
        cancel.set()
        print("interrupted: what is done is kept; run the same job again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SchedulerUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED


def synth_command(args: argparse.Namespace) -> int:
    """Write ``raw`` (uint8), ``mito`` and ``cells`` into one zarr group."""
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return EXIT_SPEC
    from volumes.synth import generate_em_volume, write_synth

    volume = generate_em_volume(args.shape, seed=args.seed, voxel_size_nm=args.voxel_size)
    write_synth(args.out, volume, chunks=args.chunks, format=args.format)
    print(args.out)
    return EXIT_OK


def _run_on(
    job: InferenceJob, client: Client, cancel: threading.Event, *, quiet: bool, report: Path | None = None
) -> int:
    from models.errors import ModelError
    from service.runner import run_inference
    from workers.inference.tasks import inspect_model

    try:
        info = client.submit(
            inspect_model, job.model, job.window.patch_size, pure=False, resources={"GPU": 1}
        ).result()
    except ModelError as err:
        return _spec_failure(SpecError("model", str(err)))
    try:
        validate_against_model(job, info)
        state = check_output(job, info.sha256)
    except SpecError as err:
        return _spec_failure(err)
    start_up_done()
    if state == "resume" and not quiet:
        print(f"resuming the existing output {job.output.path} ({job.output.dataset})", file=sys.stderr)
    bar = None if quiet else ProgressBar(sys.stderr)
    try:
        result = run_inference(job, client, on_progress=bar, cancel=cancel)
    except JobCancelledError as err:
        print(f"cancelled: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except JobFailedError as err:
        print(f"error: the job failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        print(
            f"succeeded: {result.output_path} (dataset {result.dataset!r}), {result.blocks_total} blocks "
            f"({result.blocks_skipped} already done) in {format_duration(result.seconds)}",
            file=sys.stderr,
        )
    if report is not None:
        figures = dataclasses.asdict(result) | {"peak_rss_bytes": peak_rss_bytes()}
        report.write_text(json.dumps(figures, indent=2, sort_keys=True))
    print(result.output_path)
    return EXIT_OK


@contextmanager
def _dask_client(scheduler: str | None, n_workers: int) -> Iterator[Client]:
    """A client of ``scheduler``, or of an embedded cluster: one worker on a thread of this process,
    or several worker processes on loopback; one task at a time per worker."""
    import dask
    from distributed import Client, LocalCluster

    from workers.runtime.dask_settings import worker_settings

    # Set after the import, which configures distributed's loggers: the embedded scheduler logs
    # every connection at INFO, and a CLI user needs only its warnings.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        try:
            remote = Client(scheduler, timeout="30s")
        except OSError as err:  # refused, unresolvable or timed out
            raise SchedulerUnavailableError(
                f"cannot connect to the Dask scheduler {scheduler}: {err}"
            ) from err
        with remote:
            yield remote
        return
    # One worker runs in this process, on a thread (in-process transport, no port): no worker
    # process to spawn and stop, and torch is imported and the model loaded once. Several workers
    # are processes of their own on loopback, as pytc-worker starts them.
    where: dict[str, Any] = {"processes": False} if n_workers == 1 else {"host": "127.0.0.1"}
    with dask.config.set(worker_settings()):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            dashboard_address="127.0.0.1:0",  # loopback, a free port (None means :8787)
            silence_logs=logging.ERROR,
            resources={"GPU": 1},  # the same tag pytc-worker advertises, so block tasks run here too
            **where,
        )
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


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


def _spec_failure(err: SpecError) -> int:
    for field, reason in err.errors:
        print(f"error: {field}: {reason}" if field else f"error: {reason}", file=sys.stderr)
    return EXIT_SPEC


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


# --- client commands (the REST service) -----------------------------------------------------------


def _add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument("--url", help="the service (default: $PYTC_URL, else http://127.0.0.1:8000); "
                         "the token comes from $PYTC_TOKEN")  # fmt: skip
    submit = commands.add_parser("submit", parents=[service], help="submit a job to the service")
    submit.add_argument("job", type=Path, metavar="JOB.yaml")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--idempotency-key", help="a retry with the same key returns the same job")
    submit.add_argument("--quiet", "-q", action="store_true", help="no progress display")
    submit.set_defaults(command=submit_command)
    for name, command, text in (
        ("status", status_command, "show a job"),
        ("wait", wait_command, "follow a job until it ends (exit 0 succeeded, 1 failed or cancelled)"),
        ("cancel", cancel_command, "cancel a job"),
    ):
        sub = commands.add_parser(name, parents=[service], help=text)
        sub.add_argument("id", metavar="ID")
        sub.add_argument("--quiet", "-q", action="store_true", help="no progress display")
        sub.add_argument("--json", action="store_true", help="print the job as JSON")
        sub.set_defaults(command=command)
    jobs = commands.add_parser("jobs", parents=[service], help="list jobs, newest first")
    jobs.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=_positive_int, default=20)
    jobs.set_defaults(command=jobs_command)
    models = commands.add_parser("models", parents=[service], help="list the registered models")
    models.set_defaults(command=models_command)


def _client(args: argparse.Namespace) -> PytcClient:
    from service.client import DEFAULT_URL, PytcClient

    url = args.url or os.environ.get("PYTC_URL") or DEFAULT_URL
    return PytcClient(url, token=os.environ.get("PYTC_TOKEN") or None)


def _client_failure(err: ClientError) -> int:
    errors = err.problem.get("errors") or []
    for item in errors:
        print(f"error: {item.get('loc')}: {item.get('msg')}", file=sys.stderr)
    if not errors:
        print(f"error: {err}", file=sys.stderr)
    # Like ``pytc run``: 2 when the job document must change (invalid, or its output exists).
    kind = str(err.problem.get("type", ""))
    return EXIT_SPEC if err.status == 422 or kind.endswith(":output-exists") else EXIT_FAILED


def submit_command(args: argparse.Namespace) -> int:
    try:
        doc = load_job_file(args.job)
    except SpecError as err:
        return _spec_failure(err)
    try:
        with _client(args) as client:
            job = client.submit(doc, idempotency_key=args.idempotency_key)
            print(job["id"])
            return _follow(client, job["id"], quiet=args.quiet) if args.wait else EXIT_OK
    except ClientError as err:
        return _client_failure(err)


def status_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            _print_job(client.get(args.id), as_json=args.json)
    except ClientError as err:
        return _client_failure(err)
    return EXIT_OK


def wait_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            return _follow(client, args.id, quiet=args.quiet, as_json=args.json)
    except ClientError as err:
        return _client_failure(err)


def cancel_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            _print_job(client.cancel(args.id), as_json=args.json)
    except ClientError as err:
        return _client_failure(err)
    return EXIT_OK


def jobs_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            page = client.list(state=args.state, limit=args.limit)
    except ClientError as err:
        return _client_failure(err)
    print(f"{'ID':32}  {'STATE':9}  {'PROGRESS':>14}  {'CREATED':19}  OUTPUT")
    for job in page["jobs"]:
        output = job["spec"].get("output", {})
        where = (
            f"{output.get('path', '?')} ({output.get('dataset', 'pred')})"
            if isinstance(output, dict)
            else "?"
        )
        print(f"{job['id']:32}  {job['state']:9}  {_done(job):>14}  {job['created_at'][:19]:19}  {where}")
    return EXIT_OK


def models_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            models = client.models()
    except ClientError as err:
        return _client_failure(err)
    print(f"{'NAME':24}  {'KIND':12}  {'SHA256':12}  SOURCE")
    for model in models:
        source = model.get("path") or f"{model.get('architecture')} {model.get('checkpoint') or ''}".strip()
        print(f"{model['name']:24}  {model['kind']:12}  {(model.get('sha256') or '-')[:12]:12}  {source}")
    return EXIT_OK


def _follow(client: PytcClient, job_id: str, *, quiet: bool, as_json: bool = False) -> int:
    """A live progress bar from the event stream; the exit code from the final state."""
    bar = None if quiet else ProgressBar(sys.stderr)

    def show(event: JobEvent) -> None:
        progress = event.data.get("progress") or {}
        if bar is not None and progress.get("total"):
            bar(_progress_of(progress))

    try:
        job = client.wait(job_id, on_event=show)
    finally:
        if bar is not None:
            bar.close()
    _print_job(job, as_json=as_json, stream=sys.stdout if as_json else sys.stderr)
    return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED


def _progress_of(progress: Mapping[str, Any]) -> Progress:
    """A progress object of the service, as :class:`ProgressBar` reads it."""
    return Progress(
        int(progress.get("done", 0)),
        int(progress.get("total", 0)),
        str(progress.get("unit", "blocks")),
        int(progress.get("voxels_done", 0)),
        int(progress.get("voxels_total", 0)),
        float(progress.get("elapsed_seconds", 0.0)),
    )


def _done(job: Mapping[str, Any]) -> str:
    progress = job.get("progress") or {}
    total = progress.get("total") or 0
    return f"{progress.get('done', 0)}/{total} {progress.get('unit', '')}".strip() if total else "-"


def _print_job(job: Mapping[str, Any], *, as_json: bool, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if as_json:
        print(json.dumps(job, indent=2), file=out)
        return
    print(f"{job['id']}  {job['state']}  {_done(job)}", file=out)
    if job.get("error"):
        print(f"  {job['error']['title']}: {job['error']['detail']}", file=out)
    if job.get("state") == "succeeded" and job.get("result"):
        print(f"  output: {job['result'].get('output_path')} ({job['result'].get('dataset')})", file=out)


if __name__ == "__main__":
    sys.exit(main())
