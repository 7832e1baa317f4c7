"""The REST service: ``create_app(settings)`` builds the FastAPI application.

Handlers are short: parse, call the store or the job manager off the event loop, answer with a
schema. Everything that can go wrong is a domain error mapped to problem+json in
:mod:`service.problems`. The lifespan opens the job store, connects Dask (an embedded local
cluster unless ``PYTC_SCHEDULER`` names one) and starts the job manager, which picks up every job
an earlier process left queued or running.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any, cast

import anyio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import HTTPException
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from service.auth import require_token
from service.dask_connection import DaskConnection
from service.errors import SchedulerUnavailableError
from service.events import ChangeFeed, job_events
from service.jobs import JobManager, ManagerConfig, ModelInspector, admit_job, submit_job
from service.metrics import CONTENT_TYPE, ServiceMetrics
from service.problems import add_problem_schema, install_problem_handlers, problem_responses
from service.runner import software_version
from service.settings import Settings
from service.spec import InferenceDocument
from service.store import JobRecord, JobState, JobStore, ModelRecord, SqliteJobStore
from service.training_spec import TrainingDocument
from workers.errors import SpecError

MAX_BODY_BYTES = 1 << 20
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


class ProgressOut(BaseModel):
    done: int = 0
    total: int = 0
    unit: str = "blocks"
    fraction: float = 0.0
    rate: float | None = Field(None, description="units per second in the current run")
    eta_seconds: float | None = None
    voxels_done: int = 0
    voxels_total: int = 0
    elapsed_seconds: float = 0.0
    loss: float | None = Field(None, description="training jobs: the recent mean training loss")
    lr: float | None = Field(None, description="training jobs: the current learning rate")


class ErrorOut(BaseModel):
    title: str
    detail: str


class JobLinks(BaseModel):
    job: str
    events: str
    cancel: str
    dashboard: str | None = Field(None, description="the Dask dashboard, when the scheduler has one")


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    spec: dict[str, Any] = Field(description="the job document as submitted")
    progress: ProgressOut
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorOut | None
    result: dict[str, Any] | None
    links: JobLinks


class JobPage(BaseModel):
    jobs: list[JobOut]
    next_page_token: str | None


class ModelOut(BaseModel):
    name: str
    kind: str
    path: str | None
    architecture: str | None
    config: dict[str, Any]
    checkpoint: str | None
    sha256: str | None
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelOut]


@dataclass
class ServiceState:
    """What the handlers reach: built by the lifespan, kept on ``app.state.pytc``."""

    settings: Settings
    store: JobStore
    connection: DaskConnection
    inspector: ModelInspector
    manager: JobManager
    feed: ChangeFeed
    metrics: ServiceMetrics

    def submit(self, doc: Mapping[str, Any], idempotency_key: str | None) -> tuple[JobRecord, bool]:
        admit = partial(
            admit_job,
            roots=self.settings.data_roots,
            resolve_model=self.manager.resolve_model,
            inspector=self.inspector,
        )
        record, created = submit_job(doc, idempotency_key, store=self.store, admit=admit)
        if created:
            self.feed.bump(record.id)
            self.manager.wake()
        return record, created

    def render(self, record: JobRecord) -> JobOut:
        base = f"/v1/jobs/{record.id}"
        return JobOut(
            id=record.id,
            kind=record.kind,
            state=record.state,
            spec=record.spec,
            progress=ProgressOut.model_validate(record.progress or {}),
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            error=ErrorOut.model_validate(record.error) if record.error else None,
            result=record.result,
            links=JobLinks(
                job=base,
                events=f"{base}/events",
                cancel=f"{base}/cancel",
                dashboard=self.connection.dashboard_link,
            ),
        )


def open_state(settings: Settings, store: JobStore | None = None) -> ServiceState:
    store = store if store is not None else SqliteJobStore(settings.database_path)
    connection = DaskConnection(
        settings.scheduler,
        local_workers=settings.local_workers,
        threads_per_worker=settings.local_threads_per_worker,
        worker_niceness=settings.local_worker_niceness,
    )
    feed, metrics = ChangeFeed(), ServiceMetrics()
    config = ManagerConfig(
        tuple(settings.data_roots), settings.max_concurrent_jobs, settings.progress_interval_s
    )
    manager = JobManager(store, connection, config, feed, metrics)
    inspector = ModelInspector(connection, settings.model_check_timeout_s)
    return ServiceState(settings, store, connection, inspector, manager, feed, metrics)


def create_app(settings: Settings, *, store: JobStore | None = None) -> FastAPI:
    """The application; nothing is opened or started until its lifespan begins."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(open_state, settings, store)
        app.state.pytc = state
        state.connection.start()
        await anyio.to_thread.run_sync(state.manager.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.manager.stop)
            await anyio.to_thread.run_sync(state.connection.close)
            state.store.close()

    app = FastAPI(
        title="pytc-service",
        version=software_version(),
        description="Exact chunked 3D inference over zarr/N5 volumes, run on Dask.",
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    app.include_router(_v1_routes(settings.api_tokens))
    app.include_router(_probe_routes())
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.pytc
    return state


State = Annotated[ServiceState, Depends(_state)]


def _existing_job(job_id: str, state: State) -> JobRecord:
    return state.store.get_job(job_id)


def _v1_routes(tokens: Sequence[str]) -> APIRouter:
    # Without tokens there is no security requirement at all, and the OpenAPI document says so.
    router = APIRouter(prefix="/v1")
    if tokens:
        router = APIRouter(
            prefix="/v1", dependencies=[Depends(require_token(tokens))], responses=problem_responses(401)
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
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> JobOut:
        doc = _parse_document(await _read_body(request))
        record, created = await run_in_threadpool(state.submit, doc, idempotency_key)
        response.headers["Location"] = f"/v1/jobs/{record.id}"
        if not created:
            response.headers["Idempotent-Replayed"] = "true"
        return state.render(record)

    @router.get("/jobs", responses=problem_responses(422), summary="A page of jobs, newest first")
    def list_jobs(
        state: State,
        job_state: Annotated[str | None, Query(alias="state", pattern=STATE_PATTERN)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        page_token: Annotated[str | None, Query(pattern=PAGE_TOKEN_PATTERN)] = None,
    ) -> JobPage:
        wanted = cast(JobState, job_state) if job_state else None  # ``state=`` (empty) means any
        records = state.store.list_jobs(wanted, limit + 1, _decode_token(page_token))
        more = len(records) > limit
        token = _encode_token(records[limit - 1].seq) if more else None
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
    def cancel_job(job_id: str, state: State) -> JobOut:
        return state.render(state.manager.cancel(job_id))

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
        return ModelList(models=[_model_out(m) for m in state.store.list_models()])

    @router.get("/models/{name}", responses=problem_responses(404), summary="One registered model")
    def get_model(name: str, state: State) -> ModelOut:
        return _model_out(state.store.get_model(name))

    return router


def _probe_routes() -> APIRouter:
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


def _model_out(model: ModelRecord) -> ModelOut:
    ref = model.ref
    return ModelOut(
        name=model.name,
        kind=ref.kind,
        path=ref.path,
        architecture=ref.architecture,
        config=ref.config_dict(),
        checkpoint=ref.checkpoint,
        sha256=model.sha256,
        created_at=model.created_at,
    )


async def _read_body(request: Request) -> bytes:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise HTTPException(413, f"a job document is at most {MAX_BODY_BYTES} bytes")
    return body


def _parse_document(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object: no duplicate keys, no NaN, no lone surrogates."""
    try:
        doc = json.loads(body, object_pairs_hook=_unique_keys, parse_constant=_no_constants)
    except (ValueError, RecursionError) as err:
        raise SpecError("body", f"not a JSON job document: {err}") from None
    if not isinstance(doc, dict):
        raise SpecError("body", f"a job document is a JSON object, got {type(doc).__name__}")
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise SpecError("body", f"a string holds an invalid character: {err.reason}") from None
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number a job may hold")


def _encode_token(seq: int) -> str:
    """An opaque cursor: the position (exclusive) where the next page starts, in base 36."""
    digits = ""
    while True:
        seq, rest = divmod(seq, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if not seq:
            return digits


def _decode_token(token: str | None) -> int | None:
    return int(token, 36) if token else None


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        add_problem_schema(schema)
        schema["components"]["schemas"].update(_document_schemas())
        app.openapi_schema = schema
    return app.openapi_schema


def _document_schemas() -> dict[str, Any]:
    """The job document's schema (``JobDocument``: an inference or a training document), with the
    shorthands the parsers also accept."""
    ref = "#/components/schemas/"
    inference = InferenceDocument.model_json_schema(ref_template=ref + "{model}")
    defs: dict[str, Any] = inference.pop("$defs", {})
    inputs = defs["InputModel"]["properties"]
    inputs["normalize"] = {
        "anyOf": [{"enum": ["auto", "none"]}, {"$ref": ref + "NormalizeModel"}, {"type": "null"}]
    }
    overlap = defs["WindowModel"]["properties"]["overlap"]
    overlap["anyOf"] = [{"type": "number", "minimum": 0, "exclusiveMaximum": 1}, *overlap["anyOf"]]
    activation = defs["OutputModel"]["properties"]["activation"]
    activation["anyOf"] = [{"enum": ["sigmoid", "softmax", "tanh", "none"]}, *activation["anyOf"]]

    training = TrainingDocument.model_json_schema(ref_template=ref + "{model}")
    for name, definition in training.pop("$defs", {}).items():
        if name in defs and defs[name] != definition:
            raise RuntimeError(f"two job document sections are both named {name!r}")  # a coding error
        defs[name] = definition
    kinds = defs["TargetModel"]["properties"]["kind"]
    targets = training["properties"]["targets"]
    targets["items"] = {"anyOf": [kinds, targets["items"]]}  # [binary] or [{kind: binary, ...}]
    defs["TrainingDataModel"]["properties"]["normalize"] = {
        "anyOf": [{"enum": ["auto", "none"]}, {"$ref": ref + "NormalizeModel"}, {"type": "null"}]
    }
    for section, name, shorthand in (
        ("SolverModel", "schedule", {"enum": ["constant", "step", "warmup_cosine"]}),
        ("SamplingModel", "reject", {"const": False}),
        ("SamplingModel", "augment", {"type": ["boolean", "null"]}),
    ):
        props = defs[section]["properties"]
        prop = props[name]
        props[name] = {"anyOf": [shorthand, *prop.get("anyOf", [prop])]}
    document = {
        "title": "JobDocument",
        "description": "A job document (../shared/CONTRACT.md): inference, or kind: training.",
        "anyOf": [{"$ref": ref + "InferenceDocument"}, {"$ref": ref + "TrainingDocument"}],
    }
    return {**defs, "InferenceDocument": inference, "TrainingDocument": training, "JobDocument": document}
