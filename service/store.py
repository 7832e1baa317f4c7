"""The job store: every job the service accepted, its state, progress, error and result, and the
model registry. A small :class:`JobStore` protocol with two implementations that pass one shared
conformance test: :class:`SqliteJobStore` (WAL, the service's) and :class:`MemoryJobStore` (tests).

A job is written once, before the submission is answered, and from then on only moves forward::

    queued --claim--> running --finish--> succeeded | failed | cancelled
       |                 |  \\--requeue--> queued       (shutdown, lost scheduler, restart)
       \\--cancel--------+--> cancelled

so after a crash :meth:`JobStore.recover` only has to put ``running`` jobs back in the queue; the
runner resumes them from their done markers.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from models.ref import ModelRef
from service.errors import (
    IdempotencyKeyReusedError,
    JobFinishedError,
    JobNotFoundError,
    ModelNotRegisteredError,
    OutputInUseError,
)

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

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class ModelRecord:
    name: str
    ref: ModelRef
    sha256: str | None
    created_at: datetime = field(default_factory=utc_now)


class JobStore(Protocol):
    """Durable jobs and models. Every method is safe to call from any thread."""

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        """Add ``new``, or return the job already made with its idempotency key (``created`` False).
        Raises IdempotencyKeyReusedError (same key, other body) or OutputInUseError."""
        ...

    def get_job(self, job_id: str) -> JobRecord: ...  # JobNotFoundError
    def find_by_idempotency_key(self, key: str) -> JobRecord | None: ...
    def list_jobs(
        self, state: JobState | None = None, limit: int = 50, before: int | None = None
    ) -> list[JobRecord]:
        """Newest first; ``before`` is a ``seq`` cursor (exclusive)."""
        ...

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now ``running`` (atomically: two claimers never get the same)."""
        ...

    def update_progress(self, job_id: str, progress: Json) -> None: ...
    def finish_job(
        self, job_id: str, state: JobState, error: ErrorInfo | None = None, result: Json | None = None
    ) -> JobRecord: ...
    def requeue_job(self, job_id: str) -> None: ...
    def request_cancel(self, job_id: str) -> JobRecord:
        """A queued job ends ``cancelled`` at once; a running one is flagged. JobFinishedError if over."""
        ...

    def recover(self) -> list[str]:
        """After a restart: running jobs queued again (cancel-flagged ones end); the queued ids."""
        ...

    def count_by_state(self) -> dict[JobState, int]: ...
    def register_model(self, name: str, ref: ModelRef, sha256: str | None = None) -> ModelRecord: ...
    def get_model(self, name: str) -> ModelRecord: ...  # ModelNotRegisteredError
    def list_models(self) -> list[ModelRecord]: ...
    def ping(self) -> None: ...
    def close(self) -> None: ...


# --- SQLite ---------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    progress TEXT,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    output_key TEXT,
    idempotency_key TEXT UNIQUE,
    request_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_output ON jobs (output_key, state);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    ref TEXT NOT NULL,
    sha256 TEXT,
    created_at TEXT NOT NULL
);
"""
_JSON_COLUMNS = ("spec", "progress", "error", "result")
_TIME_COLUMNS = ("created_at", "started_at", "finished_at")


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    for name in _JSON_COLUMNS:
        values[name] = None if values[name] is None else json.loads(values[name])
    for name in _TIME_COLUMNS:
        values[name] = None if values[name] is None else datetime.fromisoformat(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


def _ref_to_json(ref: ModelRef) -> str:
    data = asdict(ref)
    data["config"] = ref.config_dict()
    return json.dumps(data, sort_keys=True)


def _ref_from_json(text: str, name: str) -> ModelRef:
    data = json.loads(text)
    config = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted((data.pop("config") or {}).items())
    )
    data["name"] = name
    return ModelRef(config=config, **data)


class SqliteJobStore:
    """Jobs and models in one SQLite file in WAL mode, ``synchronous=FULL``: a job acknowledged to
    a client survives a crash of the service (and of the machine). One connection, one lock: every
    statement is short, and the service's handlers call it from worker threads."""

    def __init__(self, path: str | Path) -> None:
        db_path = Path(path)
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            return row

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        with self._write() as db:
            if new.idempotency_key is not None:
                row = db.execute(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (new.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return _same_request(_job_from_row(row), new), False
            if new.output_key is not None:
                _check_output_free(db, new.output_key)
            row = db.execute(
                "INSERT INTO jobs (id, kind, state, spec, created_at, output_key, idempotency_key,"
                " request_sha256) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?) RETURNING *",
                (new.id, new.kind, _dump(new.spec), _time(utc_now()), new.output_key, new.idempotency_key,
                 new.request_sha256),
            ).fetchone()  # fmt: skip
        return _job_from_row(row), True

    def get_job(self, job_id: str) -> JobRecord:
        row = self._one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return _job_from_row(row)

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        row = self._one("SELECT * FROM jobs WHERE idempotency_key = ?", key)
        return None if row is None else _job_from_row(row)

    def list_jobs(
        self, state: JobState | None = None, limit: int = 50, before: int | None = None
    ) -> list[JobRecord]:
        args: tuple[Any, ...] = (before if before is not None else 1 << 62, state, state, limit)
        sql = "SELECT * FROM jobs WHERE seq < ? AND (? IS NULL OR state = ?) ORDER BY seq DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_job_from_row(row) for row in rows]

    def claim_next(self) -> JobRecord | None:
        with self._write() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?),"
                " attempts = attempts + 1"
                " WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) RETURNING *",
                (_time(utc_now()),),
            ).fetchone()
        return None if row is None else _job_from_row(row)

    def update_progress(self, job_id: str, progress: Json) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (_dump(progress), job_id))

    def finish_job(
        self, job_id: str, state: JobState, error: ErrorInfo | None = None, result: Json | None = None
    ) -> JobRecord:
        if state not in TERMINAL_STATES:
            raise ValueError(f"a job finishes succeeded, failed or cancelled, not {state!r}")
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ? WHERE id = ?",
                (state, _time(utc_now()), _dump(error), _dump(result), job_id),
            )
        return self.get_job(job_id)

    def requeue_job(self, job_id: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", (job_id,))

    def request_cancel(self, job_id: str) -> JobRecord:
        with self._write() as db:
            job = self.get_job(job_id)
            if job.finished:
                raise JobFinishedError(f"job {job_id} already ended {job.state}")
            if job.state == "queued":
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', cancel_requested = 1, finished_at = ?, error = ?"
                    " WHERE id = ?",
                    (_time(utc_now()), _dump(CANCELLED_BEFORE_START), job_id),
                )
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        return self.get_job(job_id)

    def recover(self) -> list[str]:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?"
                " WHERE state IN ('queued', 'running') AND cancel_requested = 1",
                (_time(utc_now()), _dump(CANCELLED)),
            )
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
            rows = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return [row["id"] for row in rows]

    def count_by_state(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: row["n"] for row in rows})
        return counts

    def register_model(self, name: str, ref: ModelRef, sha256: str | None = None) -> ModelRecord:
        record = ModelRecord(name, replace(ref, name=name), sha256)
        with self._write() as db:
            db.execute(
                "INSERT OR REPLACE INTO models (name, ref, sha256, created_at) VALUES (?, ?, ?, ?)",
                (name, _ref_to_json(replace(ref, name=None)), sha256, _time(record.created_at)),
            )
        return record

    def get_model(self, name: str) -> ModelRecord:
        row = self._one("SELECT * FROM models WHERE name = ?", name)
        if row is None:
            raise ModelNotRegisteredError(f"no registered model named {name!r}")
        return _model_from_row(row)

    def list_models(self) -> list[ModelRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM models ORDER BY name").fetchall()
        return [_model_from_row(row) for row in rows]

    def ping(self) -> None:
        self._one("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _model_from_row(row: sqlite3.Row) -> ModelRecord:
    name = row["name"]
    return ModelRecord(
        name, _ref_from_json(row["ref"], name), row["sha256"], datetime.fromisoformat(row["created_at"])
    )


def _check_output_free(db: sqlite3.Connection, output_key: str) -> None:
    row = db.execute(
        "SELECT id FROM jobs WHERE output_key = ? AND state IN ('queued', 'running') LIMIT 1", (output_key,)
    ).fetchone()
    if row is not None:
        raise OutputInUseError(f"job {row['id']} (queued or running) already writes {output_key}")


def _same_request(existing: JobRecord, new: NewJob) -> JobRecord:
    if existing.request_sha256 != new.request_sha256:
        raise IdempotencyKeyReusedError(
            f"Idempotency-Key {new.idempotency_key!r} was used for job {existing.id} with another body"
        )
    return existing


# --- in memory ------------------------------------------------------------------------------------


class MemoryJobStore:
    """The same contract in a dict: for tests, and for a throwaway service (nothing survives it)."""

    def __init__(self) -> None:
        self._jobs: dict[str, JobRecord] = {}
        self._models: dict[str, ModelRecord] = {}
        self._lock = threading.RLock()
        self._seq = 0

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        with self._lock:
            if new.idempotency_key is not None and (old := self.find_by_idempotency_key(new.idempotency_key)):
                return _same_request(old, new), False
            busy = [j for j in self._jobs.values() if j.output_key == new.output_key and not j.finished]
            if new.output_key is not None and busy:
                raise OutputInUseError(
                    f"job {busy[0].id} (queued or running) already writes {new.output_key}"
                )
            self._seq += 1
            spec = json.loads(json.dumps(new.spec))  # a copy, as the database would give
            job = JobRecord(new.id, self._seq, new.kind, "queued", spec, utc_now(), output_key=new.output_key)
            job = replace(job, idempotency_key=new.idempotency_key, request_sha256=new.request_sha256)
            self._jobs[job.id] = job
            return job, True

    def get_job(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id not in self._jobs:
                raise JobNotFoundError(f"no job with id {job_id!r}")
            return self._jobs[job_id]

    def find_by_idempotency_key(self, key: str) -> JobRecord | None:
        with self._lock:
            return next((j for j in self._jobs.values() if j.idempotency_key == key), None)

    def list_jobs(
        self, state: JobState | None = None, limit: int = 50, before: int | None = None
    ) -> list[JobRecord]:
        with self._lock:
            jobs = sorted(self._jobs.values(), key=lambda j: -j.seq)
        jobs = [j for j in jobs if (state is None or j.state == state) and (before is None or j.seq < before)]
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

    def register_model(self, name: str, ref: ModelRef, sha256: str | None = None) -> ModelRecord:
        record = ModelRecord(name, replace(ref, name=name), sha256)
        with self._lock:
            self._models[name] = record
        return record

    def get_model(self, name: str) -> ModelRecord:
        with self._lock:
            if name not in self._models:
                raise ModelNotRegisteredError(f"no registered model named {name!r}")
            return self._models[name]

    def list_models(self) -> list[ModelRecord]:
        with self._lock:
            return [self._models[name] for name in sorted(self._models)]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None
