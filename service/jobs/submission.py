"""Submitting a job to the service: every check first, in the order of their cost, then one row.

The document's kind parses it (422 naming the field), checks what it names (the data here, the
model on a worker: the service never imports torch; 409 for an output that exists and is not this
job's) and says what it writes; the store then records the job, refusing a second active job with
the same target (409). Nothing is written before the job is recorded. A request repeated with the
same ``Idempotency-Key`` and the same body returns the job the first one made, without checking
again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from typing import Any

from service.errors import SchedulerUnavailableError
from service.jobs.connection import DaskConnection
from service.kinds import parse_job
from service.kinds.base import AdmitEnv, ParseEnv, WorkerCall
from service.store.jobs import JobRecord, JobStore, NewJob, confirm_replay

# A check jumps the queue of model tasks on the workers (Dask runs higher priorities first), and
# asks for no accelerator slot: it loads models on the CPU, so a training task holding a worker's
# GPU for hours (seceded from the worker's thread pool) never keeps a submission waiting.
CHECK_PRIORITY = 1000


def request_digest(doc: Mapping[str, Any]) -> str:
    """The identity of a request body for ``Idempotency-Key``: key order and spacing do not count."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def worker_call(connection: DaskConnection, timeout_s: float) -> WorkerCall:
    """``on_worker`` for admission: ``fn(*args)`` on some worker within ``timeout_s``, else 503."""

    def call(fn: Any, *args: Any) -> Any:
        future = connection.client().submit(fn, *args, pure=False, priority=CHECK_PRIORITY)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise SchedulerUnavailableError(
                f"no Dask worker answered a check of the job within {timeout_s:.0f} s; are workers connected?"
            ) from None

    return call


def submit_job(
    doc: Mapping[str, Any],
    idempotency_key: str | None,
    *,
    store: JobStore,
    parse_env: ParseEnv,
    admit_env: AdmitEnv,
    owner: str | None = None,
) -> tuple[JobRecord, bool]:
    """Check and record a job for ``owner`` (whose idempotency keys are its own); ``created`` is
    False for an idempotent replay."""
    digest = request_digest(doc)
    if idempotency_key is not None and (existing := store.find_by_idempotency_key(idempotency_key, owner)):
        return confirm_replay(existing, idempotency_key, digest), False
    kind, job = parse_job(doc, parse_env)
    kind.admit(job, admit_env)
    new = NewJob(
        uuid.uuid4().hex,
        kind.name,
        dict(doc),
        output_key=kind.target(job).key,
        idempotency_key=idempotency_key,
        request_sha256=digest,
        owner=owner,
    )
    return store.create_job(new)
