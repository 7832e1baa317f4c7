"""The REST routes: ``/v1`` (jobs and models, behind the tokens when any are set) and the probes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent

from service.errors import SchedulerUnavailableError
from service.http.auth import Caller, TokenAuth, current_caller, require_token
from service.http.events import job_events
from service.http.metrics import CONTENT_TYPE
from service.http.problems import problem_responses
from service.http.schemas import (
    MAX_BODY_BYTES,
    JobOut,
    JobPage,
    ModelList,
    ModelOut,
    decode_token,
    encode_token,
    model_out,
    parse_document,
)
from service.http.state import ServiceState
from service.store.jobs import JobRecord, JobState

PAGE_TOKEN_PATTERN = "^[0-9a-z]{0,12}$"  # every such token is a valid cursor; empty: the first page
STATE_PATTERN = "^(queued|running|succeeded|failed|cancelled)?$"
# The contract's example; it runs wherever data/em.zarr (raw) and models/net.pt exist under the root.
EXAMPLE_JOB: dict[str, Any] = {
    "kind": "inference",
    "input": {"path": "data/em.zarr", "dataset": "raw"},
    "model": {"torchscript": "models/net.pt"},
    "window": {"patch_size": [17, 129, 129], "overlap": 0.5, "blending": "gaussian", "batch_size": 4},
    "output": {"path": "out/pred.zarr", "dataset": "pred", "heads": [2], "activation": ["sigmoid"]},
}


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.pytc
    return state


State = Annotated[ServiceState, Depends(_state)]


Who = Annotated[Caller, Depends(current_caller)]


def _existing_job(job_id: str, state: State, caller: Who) -> JobRecord:
    """The job, if it is the caller's to see; another tenant's job is as unknown as no job."""
    return caller.check(state.store.get_job(job_id))


def v1_routes(auth: TokenAuth) -> APIRouter:
    # Without tokens there is no security requirement at all, and the OpenAPI document says so.
    router = APIRouter(prefix="/v1")
    if auth.enabled:
        router = APIRouter(
            prefix="/v1", dependencies=[Depends(require_token(auth))], responses=problem_responses(401)
        )

    schema = {"$ref": "#/components/schemas/JobDocument"}
    body_doc = {"content": {"application/json": {"schema": schema, "example": EXAMPLE_JOB}}}

    @router.post(
        "/jobs",
        status_code=202,
        responses=problem_responses(409, 413, 422, 503),
        openapi_extra={"requestBody": {**body_doc, "required": True}},
        summary="Submit a job; every check runs before anything is written",
    )
    async def submit(
        request: Request,
        response: Response,
        state: State,
        caller: Who,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobOut:
        doc = parse_document(await _read_body(request))
        record, created = await run_in_threadpool(state.submit, doc, idempotency_key, caller.owner)
        response.headers["Location"] = f"/v1/jobs/{record.id}"
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return state.render(record)

    @router.get("/jobs", responses=problem_responses(422), summary="A page of jobs, newest first")
    def list_jobs(
        state: State,
        caller: Who,
        job_state: Annotated[str | None, Query(alias="state", pattern=STATE_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        page_token: Annotated[str | None, Query(pattern=PAGE_TOKEN_PATTERN)] = None,
    ) -> JobPage:
        wanted = cast(JobState, job_state) if job_state else None  # ``state=`` (empty) means any
        records = state.store.list_jobs(wanted, limit + 1, decode_token(page_token), caller.owner_filter)
        more = len(records) > limit
        token = encode_token(records[limit - 1].seq) if more else None
        return JobPage(jobs=[state.render(r) for r in records[:limit]], next_page_token=token)

    @router.get("/jobs/{job_id}", responses=problem_responses(404), summary="One job")
    def get_job(record: Annotated[JobRecord, Depends(_existing_job)], state: State) -> JobOut:
        return state.render(record)

    @router.post(
        "/jobs/{job_id}/cancel",
        status_code=202,
        responses=problem_responses(404, 409),
        summary="Cancel a job; a queued one ends at once, a running one at its next task",
    )
    def cancel_job(record: Annotated[JobRecord, Depends(_existing_job)], state: State) -> JobOut:
        return state.render(state.manager.cancel(record.id))

    @router.delete(
        "/jobs/{job_id}",
        status_code=204,
        responses=problem_responses(404, 409),
        summary="Forget a finished job; what it wrote stays (409 while it is queued or running)",
    )
    def delete_job(record: Annotated[JobRecord, Depends(_existing_job)], state: State) -> Response:
        state.manager.delete(record.id)
        return Response(status_code=204)

    @router.get(
        "/jobs/{job_id}/events",
        response_class=EventSourceResponse,
        responses=problem_responses(404),
        summary="Server-sent events: `state` (the whole job) and `progress`, until the job ends",
    )
    async def job_stream(
        record: Annotated[JobRecord, Depends(_existing_job)], state: State
    ) -> AsyncIterator[ServerSentEvent]:
        render = partial(_render_json, state)
        async for event in job_events(record.id, state.store.get_job, render, state.feed):
            yield event

    @router.get("/models", summary="The model registry")
    def list_models(state: State) -> ModelList:
        return ModelList(models=[model_out(m) for m in state.models.list()])

    @router.get("/models/{name}", responses=problem_responses(404), summary="One registered model")
    def get_model(name: str, state: State) -> ModelOut:
        return model_out(state.models.get(name))

    return router


def probe_routes() -> APIRouter:
    router = APIRouter(tags=["probes"])

    @router.get("/livez", summary="Liveness: the process answers")
    async def livez() -> dict[str, str]:
        return {"status": "alive"}

    @router.get(
        "/readyz", responses=problem_responses(503), summary="Readiness: the database and Dask answer"
    )
    def readyz(state: State) -> dict[str, Any]:
        state.store.ping()
        workers = state.connection.workers()
        if workers is None:
            raise SchedulerUnavailableError(f"Dask is not connected: {state.connection.last_error}")
        return {"status": "ready", "database": "ok", "dask": "ok", "workers": workers}

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
        summary="Prometheus metrics",
    )
    def metrics(state: State) -> PlainTextResponse:
        counts = {str(s): n for s, n in state.store.count_by_state().items()}
        text = state.metrics.render(counts, state.connection.workers())
        return PlainTextResponse(text, media_type=CONTENT_TYPE)

    return router


def _render_json(state: ServiceState, record: JobRecord) -> dict[str, Any]:
    return state.render(record).model_dump(mode="json")


async def _read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"a job document is at most {MAX_BODY_BYTES} bytes")
    return body
