"""The service's durable store: jobs and registered models in one SQLite file, ``jobs.sqlite3``.

Both open the file through :class:`Database`: WAL mode, ``synchronous=FULL`` (a job or a model
acknowledged to a client survives a crash of the service, and of the machine), one connection and
one lock each. The file carries one schema version (SQLite's ``user_version``); opening it applies
the :data:`MIGRATIONS` it has not had, in one transaction, and refuses a file from a newer version.
The ``models`` table is the one the job store kept models in before the registry had a protocol of
its own, unchanged, so a database written then opens and lists its models.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

from models.ref import ModelRef
from service.errors import (
    JobDatabaseError,
    JobFinishedError,
    JobNotFoundError,
    ModelNotRegisteredError,
)
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
from service.store.models import ModelRecord, new_record, ref_from_json, ref_to_json

log = logging.getLogger(__name__)

_V1_JOB_COLUMNS = (
    "seq, id, kind, state, spec, created_at, started_at, finished_at, progress, error, result,"
    " cancel_requested, attempts, output_key, idempotency_key, request_sha256"
)
# The file's schema, one version for the whole file (the job store and the model registry open it
# each with a connection of its own), kept in SQLite's ``user_version``. Step N of MIGRATIONS takes a
# file from version N - 1 to N; version 0 is a new file, or one written before the file had a
# version (it has both tables already: hence IF NOT EXISTS in step 1). Append steps, never edit
# one that has shipped: a file already past it would never see the change.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: jobs, and the registered models
        """CREATE TABLE IF NOT EXISTS jobs (
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
        )""",
        "CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq)",
        "CREATE INDEX IF NOT EXISTS jobs_by_output ON jobs (output_key, state)",
        """CREATE TABLE IF NOT EXISTS models (
            name TEXT PRIMARY KEY,
            ref TEXT NOT NULL,
            sha256 TEXT,
            created_at TEXT NOT NULL
        )""",
    ),
    (  # 2: jobs have an owner (a token's identity; NULL: no tokens, or recorded before owners), and
        # idempotency keys are unique per owner. SQLite cannot drop the column's UNIQUE: the table
        # is copied into one without it (seq kept, so page tokens and AUTOINCREMENT go on).
        """CREATE TABLE jobs_v2 (
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
            idempotency_key TEXT,
            request_sha256 TEXT,
            owner TEXT
        )""",
        f"INSERT INTO jobs_v2 ({_V1_JOB_COLUMNS}, owner) SELECT {_V1_JOB_COLUMNS}, NULL FROM jobs",
        # AUTOINCREMENT's high-water mark goes along: a seq once given is never given again.
        "DELETE FROM sqlite_sequence WHERE name = 'jobs_v2'",
        "INSERT INTO sqlite_sequence (name, seq)"
        " SELECT 'jobs_v2', seq FROM sqlite_sequence WHERE name = 'jobs'",
        "DROP TABLE jobs",
        "ALTER TABLE jobs_v2 RENAME TO jobs",
        "CREATE INDEX jobs_by_state ON jobs (state, seq)",
        "CREATE INDEX jobs_by_output ON jobs (output_key, state)",
        "CREATE INDEX jobs_by_owner ON jobs (owner, seq)",
        # NULL owners compare equal here (COALESCE): an open service's keys stay unique among its jobs.
        """CREATE UNIQUE INDEX jobs_by_idempotency_key ON jobs (COALESCE(owner, ''), idempotency_key)
            WHERE idempotency_key IS NOT NULL""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
HEALTH_CHECK_S = 5.0  # /readyz reads the whole file at most this often, and repeats the outcome between
# As the unique index reads it (so it is used): NULL owners match each other (an open service's keys).
_BY_KEY = "SELECT * FROM jobs WHERE COALESCE(owner, '') = COALESCE(?, '') AND idempotency_key = ?"
_JSON_COLUMNS = ("spec", "progress", "error", "result")
_TIME_COLUMNS = ("created_at", "started_at", "finished_at")


class Database:
    """One connection to the WAL database at ``path``, brought to :data:`SCHEMA_VERSION` on open,
    behind one lock: every statement is short, and the service's handlers call it from worker
    threads. A file this version cannot use (a newer schema, not a database) is a
    :class:`JobDatabaseError` naming it, and is left as it was.

    A statement that fails in SQLite (damaged pages, a disk error, a lock held past the busy
    timeout) is a :class:`JobDatabaseError` naming the file too (the service answers 503, not 500),
    and makes the next :meth:`check_health` look at the file again."""

    def __init__(self, path: str | Path, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> None:
        self.path = Path(path)
        self.lock = threading.RLock()
        self._db = _connect(self.path, migrations)
        self._health: tuple[float, str | None] | None = None  # (when, what was wrong) of the last check

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the database's write lock at once (``BEGIN IMMEDIATE``), so
        what it reads stays true until it commits."""
        with self.lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    with suppress(sqlite3.Error):  # a damaged file may refuse the rollback too
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as err:
                raise self._failed(err) from err

    def one(self, sql: str, *args: Any) -> sqlite3.Row | None:
        with self.lock:
            try:
                row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
            except sqlite3.Error as err:
                raise self._failed(err) from err
            return row

    def all(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with self.lock:
            try:
                return list(self._db.execute(sql, args).fetchall())
            except sqlite3.Error as err:
                raise self._failed(err) from err

    def check(self) -> None:
        """Read every page of the file (``PRAGMA quick_check``): a :class:`JobDatabaseError` saying
        what is damaged, naming the file and what to do, when anything is. Linear in the file's size
        (44 MB of 30,000 jobs: 0.07 s); ``pytc-serve`` runs it before it starts."""
        problems = quick_check(self.path)
        with self.lock:
            self._health = (time.monotonic(), "; ".join(problems) or None)
        if problems:
            raise JobDatabaseError(damaged(self.path, "; ".join(problems)))

    def check_health(self, max_age_s: float) -> None:
        """:meth:`check`, at most every ``max_age_s`` (readiness probes come every few seconds):
        the last outcome is repeated in between, unless a statement has failed since."""
        with self.lock:
            last = self._health
        if last is None or time.monotonic() - last[0] >= max_age_s:
            self.check()
        elif last[1] is not None:
            raise JobDatabaseError(damaged(self.path, last[1]))

    def close(self) -> None:
        with self.lock:
            self._db.close()

    def _failed(self, err: sqlite3.Error) -> JobDatabaseError:
        self._health = None  # the next readiness probe checks the file again
        log.error("the job database %s failed: %s", self.path, err)
        return JobDatabaseError(f"the job database {self.path} failed: {err}")


def quick_check(path: Path, max_problems: int = 5) -> list[str]:
    """What ``PRAGMA quick_check`` finds wrong in the file at ``path`` (empty: nothing). On a
    connection of its own: it reads the file as it is on disk, not pages another connection holds
    in its cache, and holds no lock of the store's meanwhile (WAL readers do not block)."""
    try:
        with closing(sqlite3.connect(path, timeout=30.0)) as db:
            rows = db.execute(f"PRAGMA quick_check({max_problems:d})").fetchall()
    except sqlite3.Error as err:
        return [str(err)]
    # A problem may span lines, under a heading naming the schema ("*** in database main ***").
    lines = [line.strip() for row in rows for line in str(row[0]).splitlines()]
    return [line for line in lines if line and line != "ok" and not line.startswith("***")][:max_problems]


def damaged(path: Path, what: str) -> str:
    """The one message for a damaged job database: what SQLite found, and the way out."""
    return f"the job database {path} is damaged ({what}); {_ADVICE.format(path=path)}"


# What an operator does with a damaged (or not a) database file; ``.recover`` is sqlite3's own.
_ADVICE = (
    "stop pytc-service, keep a copy of the file, then restore it from a backup, or save what SQLite "
    "can read into a new file (sqlite3 {path} .recover), or move it aside to start with no jobs"
)


def _connect(path: Path, migrations: Sequence[Sequence[str]]) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    except (OSError, sqlite3.Error) as err:
        raise JobDatabaseError(f"cannot open the job database {path}: {err}") from err
    db.row_factory = sqlite3.Row
    try:
        _refuse_newer(path, _user_version(db), len(migrations))  # before anything is written
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        migrate(db, path, migrations)
    except sqlite3.Error as err:  # not a database, unreadable, a step that failed
        db.close()
        advice = f"; {_ADVICE.format(path=path)}" if type(err) is sqlite3.DatabaseError else ""
        raise JobDatabaseError(f"cannot open the job database {path}: {err}{advice}") from err
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, path: Path, migrations: Sequence[Sequence[str]] = MIGRATIONS) -> int:
    """Apply the steps ``db`` (the file at ``path``) has not had yet, in order, in one write
    transaction: a failing step leaves the file as it was, and of two processes opening an old file
    at once one migrates and the other finds it done. Returns the version the file had."""
    found = _user_version(db)
    if found == len(migrations):
        return found
    db.execute("BEGIN IMMEDIATE")
    try:
        found = _user_version(db)  # again, under the write lock
        _refuse_newer(path, found, len(migrations))
        for version in range(found + 1, len(migrations) + 1):
            for statement in migrations[version - 1]:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {version:d}")  # a pragma takes no parameters
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def _user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def _refuse_newer(path: Path, found: int, known: int) -> None:
    if found > known:
        from workers.version import version_line

        raise JobDatabaseError(
            f"the job database {path} has schema version {found}, written by a newer pytc-service; "
            f"this one ({version_line()}) knows versions up to {known}: upgrade pytc-service, or "
            "point PYTC_STATE_DIR (--state-dir) at another folder"
        )


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# --- jobs -----------------------------------------------------------------------------------------


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    values = dict(row)
    for name in _JSON_COLUMNS:
        values[name] = None if values[name] is None else json.loads(values[name])
    for name in _TIME_COLUMNS:
        values[name] = None if values[name] is None else datetime.fromisoformat(values[name])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return JobRecord(**values)


class SqliteJobStore:
    """The :class:`service.store.jobs.JobStore` of the service: the ``jobs`` table."""

    def __init__(self, path: str | Path) -> None:
        self._db = Database(path)

    def create_job(self, new: NewJob) -> tuple[JobRecord, bool]:
        with self._db.write() as db:
            if new.idempotency_key is not None:
                row = db.execute(_BY_KEY, (new.owner, new.idempotency_key)).fetchone()
                if row is not None:
                    return confirm_replay(_job_from_row(row), new.idempotency_key, new.request_sha256), False
            if new.output_key is not None:
                _check_output_free(db, new)
            row = db.execute(
                "INSERT INTO jobs (id, kind, state, spec, created_at, output_key, idempotency_key,"
                " request_sha256, owner) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING *",
                (new.id, new.kind, _dump(new.spec), _time(utc_now()), new.output_key, new.idempotency_key,
                 new.request_sha256, new.owner),
            ).fetchone()  # fmt: skip
        return _job_from_row(row), True

    def get_job(self, job_id: str) -> JobRecord:
        row = self._db.one("SELECT * FROM jobs WHERE id = ?", job_id)
        if row is None:
            raise JobNotFoundError(f"no job with id {job_id!r}")
        return _job_from_row(row)

    def find_by_idempotency_key(self, key: str, owner: str | None = None) -> JobRecord | None:
        row = self._db.one(_BY_KEY, owner, key)
        return None if row is None else _job_from_row(row)

    def list_jobs(
        self,
        state: JobState | None = None,
        limit: int = 50,
        before: int | None = None,
        owner: str | None = None,
    ) -> list[JobRecord]:
        cursor = before if before is not None else 1 << 62
        if owner is None:
            sql = "SELECT * FROM jobs WHERE seq < ? AND (? IS NULL OR state = ?) ORDER BY seq DESC LIMIT ?"
            return [_job_from_row(row) for row in self._db.all(sql, cursor, state, state, limit)]
        # A plain ``owner = ?`` (not inside an OR): a tenant's page walks jobs_by_owner, not every job.
        sql = (
            "SELECT * FROM jobs WHERE owner = ? AND seq < ? AND (? IS NULL OR state = ?)"
            " ORDER BY seq DESC LIMIT ?"
        )
        return [_job_from_row(row) for row in self._db.all(sql, owner, cursor, state, state, limit)]

    def claim_next(self) -> JobRecord | None:
        with self._db.write() as db:
            row = db.execute(
                "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?),"
                " attempts = attempts + 1"
                " WHERE seq = (SELECT seq FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1) RETURNING *",
                (_time(utc_now()),),
            ).fetchone()
        return None if row is None else _job_from_row(row)

    def update_progress(self, job_id: str, progress: Json) -> None:
        with self._db.write() as db:
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (_dump(progress), job_id))

    def finish_job(
        self, job_id: str, state: JobState, error: ErrorInfo | None = None, result: Json | None = None
    ) -> JobRecord:
        if state not in TERMINAL_STATES:
            raise ValueError(f"a job finishes succeeded, failed or cancelled, not {state!r}")
        with self._db.write() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, result = ? WHERE id = ?",
                (state, _time(utc_now()), _dump(error), _dump(result), job_id),
            )
        return self.get_job(job_id)

    def requeue_job(self, job_id: str) -> None:
        with self._db.write() as db:
            db.execute("UPDATE jobs SET state = 'queued' WHERE id = ? AND state = 'running'", (job_id,))

    def delete_job(self, job_id: str) -> JobRecord:
        with self._db.write() as db:
            job = self.get_job(job_id)
            refuse_active(job)
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return job

    def request_cancel(self, job_id: str) -> JobRecord:
        with self._db.write() as db:
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
        with self._db.write() as db:
            db.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?, error = ?"
                " WHERE state IN ('queued', 'running') AND cancel_requested = 1",
                (_time(utc_now()), _dump(CANCELLED)),
            )
            db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'")
            rows = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        return [row["id"] for row in rows]

    def count_by_state(self) -> dict[JobState, int]:
        rows = self._db.all("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts: dict[JobState, int] = dict.fromkeys(JOB_STATES, 0)
        counts.update({row["state"]: row["n"] for row in rows})
        return counts

    def ping(self) -> None:
        """Readiness: the file's pages read back (:meth:`Database.check_health`, once per
        :data:`HEALTH_CHECK_S`); a JobDatabaseError saying what is damaged otherwise."""
        self._db.check_health(HEALTH_CHECK_S)

    def close(self) -> None:
        self._db.close()


def _check_output_free(db: sqlite3.Connection, new: NewJob) -> None:
    row = db.execute(
        "SELECT id, owner FROM jobs WHERE output_key = ? AND state IN ('queued', 'running') LIMIT 1",
        (new.output_key,),
    ).fetchone()
    if row is not None:
        raise output_in_use(row["id"], row["owner"], new)


# --- models ---------------------------------------------------------------------------------------


class SqliteModelRegistry:
    """The :class:`service.store.models.ModelRegistry` of the service: the ``models`` table of its
    database file (``jobs.sqlite3``, beside the jobs).

    It opens its own connection rather than sharing the job store's: WAL lets the two (and any other
    process, such as an operator's script registering a model) read while one writes, and writes
    wait for each other (30 s busy timeout). Models change rarely, so sharing the job store's lock
    would gain nothing, while a connection of its own lets the registry open, close and be tested
    without a job store.
    """

    def __init__(self, path: str | Path) -> None:
        self._db = Database(path)

    def register(self, name: str, ref: ModelRef, sha256: str | None) -> ModelRecord:
        record = new_record(name, ref, sha256)
        with self._db.write() as db:
            db.execute(
                "INSERT OR REPLACE INTO models (name, ref, sha256, created_at) VALUES (?, ?, ?, ?)",
                (name, json.dumps(ref_to_json(ref), sort_keys=True), sha256, _time(record.created_at)),
            )
        return record

    def get(self, name: str) -> ModelRecord:
        row = self._db.one("SELECT * FROM models WHERE name = ?", name)
        if row is None:
            raise ModelNotRegisteredError(f"no registered model named {name!r}")
        return self._record(row)

    def list(self) -> list[ModelRecord]:
        return [self._record(row) for row in self._db.all("SELECT * FROM models ORDER BY name")]

    def close(self) -> None:
        self._db.close()

    def _record(self, row: sqlite3.Row) -> ModelRecord:
        name = row["name"]
        ref = ref_from_json(json.loads(row["ref"]), name, f"the models table of {self._db.path}")
        return ModelRecord(name, ref, row["sha256"], datetime.fromisoformat(row["created_at"]))
