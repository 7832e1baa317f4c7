"""The store's contracts in dicts: for tests, and for a throwaway service (nothing survives it).

:class:`MemoryJobStore` and :class:`MemoryModelRegistry` pass the same conformance tests as the
durable implementations.
"""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from typing import Any

from models.ref import ModelRef
from service.errors import JobFinishedError, JobNotFoundError, ModelNotRegisteredError
from service.store.jobs import (
    CANCELLED,
    CANCELLED_BEFORE_START,
    JOB_STATES,
    TERMINAL_STATES,
    ErrorInfo,
    JobRecord,
    JobState,
    Json,
    NewJob,
    confirm_replay,
    output_in_use,
    refuse_active,
    utc_now,
)
from service.store.models import ModelRecord, new_record


class MemoryJobStore:
    """The :class:`service.store.jobs.JobStore` contract in a dict."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.RLock()
        self._seq = 0

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        with self._lock:
            key = new.idempotency_key
            if key is not None and (old := self.find_by_idempotency_key(key, new.owner)):
                return confirm_replay(old, key, new.request_sha256), False
            busy = [j for j in self._jobs.values() if j.output_key == new.output_key and not j.finished]
            if new.output_key is not None and busy:
                raise output_in_use(busy[0].id, busy[0].owner, new)
            self._seq += 1
            spec = json.loads(json.dumps(new.spec))  # a copy, as the database would give
            job = JobRecord(new.id, self._seq, new.kind, "queued", spec, utc_now(), output_key=new.output_key)
            job = replace(job, idempotency_key=key, request_sha256=new.request_sha256, owner=new.owner)
            self._jobs[job.id] = job
            return job, True

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id not in self._jobs:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            return self._jobs[job_id]

    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> JobRecord | None:
        with self._lock:
            return next(
                (j for j in self._jobs.values() if (j.idempotency_key, j.owner) == (key, owner)), None
            )

    def list_jobs(
        self,
        state: JobState | None = None,
        limit: int = 50,
        before: int | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: -j.seq)
        jobs = [
            j
            for j in jobs
            if (state is None or j.state == state)
            and (before is None or j.seq < before)
            and (owner is None or j.owner == owner)
        ]
        return jobs[:limit]

    def _update(self, job_id: str, **changes: Any) -> JobRecord:
        with self._lock:
            job = replace(self.get_job(job_id), **changes)
            self._jobs[job_id] = job
            return job

    def claim_next(self) -> JobRecord | None:
        with self._lock:
            queued = [j for j in self._jobs.values() if j.state == "queued"]
            if not queued:
                return None
            job = min(queued, key=lambda j: j.seq)
            started = job.started_at or utc_now()
            return self._update(job.id, state="running", started_at=started, attempts=job.attempts + 1)

    def update_progress(self, job_id: str, progress: Json) -> None:
        self._update(job_id, progress=dict(progress))

    def finish_job(
        self, job_id: str, state: JobState, error: ErrorInfo | None = None, result: Json | None = None
    ) -> JobRecord:
        if state not in TERMINAL_STATES:
            raise ValueError(f"a job finishes succeeded, failed or cancelled, not {state!r}")
        return self._update(job_id, state=state, finished_at=utc_now(), error=error, result=result)

    def requeue_job(self, job_id: str) -> None:
        with self._lock:
            if self.get_job(job_id).state == "running":
                self._update(job_id, state="queued")

    def delete_job(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self.get_job(job_id)
            refuse_active(job)
            del self._jobs[job_id]
            return job

    def request_cancel(self, job_id: str) -> JobRecord:
        with self._lock:
            job = self.get_job(job_id)
            if job.finished:
                raise JobFinishedError(f"job {job_id} already ended {job.state}")
            if job.state == "queued":
                return self._update(
                    job_id, state="cancelled", cancel_requested=True, finished_at=utc_now(),
                    error=dict(CANCELLED_BEFORE_START),
                )  # fmt: skip
            return self._update(job_id, cancel_requested=True)

    def recover(self) -> list[str]:
        with self._lock:
            for job in list(self._jobs.values()):
                if not job.finished and job.cancel_requested:
                    self._update(job.id, state="cancelled", finished_at=utc_now(), error=dict(CANCELLED))
                elif job.state == "running":
                    self._update(job.id, state="queued")
            return [j.id for j in sorted(self._jobs.values(), key=lambda j: j.seq) if j.state == "queued"]

    def count_by_state(self) -> dict[JobState, int]:
        counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        with self._lock:
            for job in self._jobs.values():
                counts[job.state] += 1
        return counts

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


class MemoryModelRegistry:
    """The :class:`service.store.models.ModelRegistry` contract in a dict."""

    def __init__(self) -> None:
        self._models: dict[str, ModelRecord] = {}
        self._lock = threading.Lock()

    def register(self, name: str, ref: ModelRef, sha256: str | None) -> ModelRecord:
        record = new_record(name, ref, sha256)
        with self._lock:
            self._models[name] = record
        return record

    def get(self, name: str) -> ModelRecord:
        with self._lock:
            if name not in self._models:
                raise ModelNotRegisteredError(f"no registered model named {name!r}")
            return self._models[name]

    def list(self) -> list[ModelRecord]:
        with self._lock:
            return [self._models[name] for name in sorted(self._models)]

    def close(self) -> None:
        return None
