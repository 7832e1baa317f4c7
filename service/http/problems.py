"""Every error answer is ``application/problem+json`` (RFC 9457), from one place.

Domain code raises its own errors (:mod:`service.errors`); the handlers here map them to statuses:
an invalid job 422 (with ``errors``: each field location and why), an existing output or a reused
idempotency key 409, an unknown job 404, a missing token 401, no Dask or a failing job database
503. FastAPI's own request validation, unknown routes and methods get the same shape, and anything
unexpected a 500 that names a log reference and nothing of the internals.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import (
    AuthenticationError,
    ConflictError,
    IdempotencyKeyReusedError,
    JobActiveError,
    JobDatabaseError,
    JobFinishedError,
    JobNotFoundError,
    ModelNotRegisteredError,
    OutputInUseError,
    PathOutsideRootsError,
    ProbesBusyError,
    SchedulerUnavailableError,
)
from workers.errors import OutputExistsError, SpecError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "urn:pytc:problem:"
RETRY_AFTER_S = 5


class FieldProblem(BaseModel):
    loc: str  # the dotted field of the job document (``window.patch_size``) or ``query.limit``
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details; `errors` lists every invalid field of a job or request."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None


def problem_response(
    request: Request,
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    errors: Sequence[tuple[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind if kind else "about:blank",
        "title": title or _phrase(status),
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors:
        body["errors"] = [{"loc": loc, "msg": msg} for loc, msg in errors]
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


async def _spec_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, SpecError)  # registered for SpecError only
    if isinstance(exc, OutputExistsError):
        status, kind, title = 409, "output-exists", "The output exists"
    elif isinstance(exc, PathOutsideRootsError):
        status, kind, title = 422, "path-outside-roots", "A path is outside the data roots"
    else:
        status, kind, title = 422, "invalid-job", "The job is invalid"
    return problem_response(request, status, str(exc), kind=kind, title=title, errors=exc.errors)


_CONFLICTS: dict[type[Exception], tuple[str, str]] = {
    IdempotencyKeyReusedError: ("idempotency-key-reused", "The idempotency key was used with another body"),
    OutputInUseError: ("output-in-use", "Another job writes this output"),
    JobFinishedError: ("job-finished", "The job already ended"),
    JobActiveError: ("job-active", "The job is queued or running"),
}


async def _conflict(request: Request, exc: Exception) -> JSONResponse:
    kind, title = _CONFLICTS.get(type(exc), ("conflict", "Conflict"))
    return problem_response(request, 409, str(exc), kind=kind, title=title)


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    kind = "model-not-found" if isinstance(exc, ModelNotRegisteredError) else "job-not-found"
    return problem_response(request, 404, str(exc), kind=kind)


async def _unauthenticated(request: Request, exc: Exception) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="pytc"'}
    return problem_response(request, 401, str(exc), kind="unauthenticated", headers=headers)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(exc, ProbesBusyError):  # the workers are there; the service's model checks are all taken
        title = "Every model check of the service is taken"
        return problem_response(
            request, 503, str(exc), kind="model-checks-busy", title=title, headers=headers
        )
    return problem_response(request, 503, str(exc), kind="dask-unavailable", headers=headers)


async def _database_failed(request: Request, exc: Exception) -> JSONResponse:
    """The job database failed (damaged, a disk error, locked too long): the service's fault, and
    one an operator can act on, so the answer says which file, not a 500 with a log reference."""
    headers = {"Retry-After": str(RETRY_AFTER_S)}
    return problem_response(
        request, 503, str(exc), kind="job-database", title="The job database is unavailable", headers=headers
    )


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [(_dotted(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in exc.errors()]
    detail = "; ".join(f"{loc}: {msg}" for loc, msg in errors) or "invalid request"
    return problem_response(request, 422, detail, kind="invalid-request", errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no such resource: {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {headers['Allow']}"
    return problem_response(request, exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route of this path answers (Starlette names only the first route's)."""
    allowed = set()
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in request.app.router.routes):
            allowed.add(method)
    return ", ".join(sorted(allowed))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    reference = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s %s", reference, request.method, request.url.path, exc_info=exc)
    detail = f"the service failed unexpectedly; the log holds the details under reference {reference}"
    return problem_response(request, 500, detail, kind="internal")


def _dotted(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc)


def install_problem_handlers(app: FastAPI) -> None:
    """Map every error to a problem+json answer. Order does not matter: Starlette picks the most
    specific class registered for an exception."""
    app.add_exception_handler(SpecError, _spec_error)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(JobNotFoundError, _not_found)
    app.add_exception_handler(ModelNotRegisteredError, _not_found)
    app.add_exception_handler(AuthenticationError, _unauthenticated)
    app.add_exception_handler(SchedulerUnavailableError, _unavailable)
    app.add_exception_handler(JobDatabaseError, _database_failed)
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, and ``default`` for any other, as problems."""
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    responses: dict[int | str, dict[str, Any]] = {
        status: {"description": _phrase(status), "content": content} for status in statuses
    }
    responses["default"] = {"description": "Any other error, as problem details", "content": content}
    return responses


def add_problem_schema(openapi: dict[str, Any]) -> None:
    """Put :class:`Problem` (referenced by :func:`problem_responses`) into the components."""
    schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["Problem"] = schema
