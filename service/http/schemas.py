"""What the REST API answers (the contract's job, page and model objects), and reading a request body.

A job is rendered the same for every kind: its progress is the one progress object
(:class:`service.progress.Progress`; a kind's own figures such as ``loss`` or ``voxels_done`` come
as further fields), ``target`` says what it writes and ``summary`` how a finished run ended.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.errors import SpecError
from service.store.jobs import JobState
from service.store.models import ModelRecord

MAX_BODY_BYTES = 1 << 20


class ProgressOut(BaseModel):
    """How far the job is, in its kind's unit of work (`steps` of an inference job, `iterations` of a
    training job). A kind may add figures of its own (an inference job `voxels_done`, a training job
    `loss` and `lr`)."""

    model_config = ConfigDict(extra="allow")

    done: int = 0
    total: int = 0
    unit: str = ""
    fraction: float = 0.0
    rate: float | None = Field(None, description="units per second in the current run")
    eta_seconds: float | None = None
    elapsed_seconds: float = 0.0


class ErrorOut(BaseModel):
    title: str
    detail: str


class JobLinks(BaseModel):
    job: str
    events: str
    cancel: str
    dashboard: str | None = Field(None, description="the Dask dashboard, when the scheduler has one")
    view: str | None = Field(None, description="a neuroglancer link to the job's data (GET it)")


class JobOut(BaseModel):
    id: str
    kind: str
    state: JobState
    spec: dict[str, Any] = Field(description="the job document as submitted")
    target: str | None = Field(None, description="what the job writes, e.g. `out/pred.zarr (pred)`")
    progress: ProgressOut
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorOut | None
    result: dict[str, Any] | None
    summary: list[str] | None = Field(None, description="how a succeeded job ended, in a few lines")
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


def model_out(model: ModelRecord) -> ModelOut:
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


def parse_document(body: bytes) -> dict[str, Any]:
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


def encode_token(seq: int) -> str:
    """An opaque cursor: the position (exclusive) where the next page starts, in base 36."""
    digits = ""
    while True:
        seq, rest = divmod(seq, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[rest] + digits
        if not seq:
            return digits


def decode_token(token: str | None) -> int | None:
    return int(token, 36) if token else None
