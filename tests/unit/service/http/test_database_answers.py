"""The service over a damaged job database: readiness fails naming the file, and a request whose
statement hits a damaged page answers 503 with the same clear reason, never a 500. The in-process
app over a real SQLite file (no lifespan: the handlers reach a state built over that file)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.http.app import create_app
from service.http.state import open_state
from service.settings import Settings
from tests.database_helpers import damage_pages, database_with_jobs


@pytest.fixture
def damaged(tmp_path: Path) -> Iterator[tuple[TestClient, Path]]:
    settings = Settings(data_roots=[tmp_path], state_dir=tmp_path / "state")
    path = database_with_jobs(settings.database_path)
    damage_pages(path)
    app = create_app(settings)
    app.state.pytc = state = open_state(settings)  # opens: the header and the schema are intact
    yield TestClient(app, base_url="http://127.0.0.1:8000"), path
    state.store.close()
    state.models.close()


def problem(answer: object, path: Path) -> dict[str, object]:
    assert getattr(answer, "status_code", None) == 503, getattr(answer, "text", answer)
    body: dict[str, object] = answer.json()  # type: ignore[attr-defined]
    assert answer.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    assert str(path) in str(body["detail"]) and body["type"] == "urn:pytc:problem:job-database"
    return body


def test_readiness_fails_naming_the_database(damaged: tuple[TestClient, Path]) -> None:
    client, path = damaged
    body = problem(client.get("/readyz"), path)
    assert "is damaged" in str(body["detail"]) and ".recover" in str(body["detail"])


def test_a_request_that_hits_a_damaged_page_is_a_503_not_a_500(damaged: tuple[TestClient, Path]) -> None:
    client, path = damaged
    answers, token = [], None
    while True:  # page through every job: some page of them lies on the damaged pages
        answer = client.get("/v1/jobs", params={"limit": 500, **({"page_token": token} if token else {})})
        answers.append(answer.status_code)
        if answer.status_code != 200 or not (token := answer.json()["next_page_token"]):
            break
    assert answers[-1] == 503 and 500 not in answers, answers
    body = problem(answer, path)
    assert "failed" in str(body["detail"]) and answer.headers["retry-after"]
