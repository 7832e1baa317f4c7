"""One conformance test for every :class:`service.store.jobs.JobStore`: SQLite (WAL) and in memory."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.errors import (
    IdempotencyKeyReusedError,
    JobActiveError,
    JobFinishedError,
    JobNotFoundError,
    OutputInUseError,
)
from service.store.jobs import JobStore, NewJob, confirm_replay
from service.store.memory import MemoryJobStore
from service.store.sqlite import SqliteJobStore

SPEC = {"kind": "inference", "input": {"path": "em.zarr"}, "window": {"patch_size": [1, 2, 3]}}


@pytest.fixture(params=["sqlite", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    made: JobStore = (
        SqliteJobStore(tmp_path / "state" / "jobs.db") if request.param == "sqlite" else MemoryJobStore()
    )
    yield made
    made.close()


def new(job_id: str, **kw: str) -> NewJob:
    return NewJob(job_id, "inference", SPEC, **kw)


def test_a_job_is_created_queued_and_read_back(store: JobStore) -> None:
    job, created = store.create_job(new("a", output_key="/out.zarr::pred"))
    assert created and job.state == "queued" and job.spec == SPEC and job.started_at is None
    assert store.get_job("a") == job
    with pytest.raises(JobNotFoundError):
        store.get_job("nope")


def test_jobs_move_queued_running_finished_and_progress_is_kept(store: JobStore) -> None:
    store.create_job(new("a"))
    store.create_job(new("b"))
    first = store.claim_next()
    assert first is not None and first.id == "a" and first.state == "running" and first.attempts == 1
    assert first.started_at is not None
    store.update_progress("a", {"done": 3, "total": 8})
    assert store.get_job("a").progress == {"done": 3, "total": 8}
    done = store.finish_job("a", "succeeded", result={"blocks": 8})
    assert done.state == "succeeded" and done.result == {"blocks": 8} and done.finished_at is not None
    second = store.claim_next()
    assert second is not None and second.id == "b"
    failed = store.finish_job("b", "failed", error={"title": "job failed", "detail": "block (0, 0, 0)"})
    assert failed.error == {"title": "job failed", "detail": "block (0, 0, 0)"}
    assert store.claim_next() is None
    with pytest.raises(ValueError):
        store.finish_job("b", "running")


def test_claims_from_many_threads_never_share_a_job(store: JobStore) -> None:
    for i in range(40):
        store.create_job(new(f"j{i}"))
    claimed: list[str] = []

    def claim() -> None:
        while (job := store.claim_next()) is not None:
            claimed.append(job.id)

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(f"j{i}" for i in range(40))


def test_idempotency_key_returns_the_same_job_or_conflicts(store: JobStore) -> None:
    _, created = store.create_job(new("a", idempotency_key="k1", request_sha256="h1"))
    again, created_again = store.create_job(new("b", idempotency_key="k1", request_sha256="h1"))
    assert created and not created_again and again.id == "a"
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_job(new("c", idempotency_key="k1", request_sha256="h2"))
    found = store.find_by_idempotency_key("k1")
    assert found is not None and found.id == "a"
    assert store.find_by_idempotency_key("k2") is None
    assert [j.id for j in store.list_jobs()] == ["a"]


def test_an_output_is_written_by_one_active_job_at_a_time(store: JobStore) -> None:
    store.create_job(new("a", output_key="/o::pred"))
    with pytest.raises(OutputInUseError):
        store.create_job(new("b", output_key="/o::pred"))
    store.create_job(new("c", output_key="/o::other"))
    store.claim_next()
    store.finish_job("a", "succeeded")
    store.create_job(new("d", output_key="/o::pred"))


def test_an_output_in_use_names_the_job_to_its_owner_only(store: JobStore) -> None:
    """Tenants: the 409 says which job writes the output to the tenant who submitted it, and does
    not reveal another tenant's job id."""
    store.create_job(new("mine", output_key="/o::pred", owner="token:a"))
    with pytest.raises(OutputInUseError, match="job mine "):
        store.create_job(new("again", output_key="/o::pred", owner="token:a"))
    with pytest.raises(OutputInUseError) as caught:
        store.create_job(new("theirs", output_key="/o::pred", owner="token:b"))
    assert "mine" not in str(caught.value) and "another job" in str(caught.value)


def test_cancel_ends_a_queued_job_flags_a_running_one_and_refuses_a_finished_one(store: JobStore) -> None:
    store.create_job(new("run"))
    store.create_job(new("wait"))
    store.claim_next()
    waiting = store.request_cancel("wait")
    assert waiting.state == "cancelled" and waiting.error is not None and waiting.finished_at is not None
    running = store.request_cancel("run")
    assert running.state == "running" and running.cancel_requested
    store.finish_job("run", "cancelled", error={"title": "cancelled", "detail": "by request"})
    with pytest.raises(JobFinishedError):
        store.request_cancel("run")
    with pytest.raises(JobNotFoundError):
        store.request_cancel("nope")


def test_recover_requeues_running_jobs_and_ends_cancel_flagged_ones(store: JobStore) -> None:
    for name in ("a", "b", "c", "d"):
        store.create_job(new(name))
    store.claim_next()  # a
    store.claim_next()  # b
    store.request_cancel("b")
    assert store.recover() == ["a", "c", "d"]
    assert store.get_job("a").state == "queued" and store.get_job("b").state == "cancelled"
    again = store.claim_next()
    assert again is not None and again.id == "a" and again.attempts == 2


def test_requeue_puts_a_running_job_back(store: JobStore) -> None:
    store.create_job(new("a"))
    started = store.claim_next()
    store.requeue_job("a")
    assert store.get_job("a").state == "queued"
    again = store.claim_next()
    assert again is not None and started is not None and again.started_at == started.started_at


def test_listing_pages_newest_first_and_filters_by_state(store: JobStore) -> None:
    for i in range(5):
        store.create_job(new(f"j{i}"))
    store.claim_next()  # j0 runs
    page = store.list_jobs(limit=2)
    assert [j.id for j in page] == ["j4", "j3"]
    rest = store.list_jobs(limit=10, before=page[-1].seq)
    assert [j.id for j in rest] == ["j2", "j1", "j0"]
    assert [j.id for j in store.list_jobs(state="running")] == ["j0"]
    counts = store.count_by_state()
    assert counts["queued"] == 4 and counts["running"] == 1 and counts["failed"] == 0


def test_a_replay_is_the_same_request_or_a_conflict() -> None:
    """The one idempotency check, shared by the stores and the submission path."""
    job, _ = MemoryJobStore().create_job(new("a", idempotency_key="k", request_sha256="h"))
    assert confirm_replay(job, "k", "h") is job
    with pytest.raises(IdempotencyKeyReusedError, match="'k' was used for job a"):
        confirm_replay(job, "k", "other")


def test_ping(store: JobStore) -> None:
    store.ping()


def test_sqlite_jobs_survive_reopening(tmp_path: Path) -> None:
    first = SqliteJobStore(tmp_path / "jobs.db")
    first.create_job(new("a", idempotency_key="k", request_sha256="h"))
    first.claim_next()
    first.update_progress("a", {"done": 1})
    # No close: the process dies holding the database open.
    second = SqliteJobStore(tmp_path / "jobs.db")
    assert second.recover() == ["a"]
    job = second.get_job("a")
    assert job.state == "queued" and job.progress == {"done": 1} and job.idempotency_key == "k"
    second.close()
    first.close()


def test_jobs_keep_their_owner_and_a_listing_keeps_one_owners_jobs(store: JobStore) -> None:
    store.create_job(new("a1", owner="token:a"))
    store.create_job(new("b1", owner="token:b"))
    store.create_job(new("open"))  # submitted while the service had no tokens
    store.create_job(new("a2", owner="token:a"))
    assert store.get_job("a1").owner == "token:a" and store.get_job("open").owner is None
    assert [j.id for j in store.list_jobs(owner="token:a")] == ["a2", "a1"]
    assert [j.id for j in store.list_jobs(owner="token:b")] == ["b1"]
    assert [j.id for j in store.list_jobs()] == ["a2", "open", "b1", "a1"]  # no filter: every job
    page = store.list_jobs(owner="token:a", limit=1)
    assert [j.id for j in store.list_jobs(owner="token:a", before=page[-1].seq)] == ["a1"]
    assert store.list_jobs(owner="token:nobody") == []


def test_idempotency_keys_are_scoped_by_owner(store: JobStore) -> None:
    a, _ = store.create_job(new("a", idempotency_key="k", request_sha256="h", owner="token:a"))
    b, created = store.create_job(new("b", idempotency_key="k", request_sha256="other", owner="token:b"))
    assert created and b.id == "b" and b.owner == "token:b"  # neither a replay nor a 409
    nobody, created = store.create_job(new("n", idempotency_key="k", request_sha256="h"))
    assert created and nobody.owner is None
    again, created = store.create_job(
        new("a-again", idempotency_key="k", request_sha256="h", owner="token:a")
    )
    assert not created and again == a
    with pytest.raises(IdempotencyKeyReusedError):
        store.create_job(new("n-again", idempotency_key="k", request_sha256="other"))
    found = {owner: store.find_by_idempotency_key("k", owner) for owner in ("token:a", "token:b", None)}
    assert {o: j.id for o, j in found.items() if j is not None} == {"token:a": "a", "token:b": "b", None: "n"}
    assert store.find_by_idempotency_key("k", "token:c") is None


def test_a_finished_job_is_deleted_an_active_one_is_not(store: JobStore) -> None:
    store.create_job(new("done", idempotency_key="k", request_sha256="h"))
    store.create_job(new("waiting"))
    store.claim_next()
    with pytest.raises(JobActiveError, match="running; cancel it"):
        store.delete_job("done")
    with pytest.raises(JobActiveError, match="queued"):
        store.delete_job("waiting")
    store.finish_job("done", "failed", error={"title": "job failed", "detail": "x"})
    gone = store.delete_job("done")
    assert gone.id == "done" and gone.state == "failed"
    with pytest.raises(JobNotFoundError):
        store.get_job("done")
    with pytest.raises(JobNotFoundError):
        store.delete_job("done")
    assert [j.id for j in store.list_jobs()] == ["waiting"] and store.find_by_idempotency_key("k") is None
