"""The REST service: ``create_app(settings)`` builds the FastAPI application.

The lifespan opens the job store and the model registry, connects Dask (an embedded local cluster
unless ``PYTC_SCHEDULER`` names one) and starts the job manager, which picks up every job an earlier
process left queued or running. Handlers (:mod:`service.http.routes`) are short: parse, call the
store or the job manager off the event loop, answer with a schema; everything that can go wrong is
a domain error mapped to problem+json in :mod:`service.http.problems`. Jobs of every kind go
through the kinds registry (:mod:`service.kinds`); the OpenAPI document's ``JobDocument`` is
generated from the documents of the kinds it knows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline

from service.documents.schema import document_schemas
from service.http.auth import TokenAuth
from service.http.origins import BrowserGuard
from service.http.page import page_routes
from service.http.problems import add_problem_schema, install_problem_handlers
from service.http.routes import probe_routes, v1_routes
from service.http.signing import Signer, load_secret
from service.http.state import open_state
from service.http.stores import store_routes
from service.http.viewer import view_routes, viewer_routes
from service.kinds import documents, register_kinds
from service.settings import Settings
from service.store.jobs import JobStore
from service.store.models import ModelRegistry
from workers.version import package_version


def create_app(
    settings: Settings, *, store: JobStore | None = None, models: ModelRegistry | None = None
) -> FastAPI:
    """The application; nothing is opened or started until its lifespan begins."""
    register_kinds(settings.job_kinds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await anyio.to_thread.run_sync(open_state, settings, store, models)
        app.state.signer = Signer(
            await anyio.to_thread.run_sync(load_secret, settings.state_dir, settings.view_secret)
        )
        app.state.pytc = state
        state.connection.start()
        await anyio.to_thread.run_sync(state.manager.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(state.manager.stop)
            await anyio.to_thread.run_sync(state.connection.close)
            state.store.close()
            state.models.close()

    # Swagger UI and ReDoc with their scripts served by the app itself (fastapi-offline), not
    # from a CDN: a lab cluster without internet access still gets readable API docs.
    app = FastAPIOffline(
        docs_url="/docs",
        redoc_url="/redoc",
        title="pytc-service",
        version=package_version(),
        description=(
            "Exact out-of-core inference and training of PyTorch Connectomics models over zarr, N5 "
            "and HDF5 volumes, run on Dask. Submit a job document (`POST /v1/jobs`), follow it "
            "(`GET /v1/jobs/{id}`, or its event stream), cancel it. Every error is "
            "`application/problem+json`; an invalid job names the field to change."
        ),
        lifespan=lifespan,
    )
    install_problem_handlers(app)
    # Starlette runs the middleware added last first: CORS answers preflights before the guard.
    app.add_middleware(BrowserGuard, allowed_origins=settings.cors_origins)
    if settings.cors_origins:  # CORS stays off unless a lab names the pages that may call the API
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "Range"],  # Range: viewers
        )
    app.state.auth = TokenAuth(settings.api_tokens, settings.admin_tokens)  # who a request is
    app.include_router(v1_routes(app.state.auth))
    app.include_router(probe_routes())
    # Viewing: the page at /, signed store links, the neuroglancer client, view links and previews.
    app.include_router(view_routes(app.state.auth, settings))
    app.include_router(store_routes(settings))
    app.include_router(viewer_routes())
    app.include_router(page_routes(app.state.auth, settings))
    app.openapi = partial(_openapi, app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        add_problem_schema(schema)
        schema["components"]["schemas"].update(document_schemas(documents()))
        app.openapi_schema = schema
    return app.openapi_schema
