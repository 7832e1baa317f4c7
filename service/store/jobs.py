"""The job store's contract: every job the service accepted, its state, progress, error and result.

A small :class:`JobStore` protocol with two implementations that pass one shared conformance test:
:class:`service.store.sqlite.SqliteJobStore` (WAL, the service's) and
:class:`service.store.memory.MemoryJobStore` (tests, throwaway services).

A job is written once, before the submission is answered, and from then on only moves forward::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       |                 |  \\--requeue--> queued       (shutdown, lost scheduler, restart)
       \\--cancel--------+--> cancelled

so after a crash :meth:`JobStore.recover` only has to put ``running`` jobs back in the queue; the
runner resumes them from their done markers.

Tenancy: a job has an ``owner``, the identity of the token that submitted it (never the token
itself: :func:`service.http.auth.token_owner`), or None when the service runs without tokens (and
for jobs recorded before jobs had owners). Idempotency keys are scoped by owner: the same key from
two owners makes two jobs. Listing takes an owner filter (None: every job, for admins and an open
service); whether a caller may read or cancel one job is the HTTP layer's
(:func:`service.http.auth.Caller.may_see`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, get_args

from service.errors import IdempotencyKeyReusedError, JobActiveError, OutputInUseError

Json = dict[str, Any]
ErrorInfo = dict[str, str]  # {"title": ..., "detail": ...}
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[JobState, ...] = get_args(JobState)
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
TERMINAL_STATES: tuple[JobState, ...] = ("succeeded", "failed", "cancelled")
CANCELLED_BEFORE_START = {"title": "cancelled", "detail": "the job was cancelled before it started"}
CANCELLED = {
    "title": "cancelled",
    "detail": "the job was cancelled; a resubmission resumes from its done blocks",
}


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class NewJob:
    """What a submission adds. ``output_key`` names the output dataset: two active jobs never share one."""

    id: str
    kind: str
    spec: Json
    output_key: str | None = None
    idempotency_key: str | None = None
    request_sha256: str | None = None
    owner: str | None = None  # who submitted it (a token's identity); None: no tokens, anyone's


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int  # insertion order; the pagination cursor
    kind: str
    state: JobState
    spec: Json
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: Json | None = None
    error: ErrorInfo | None = None
    result: Json | None = None
    cancel_requested: bool = False
    attempts: int = 0
    output_key: str | None = None
    idempotency_key: str | None = None
    request_sha256: str | None = None
    owner: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


def refuse_active(job: JobRecord) -> None:
    """Deleting a queued or running job is refused: it would go on writing with no record of it."""
    if not job.finished:
        raise JobActiveError(f"job {job.id} is {job.state}; cancel it, then delete it")


def output_in_use(busy_id: str, busy_owner: str | None, new: NewJob) -> OutputInUseError:
    """The 409 for ``new`` when the job ``busy_id`` of ``busy_owner`` (queued or running) writes
    its output; the job is named only to its own owner, so another tenant's ids stay unknown."""
    who = f"job {busy_id}" if busy_owner == new.owner else "another job"
    return OutputInUseError(f"{who} (queued or running) already writes {new.output_key}")


def confirm_replay(existing: JobRecord, idempotency_key: str, request_sha256: str | None) -> JobRecord:
    """``existing`` (the job made with ``idempotency_key``) when this request is the one that made it.

    The one idempotency check, used by every store's ``create_job`` and by the submission path before
    its admission checks. The same key with another body is :class:`IdempotencyKeyReusedError` (409):
    answering with a job the client did not ask for would be worse than refusing.
    """
    if existing.request_sha256 != request_sha256:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {idempotency_key!r} was used for job {existing.id} with another body"
        )
    return existing


class JobStore(Protocol):
    """Durable jobs. Every method is safe to call from any thread."""

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Add ``new``, or return the job already made with its idempotency key (``created`` False).
        Raises IdempotencyKeyReusedError (same key, other body) or OutputInUseError."""
        ...

    def get_job(self, job_id: str) -> JobRecord: ...  # JobNotFoundError
    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> JobRecord | None:
        """The job ``owner`` made with ``key`` (None: the jobs without an owner)."""
        ...

    def list_jobs(
        self,
        state: JobState | None = None,
        limit: int = 50,
        before: int | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]:
        """Newest first; ``before`` is a ``seq`` cursor (exclusive); ``owner`` keeps that owner's
        jobs only (None: every job)."""
        ...

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now ``running`` (atomically: two claimers never get the same)."""
        ...

    def update_progress(self, job_id: str, progress: Json) -> None: ...
    def finish_job(
        self, job_id: str, state: JobState, error: ErrorInfo | None = None, result: Json | None = None
    ) -> JobRecord: ...
    def requeue_job(self, job_id: str) -> None: ...
    def delete_job(self, job_id: str) -> JobRecord:
        """Forget a finished job (its record; what it wrote stays); the record as it was.
        JobNotFoundError, or JobActiveError while it is queued or running."""
        ...

    def request_cancel(self, job_id: str) -> JobRecord:
        """A queued job ends ``cancelled`` at once; a running one is flagged. JobFinishedError if over."""
        ...

    def recover(self) -> list[str]:
        """After a restart: running jobs queued again (cancel-flagged ones end); the queued ids."""
        ...

    def count_by_state(self) -> dict[JobState, int]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...
