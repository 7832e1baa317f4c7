"""The job database's schema version: one for the file, migrations applied in order and once, in a
transaction, a file from before versions opened with everything in it, a newer file refused."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

import pytest

from models.ref import ModelRef
from service.errors import JobDatabaseError
from service.store.jobs import NewJob
from service.store.sqlite import MIGRATIONS, SCHEMA_VERSION, Database, SqliteJobStore, SqliteModelRegistry

# The schema as the store wrote it before the file had a version (user_version 0), verbatim.
UNVERSIONED_SCHEMA = """
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
CREATED = "2025-01-02T03:04:05.123456+00:00"


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def columns(path: Path, table: str) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def test_a_state_directory_from_before_versions_opens_with_its_job_and_model(tmp_path: Path) -> None:
    path = tmp_path / "state" / "jobs.sqlite3"
    path.parent.mkdir()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(UNVERSIONED_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, kind, state, spec, created_at, output_key)"
            " VALUES ('j1', 'inference', 'succeeded', '{\"kind\": \"inference\"}', ?, '/out.zarr')",
            (CREATED,),
        )
        ref = '{"architecture": null, "checkpoint": null, "config": {}, "kind": "torchscript", "name": null, "path": "/m/net.pt"}'  # noqa: E501
        db.execute("INSERT INTO models VALUES ('mito-v1', ?, 'ab', ?)", (ref, CREATED))
        db.commit()
    assert user_version(path) == 0

    store, registry = SqliteJobStore(path), SqliteModelRegistry(path)  # as pytc-serve opens them
    try:
        job = store.get_job("j1")
        assert (job.kind, job.state, job.spec, job.output_key) == (
            "inference",
            "succeeded",
            {"kind": "inference"},
            "/out.zarr",
        )
        assert registry.get("mito-v1").ref == ModelRef("torchscript", path="/m/net.pt", name="mito-v1")
        assert user_version(path) == SCHEMA_VERSION
        # and both write beside the old rows
        store.create_job(NewJob("j2", "inference", {"kind": "inference"}))
        assert [j.id for j in store.list_jobs()] == ["j2", "j1"]
        registry.register("cells", ModelRef("torchscript", path="/m/cells.pt"), None)
        assert [m.name for m in registry.list()] == ["cells", "mito-v1"]
    finally:
        store.close()
        registry.close()


@pytest.mark.parametrize("first", [SqliteJobStore, SqliteModelRegistry])
def test_a_new_file_has_both_tables_at_the_current_version(tmp_path: Path, first: type) -> None:
    path = tmp_path / "jobs.sqlite3"
    first(path).close()  # whichever opens the file first makes all of it: one version for the file
    assert user_version(path) == SCHEMA_VERSION
    assert "state" in columns(path, "jobs") and "sha256" in columns(path, "models")


STEP_1 = ("CREATE TABLE t (a INTEGER)",)
STEP_2 = ("ALTER TABLE t ADD COLUMN b TEXT", "UPDATE t SET b = 'from ' || a")  # fails if run twice


def open_with(path: Path, migrations: Sequence[Sequence[str]]) -> None:
    Database(path, migrations).close()


def test_migrations_run_in_order_and_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    open_with(path, [STEP_1])
    assert user_version(path) == 1
    with closing(sqlite3.connect(path)) as db:
        db.execute("INSERT INTO t (a) VALUES (7)")
        db.commit()
    open_with(path, [STEP_1, STEP_2])
    open_with(path, [STEP_1, STEP_2])  # nothing left to do: step 2 would fail a second time
    assert user_version(path) == 2
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT a, b FROM t").fetchall() == [(7, "from 7")]


def test_a_failing_step_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    open_with(path, [STEP_1])
    broken = ("ALTER TABLE t ADD COLUMN b TEXT", "INSERT INTO no_such_table VALUES (1)")
    with pytest.raises(JobDatabaseError, match=f"cannot open the job database {path}: no such table"):
        open_with(path, [STEP_1, broken])
    assert user_version(path) == 1
    assert columns(path, "t") == ["a"]  # the step's first statement was rolled back with it


def test_a_file_from_a_newer_version_is_refused_naming_it_and_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    for opener in (SqliteJobStore, SqliteModelRegistry):
        with pytest.raises(JobDatabaseError) as caught:
            opener(path)
        message = str(caught.value)
        assert f"{path} has schema version {SCHEMA_VERSION + 1}" in message
        assert f"knows versions up to {SCHEMA_VERSION}" in message and "PYTC_STATE_DIR" in message
    assert user_version(path) == SCHEMA_VERSION + 1
    with closing(sqlite3.connect(path)) as db:  # untouched: not even switched to WAL
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_a_file_that_is_not_a_database_is_named(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"not a database, " * 256)
    with pytest.raises(
        JobDatabaseError, match=f"cannot open the job database {path}: file is not a database"
    ):
        SqliteJobStore(path)


def test_two_openers_of_an_old_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    open_with(path, [STEP_1])
    start, failures = threading.Barrier(2), []

    def opener() -> None:
        start.wait()
        try:
            open_with(path, [STEP_1, STEP_2])
        except JobDatabaseError as err:
            failures.append(err)

    threads = [threading.Thread(target=opener) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and user_version(path) == 2 and columns(path, "t") == ["a", "b"]


def test_a_version_1_file_gains_owners_and_keeps_its_jobs_keys_and_order(tmp_path: Path) -> None:
    """Version 1 as its code wrote it (the first migration, then the store's own inserts), opened by
    this version: the rows are kept with no owner (admins and an open service see them), their seq
    goes on, and idempotency keys become per owner."""
    path = tmp_path / "jobs.sqlite3"
    old = Database(path, MIGRATIONS[:1])
    with old.write() as db:
        for i, key in enumerate(["k1", None, "k3"]):
            db.execute(
                "INSERT INTO jobs (id, kind, state, spec, created_at, idempotency_key, request_sha256)"
                " VALUES (?, 'inference', 'succeeded', '{}', ?, ?, 'h')",
                (f"j{i}", CREATED, key),
            )
        db.execute("DELETE FROM jobs WHERE id = 'j2'")  # AUTOINCREMENT: seq 3 is never given again
    old.close()
    assert user_version(path) == 1

    store = SqliteJobStore(path)
    try:
        assert user_version(path) == SCHEMA_VERSION == 2 and "owner" in columns(path, "jobs")
        assert [(j.id, j.seq, j.owner) for j in store.list_jobs()] == [("j1", 2, None), ("j0", 1, None)]
        replay, created = store.create_job(
            NewJob("x", "inference", {}, idempotency_key="k1", request_sha256="h")
        )
        assert not created and replay.id == "j0"  # an ownerless key is still the open service's
        mine, created = store.create_job(
            NewJob("a", "inference", {}, idempotency_key="k1", request_sha256="other", owner="token:a")
        )
        assert created and mine.seq == 4 and mine.owner == "token:a"
        assert [j.id for j in store.list_jobs(owner="token:a")] == ["a"]
    finally:
        store.close()
