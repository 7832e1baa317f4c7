"""The client commands of ``pytc``: ``submit``, ``status``, ``wait``, ``cancel``, ``delete``, ``jobs``,
``models``.

They talk to ``pytc-serve`` at ``--url`` / ``PYTC_URL`` with ``PYTC_TOKEN``. ``wait`` and
``submit --wait`` follow the job's event stream with the same progress line as ``pytc run`` and
exit 0 when it succeeded, 1 when it failed or was cancelled; a job the service refuses exits 2 when
its document must change (invalid, or its output exists), like ``pytc run``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from service.cli.common import EXIT_FAILED, EXIT_OK, EXIT_SPEC, positive_int, spec_failure
from service.documents.loading import load_job_file
from service.errors import ClientError, SpecError
from service.progress import Progress, ProgressLine

if TYPE_CHECKING:
    from service.client import JobEvent, PytcClient


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    delete = commands.add_parser(
        "delete",
        parents=[service],
        help="forget a finished job (what it wrote stays; cancel a running one first)",
    )
    delete.add_argument("id", metavar="ID")
    delete.set_defaults(command=delete_command)
    jobs = commands.add_parser("jobs", parents=[service], help="list jobs, newest first")
    jobs.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=positive_int, default=20)
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
        return spec_failure(err)
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


def delete_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            client.delete(args.id)
    except ClientError as err:
        return _client_failure(err)
    print(f"deleted job {args.id}")
    return EXIT_OK


def jobs_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            page = client.list(state=args.state, limit=args.limit)
    except ClientError as err:
        return _client_failure(err)
    print(f"{'ID':32}  {'KIND':10}  {'STATE':9}  {'PROGRESS':>18}  {'CREATED':19}  WRITES")
    for job in page["jobs"]:
        print(
            f"{job['id']:32}  {job['kind']:10}  {job['state']:9}  {_done(job):>18}  "
            f"{job['created_at'][:19]:19}  {job.get('target') or '-'}"
        )
    return EXIT_OK


def models_command(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            models = client.models()
    except ClientError as err:
        return _client_failure(err)
    if not models:
        print("no models registered yet: a training job with register_as adds one", file=sys.stderr)
        return EXIT_OK
    print(f"{'NAME':24}  {'KIND':12}  {'SHA256':12}  SOURCE")
    for model in models:
        source = model.get("path") or f"{model.get('architecture')} {model.get('checkpoint') or ''}".strip()
        print(f"{model['name']:24}  {model['kind']:12}  {(model.get('sha256') or '-')[:12]:12}  {source}")
    return EXIT_OK


def _follow(client: PytcClient, job_id: str, *, quiet: bool, as_json: bool = False) -> int:
    """A live progress line from the event stream; the exit code from the final state."""
    line = None if quiet else ProgressLine(sys.stderr)

    def show(event: JobEvent) -> None:
        progress = event.data.get("progress") or {}
        if line is not None and progress.get("total"):
            line(Progress.from_json(progress))

    try:
        job = client.wait(job_id, on_event=show)
    finally:
        if line is not None:
            line.close()
    _print_job(job, as_json=as_json, stream=sys.stdout if as_json else sys.stderr)
    return EXIT_OK if job["state"] == "succeeded" else EXIT_FAILED


def _done(job: Mapping[str, Any]) -> str:
    progress = job.get("progress") or {}
    total = progress.get("total") or 0
    return f"{progress.get('done', 0)}/{total} {progress.get('unit', '')}".strip() if total else "-"


def _print_job(job: Mapping[str, Any], *, as_json: bool, stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    if as_json:
        print(json.dumps(job, indent=2), file=out)
        return
    print(f"{job['id']}  {job['kind']}  {job['state']}  {_done(job)}", file=out)
    if job.get("error"):
        print(f"  {job['error']['title']}: {job['error']['detail']}", file=out)
    for line in job.get("summary") or []:
        print(f"  {line}", file=out)
