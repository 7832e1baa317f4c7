"""Who a bearer token is: its owner is a fingerprint (never the token), admins see every job, an
open service (no tokens) is everyone's, and another owner's job is as unknown as no job at all."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.errors import AuthenticationError, JobNotFoundError
from service.http.auth import OPEN, TokenAuth, token_owner
from service.store.jobs import JobRecord


def job(job_id: str, owner: str | None) -> JobRecord:
    return JobRecord(job_id, 1, "inference", "queued", {}, datetime.now(UTC), owner=owner)


def test_the_owner_is_a_stable_fingerprint_that_holds_no_token() -> None:
    owner = token_owner("s3cret-token")
    assert owner == token_owner("s3cret-token") != token_owner("s3cret-tokem")
    assert owner.startswith("token:") and len(owner) == len("token:") + 16 and "s3cret" not in owner


def test_without_tokens_everyone_is_the_open_caller() -> None:
    auth = TokenAuth()
    assert not auth.enabled and auth.identify(None) == OPEN and auth.identify("anything") == OPEN
    assert OPEN.may_see(job("a", None)) and OPEN.may_see(job("b", token_owner("x")))


def test_tokens_and_admin_tokens() -> None:
    auth = TokenAuth(["alice", "bob", "root"], admin_tokens=["root"])
    alice, root = auth.identify("alice"), auth.identify("root")
    assert alice.owner == token_owner("alice") and not alice.sees_all and alice.owner_filter == alice.owner
    assert root.owner == token_owner("root") and root.sees_all and root.owner_filter is None
    assert TokenAuth(admin_tokens=["root"]).identify("root").sees_all  # admin tokens alone turn auth on
    for bad in (None, "", "alic", "alice "):
        with pytest.raises(AuthenticationError):
            auth.identify(bad)


def test_another_owners_job_and_an_ownerless_one_are_hidden_as_unknown() -> None:
    auth = TokenAuth(["alice", "bob"], admin_tokens=["root"])
    alice, bob, root = (auth.identify(t) for t in ("alice", "bob", "root"))
    mine, legacy = job("j1", alice.owner), job("j0", None)
    assert alice.check(mine) is mine and root.check(mine) is mine and root.check(legacy) is legacy
    for caller, record in ((bob, mine), (alice, legacy)):
        with pytest.raises(JobNotFoundError) as caught:
            caller.check(record)
        assert str(caught.value) == f"no job with id {record.id!r}"  # as the store says for no job
