"""A damaged job database is named with what is wrong and what to do: at open, by the full check
``pytc-serve`` runs before it starts and ``/readyz`` repeats, and by any statement that hits a
damaged page (a JobDatabaseError, which the service answers with 503, never a bare sqlite3 error)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.errors import JobDatabaseError
from service.store.sqlite import Database, SqliteJobStore
from tests.database_helpers import damage_header, damage_pages, database_with_jobs


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return database_with_jobs(tmp_path / "jobs.sqlite3")


def read_every_job(store: SqliteJobStore) -> int:
    seen, before = 0, None
    while page := store.list_jobs(limit=500, before=before):
        seen, before = seen + len(page), page[-1].seq
    return seen


def test_a_sound_file_passes_the_check_and_reads_back(path: Path) -> None:
    database = Database(path)
    database.check()
    database.close()
    store = SqliteJobStore(path)
    store.ping()
    assert read_every_job(store) == 3000
    store.close()


def test_damaged_pages_are_found_by_the_check_naming_the_file_and_the_way_out(path: Path) -> None:
    store = SqliteJobStore(path)  # opens: the header and the schema are intact
    damage_pages(path)
    with pytest.raises(JobDatabaseError) as caught:
        store.ping()
    message = str(caught.value)
    assert f"the job database {path} is damaged" in message and ".recover" in message
    with pytest.raises(JobDatabaseError, match="is damaged"):
        Database(path).check()
    store.close()


def test_a_statement_that_hits_a_damaged_page_is_a_job_database_error(path: Path) -> None:
    damage_pages(path)
    store = SqliteJobStore(path)
    with pytest.raises(JobDatabaseError, match=f"the job database {path} failed: .*malformed") as caught:
        read_every_job(store)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    store.close()


def test_readiness_rereads_the_file_at_most_every_few_seconds_and_after_a_failure(path: Path) -> None:
    database = Database(path)
    database.check_health(max_age_s=60)
    damage_pages(path)
    database.check_health(max_age_s=60)  # the outcome of a moment ago: probes stay cheap
    with pytest.raises(JobDatabaseError, match="is damaged"):
        database.check_health(max_age_s=0)
    with pytest.raises(JobDatabaseError, match="is damaged"):
        database.check_health(max_age_s=60)  # and a bad outcome is repeated until the next look
    database.close()


def test_a_statement_failure_makes_the_next_probe_look_again(path: Path) -> None:
    store = SqliteJobStore(path)
    store.ping()
    damage_pages(path)
    with pytest.raises(JobDatabaseError):
        read_every_job(store)
    with pytest.raises(JobDatabaseError, match="is damaged"):
        store.ping()  # within HEALTH_CHECK_S of the sound outcome, yet not repeating it
    store.close()


def test_a_damaged_header_is_refused_at_open_with_the_way_out(path: Path) -> None:
    damage_header(path)
    with pytest.raises(JobDatabaseError) as caught:
        SqliteJobStore(path)
    message = str(caught.value)
    assert f"cannot open the job database {path}: file is not a database" in message
    assert ".recover" in message and "backup" in message
