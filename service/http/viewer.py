"""Viewing jobs: the neuroglancer client served by the app, view links and slice previews.

- ``/viewer/`` serves the neuroglancer client shipped in the ``neuroglancer`` package's wheel
  (``neuroglancer/static/client``), so a lab without internet still gets a viewer. That build is the
  one neuroglancer's Python server serves: it wants its page under ``.../v/<token>/`` and opens an
  event stream beside it (``.../events/<token>``), answered here with a stream that stays quiet; the
  state comes from the link's fragment.
- ``GET /v1/jobs/{id}/view``: a link opening neuroglancer (``PYTC_NEUROGLANCER_URL``, else the one
  above) on the job's input, predictions and labels, each read over a signed store link
  (:mod:`service.http.stores`) valid ``PYTC_VIEW_LINK_TTL_S`` seconds.
- ``GET /v1/view?path=&dataset=``: the same for an output alone (``pytc view OUTPUT``), inside the
  data roots; the job that wrote it comes from its attributes.
- ``GET /v1/jobs/{id}/preview?layer=&z=&channel=``: one plane of a layer as a PNG
  (:mod:`service.viewing.previews`).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from pydantic import BaseModel, Field

from service.documents.sections import resolved_roots
from service.errors import JobNotFoundError
from service.http.auth import Caller, TokenAuth, require_token
from service.http.problems import problem_responses
from service.http.routes import State, Who, _existing_job
from service.http.signing import STORE_SCOPE, Signer
from service.http.stores import STORES_PREFIX
from service.kinds.base import Target
from service.settings import Settings
from service.store.jobs import JobRecord, JobStore
from service.viewing.previews import OutsideError, preview_png
from service.viewing.views import View, build_view, output_view

VIEWER_PATH = "/viewer/v/pytc/"
KEEPALIVE_S = 20.0
OWNERSHIP_SCAN = 20_000  # jobs looked at to tell whose output a path is


class LayerOut(BaseModel):
    name: str
    type: str = Field(description="image or segmentation")
    source: str = Field(description="the store path and the array or image group inside it")
    shape: list[int]
    voxel_size_nm: list[float]
    levels: int = Field(description="pyramid levels (1: none)")
    channels: int | None


class ViewOut(BaseModel):
    url: str = Field(description="neuroglancer opening the job's layers; valid until expires_at")
    neuroglancer: str = Field(description="the neuroglancer page the link opens")
    expires_at: datetime
    layers: list[LayerOut]
    planes: int = Field(description="z planes of the view's grid (the first layer's): previews take z in it")
    notes: list[str] = Field(description="what could not be shown, and why")


def neuroglancer_client_dir() -> Path | None:
    """The built client inside the installed ``neuroglancer`` package (found without importing it)."""
    spec = importlib.util.find_spec("neuroglancer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        client = Path(location) / "static" / "client"
        if (client / "index.html").is_file():
            return client
    return None


def viewer_routes() -> APIRouter:
    router = APIRouter(prefix="/viewer", tags=["viewing"], include_in_schema=False)
    client = neuroglancer_client_dir()
    files = {p.name: p for p in client.iterdir() if p.is_file()} if client is not None else {}

    @router.get("/")
    def viewer_root() -> RedirectResponse:
        return RedirectResponse(VIEWER_PATH)

    @router.get("/v/{tag}/{name:path}")
    def viewer_file(tag: str, name: str) -> Response:
        path = files.get(name or "index.html")
        if path is None:
            return Response("not found\n", 404, media_type="text/plain")
        media = "application/wasm" if path.suffix == ".wasm" else None
        return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @router.get("/events/{tag}")
    async def viewer_events(tag: str) -> StreamingResponse:
        async def quiet() -> AsyncIterator[bytes]:
            while True:  # ends when the page goes away (the server cancels the stream)
                yield b": keep-alive\n\n"
                await asyncio.sleep(KEEPALIVE_S)

        return StreamingResponse(
            quiet(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    return router


def view_routes(auth: TokenAuth, settings: Settings) -> APIRouter:
    deps = [Depends(require_token(auth))] if auth.enabled else []
    router = APIRouter(prefix="/v1", dependencies=deps, responses=problem_responses(401) if deps else None)
    roots = resolved_roots(settings.data_roots)

    def signed(request: Request) -> tuple[Any, str, datetime]:
        signer: Signer = request.app.state.signer
        base = str(request.base_url)
        expiry: list[int] = []

        def sign(store: Path) -> str:
            token, expires = signer.sign(str(store), STORE_SCOPE, settings.view_link_ttl_s)
            expiry.append(expires)
            return f"{base}{STORES_PREFIX.strip('/')}/{token}/"

        neuroglancer = settings.neuroglancer_url or f"{base}{VIEWER_PATH.lstrip('/')}"
        when = datetime.fromtimestamp(signer.sign("", STORE_SCOPE, settings.view_link_ttl_s)[1], UTC)
        return sign, neuroglancer, when

    @router.get(
        "/jobs/{job_id}/view",
        responses=problem_responses(404),
        summary="A neuroglancer link to the job's data",
    )
    def job_view(record: Annotated[JobRecord, Depends(_existing_job)], request: Request) -> ViewOut:
        sign, neuroglancer, when = signed(request)
        view = build_view(record.kind, record.spec, roots, sign)
        return _out(view, neuroglancer, when)

    @router.get("/view", responses=problem_responses(404, 422), summary="A neuroglancer link to an output")
    def path_view(
        request: Request,
        state: State,
        caller: Who,
        path: Annotated[str, Query(max_length=4096)],
        dataset: Annotated[str | None, Query(max_length=1024)] = None,
    ) -> ViewOut:
        sign, neuroglancer, when = signed(request)
        view = output_view(path, dataset, roots, sign)
        stores = {
            la.source.store for la in view.layers if la.source.name in ("output", "prediction", "labels")
        }
        if not all(_may_view(state.store, caller, store) for store in stores):
            raise JobNotFoundError(f"no output at {path} that this token may view")  # as if absent
        return _out(view, neuroglancer, when)

    @router.get(
        "/jobs/{job_id}/preview",
        response_class=Response,
        responses={**problem_responses(404), 200: {"content": {"image/png": {}}}},
        summary="One z plane of a layer of the job, as a PNG",
    )
    def job_preview(
        record: Annotated[JobRecord, Depends(_existing_job)],
        layer: Annotated[str, Query(max_length=200)],
        z: Annotated[int, Query(ge=0)] = 0,
        channel: Annotated[int, Query(ge=0)] = 0,
    ) -> Response:
        view = build_view(record.kind, record.spec, roots)
        found = view.layer(layer)
        if found is None:
            raise JobNotFoundError(f"job {record.id} has no layer {layer!r} to preview (yet)")
        try:
            png = preview_png(found, z, view.global_nm, channel)
        except OutsideError as err:
            raise JobNotFoundError(str(err)) from err
        return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})

    return router


def _may_view(store: JobStore, caller: Caller, container: Path) -> bool:
    """Whether ``caller`` may view an output container: an admin (or an open service) always; a
    tenant when one of its own jobs writes there, or no job of another tenant does (a ``pytc run``
    output). The newest :data:`OWNERSHIP_SCAN` jobs are looked at."""
    if caller.sees_all:
        return True
    mine = theirs = False
    before: int | None = None
    for _ in range(OWNERSHIP_SCAN // 500):
        records = store.list_jobs(None, 500, before, None)
        for record in records:
            if record.output_key and Path(Target.from_key(record.output_key).path) == container:
                mine, theirs = mine or record.owner == caller.owner, theirs or record.owner != caller.owner
        if len(records) < 500:
            break
        before = records[-1].seq
    return mine or not theirs


def _out(view: View, neuroglancer: str, when: datetime) -> ViewOut:
    layers = [
        LayerOut(
            name=la.source.name,
            type=la.source.layer_type,
            source=str(la.source.store / la.source.node),
            shape=list(la.base.shape),
            voxel_size_nm=list(la.base.scale_nm),
            levels=len(la.levels),
            channels=la.channels,
        )
        for la in view.layers
    ]
    planes = view.layers[0].base.shape[-3] if view.layers else 0
    url = view.url(neuroglancer) if view.state.get("layers") else neuroglancer
    return ViewOut(
        url=url, neuroglancer=neuroglancer, expires_at=when, layers=layers, planes=planes, notes=view.notes
    )
