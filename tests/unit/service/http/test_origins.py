"""What a page of another origin can make a browser send is refused; programs and the service's own
pages are not affected."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.http.origins import BrowserGuard


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    calls: list[str] = []

    @app.post("/v1/jobs")
    def submit() -> dict[str, int]:
        calls.append("submit")
        return {"calls": len(calls)}

    @app.get("/v1/jobs")
    def jobs() -> dict[str, int]:
        return {"calls": len(calls)}

    app.add_middleware(BrowserGuard, allowed_origins=["https://viewer.lab.example/"])
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_programs_send_no_origin_and_pass(client: TestClient) -> None:
    assert client.post("/v1/jobs", json={"kind": "inference"}).status_code == 200
    assert client.post("/v1/jobs").status_code == 200  # a cancel has no body at all


@pytest.mark.parametrize("origin", ["http://127.0.0.1:8000", "https://viewer.lab.example"])
def test_the_own_origin_and_configured_ones_pass(client: TestClient, origin: str) -> None:
    assert client.post("/v1/jobs", json={}, headers={"Origin": origin}).status_code == 200


def test_another_origin_is_refused_before_the_handler_runs(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={}, headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "evil.example" in response.json()["detail"]
    assert client.get("/v1/jobs").json() == {"calls": 0}
    assert client.get("/v1/jobs", headers={"Origin": "https://evil.example"}).status_code == 200  # reads


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ],
)
def test_bodies_a_browser_posts_without_a_preflight_are_refused(
    client: TestClient, content_type: str
) -> None:
    response = client.post(
        "/v1/jobs", content=b'{"kind": "inference"}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 415 and "application/json" in response.json()["detail"]
    assert client.get("/v1/jobs").json() == {"calls": 0}
