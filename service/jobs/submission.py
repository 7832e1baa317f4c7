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
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from models.torch_files import max_model_bytes
from service.errors import ProbesBusyError, SchedulerUnavailableError
from service.jobs.connection import DaskConnection
from service.kinds import parse_job
from service.kinds.base import AdmitEnv, ParseEnv, WorkerCall
from service.store.jobs import JobRecord, JobStore, NewJob, confirm_replay
from workers.runtime.probe import PROBE_TIMEOUT_S, START_S, probe_in_child

# A check jumps the queue of model tasks on the workers (Dask runs higher priorities first), and
# asks for no accelerator slot: it loads models on the CPU, so a training task holding a worker's
# GPU for hours (seceded from the worker's thread pool) never keeps a submission waiting.
CHECK_PRIORITY = 1000


def request_digest(doc: Mapping[str, Any]) -> str:
    """The identity of a request body for ``Idempotency-Key``: key order and spacing do not count."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class ProbeGate:
    """At most ``slots`` model probes of this service on the workers at once (``PYTC_MODEL_PROBES``).

    A probe loads a model someone submitted and runs it on a patch; many at once would take the
    workers' cores and memory from running jobs. A submission waits up to ``wait_s`` for a slot,
    then is answered 503 with Retry-After: the service is busy, the job may be fine."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots, self.wait_s = slots, wait_s
        self._free = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._free.acquire(timeout=self.wait_s):
            raise ProbesBusyError(
                f"{self.slots} model check(s) already running (PYTC_MODEL_PROBES) and none ended within "
                f"{self.wait_s:.0f} s; submit again shortly"
            )
        try:
            yield
        finally:
            self._free.release()


def worker_call(
    connection: DaskConnection,
    timeout_s: float,
    gate: ProbeGate | None = None,
    probe_timeout_s: float = PROBE_TIMEOUT_S,
) -> WorkerCall:
    """``on_worker`` for admission: ``fn(*args)`` on some worker within ``timeout_s``, else 503.

    There it runs in a child process (:func:`workers.runtime.probe.probe_in_child`), off the
    worker's thread pool, killed after ``probe_timeout_s`` (a refusal, 422) and capped at 4 x
    ``PYTC_MAX_MODEL_BYTES`` of memory; ``gate`` bounds how many run at once."""
    memory = 4 * max_model_bytes()
    wait_s = max(timeout_s, probe_timeout_s + START_S)

    def call(fn: Any, *args: Any) -> Any:
        with gate.slot() if gate is not None else nullcontext():
            future = connection.client().submit(
                probe_in_child, fn, args, probe_timeout_s, memory, pure=False, priority=CHECK_PRIORITY
            )
            try:
                return future.result(timeout=wait_s)
            except TimeoutError:
                future.cancel()
                raise SchedulerUnavailableError(
                    f"no Dask worker answered a check of the job within {wait_s:.0f} s; "
                    "are workers connected?"
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
