"""A small Python client of the REST service, for notebooks and scripts; the ``pytc`` client commands
are built on it.

    with PytcClient("http://127.0.0.1:8000", token=None) as pytc:
        job = pytc.submit(yaml.safe_load(open("job.yaml")))
        final = pytc.wait(job["id"], on_event=print)

Jobs are plain dicts (the JSON of the contract). Every failure is a :class:`ClientError` carrying
the status and the service's problem details (``problem["errors"]`` names the invalid fields).
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from service.errors import ClientError

TERMINAL = ("succeeded", "failed", "cancelled")
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class JobEvent:
    """One server-sent event: ``state`` (data: the whole job) or ``progress`` (id, state, progress)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


class PytcClient:
    """Calls of ``/v1`` over one HTTP connection pool; close it (or use ``with``) when done."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s, transport=transport)

    def __enter__(self) -> PytcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, doc: Mapping[str, Any], *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a job document (the YAML as a dict); the job as accepted (state ``queued``)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/v1/jobs", json=dict(doc), headers=headers)

    def get(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/jobs/{job_id}")

    def list(
        self, *, state: str | None = None, limit: int = 50, page_token: str | None = None
    ) -> dict[str, Any]:
        """One page: ``{"jobs": [...], "next_page_token": str | None}``, newest first."""
        params: dict[str, Any] = {"limit": limit}
        params.update({k: v for k, v in (("state", state), ("page_token", page_token)) if v})
        return self._json("GET", "/v1/jobs", params=params)

    def jobs(self, *, state: str | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every job, newest first, page after page."""
        token: str | None = None
        while True:
            page = self.list(state=state, limit=page_size, page_token=token)
            yield from page["jobs"]
            token = page.get("next_page_token")
            if not token:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")

    def delete(self, job_id: str) -> None:
        """Forget a finished job (ClientError 409 while it is queued or running)."""
        self._send("DELETE", f"/v1/jobs/{job_id}")

    def models(self) -> builtins.list[dict[str, Any]]:
        models: builtins.list[dict[str, Any]] = self._json("GET", "/v1/models")["models"]
        return models

    def model(self, name: str) -> dict[str, Any]:
        return self._json("GET", f"/v1/models/{name}")

    def view(self, job_id: str) -> dict[str, Any]:
        """A neuroglancer link to the job's data: ``url`` (signed, until ``expires_at``), ``layers``."""
        return self._json("GET", f"/v1/jobs/{job_id}/view")

    def view_output(self, path: str, dataset: str | None = None) -> dict[str, Any]:
        """A neuroglancer link to an output inside the service's data roots (``pytc view OUTPUT``)."""
        params = {"path": path, **({"dataset": dataset} if dataset else {})}
        return self._json("GET", "/v1/view", params=params)

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's event stream until the service ends it (after the final state)."""
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                if response.is_error:
                    response.read()
                    raise _problem(response)
                yield from parse_events(response.iter_lines())
        except httpx.HTTPError as err:
            raise ClientError(f"the event stream of {self.url} broke: {err}") from err

    def wait(
        self,
        job_id: str,
        *,
        on_event: Callable[[JobEvent], None] | None = None,
        timeout_s: float | None = None,
        reconnect_s: float = 120.0,
    ) -> dict[str, Any]:
        """Follow the event stream until the job ends; the final job. A broken stream (a restart
        of the service) is followed again for up to ``reconnect_s`` seconds."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        broken_since: float | None = None
        while deadline is None or time.monotonic() < deadline:
            try:
                for event in self.events(job_id):
                    broken_since = None
                    if on_event is not None:
                        on_event(event)
                    if event.event == "state" and event.data.get("state") in TERMINAL:
                        return event.data
            except ClientError as err:
                if err.status is not None:
                    raise
                broken_since = broken_since or time.monotonic()
                if time.monotonic() - broken_since > reconnect_s:
                    raise
            time.sleep(0.5)
        raise ClientError(f"job {job_id} did not end within {timeout_s} s")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._send(method, path, **kwargs).json()
        return body

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as err:
            raise ClientError(f"cannot reach the service at {self.url}: {err}") from err
        if response.is_error:
            raise _problem(response)
        return response


def _problem(response: httpx.Response) -> ClientError:
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = problem.get("detail") or response.text[:200] or response.reason_phrase
    return ClientError(f"{response.status_code} {detail}", status=response.status_code, problem=problem)


def parse_events(lines: Iterator[str]) -> Iterator[JobEvent]:
    """Server-sent events from text lines (comments and keep-alives skipped; data is JSON)."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield JobEvent(event, json.loads("\n".join(data)), event_id)
            event, data = "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id":
            event_id = value
    if data:
        yield JobEvent(event, json.loads("\n".join(data)), event_id)
