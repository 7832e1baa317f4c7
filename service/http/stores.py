"""Job stores served read-only to viewers: ``GET /stores/<token>/<path in the store>``.

A viewer (neuroglancer, in a browser) cannot send a bearer header; it holds a signed link instead
(:mod:`service.http.signing`): the token names one store (a container a job named) and its expiry.
The service signs links only for stores that jobs name, inside the data roots
(:mod:`service.http.viewer`); here every request is checked again:

- the token must verify (signature, scope, expiry): else 403;
- the path inside the store is relative, of plain names (no ``..``, ``.``, empty or absolute
  parts, no backslash or NUL): else 404;
- the file, symlinks followed, must lie inside the store, and the store inside a data root: else
  404 (a symlink out of the store leads nowhere);
- only regular files are served: a directory is a 404, never a listing.

Files are served with byte ranges (``Range``: neuroglancer reads shards by range), ``HEAD``, and
CORS for the viewer's origin (the service's own, ``PYTC_NEUROGLANCER_URL``'s, ``PYTC_CORS_ORIGINS``).
Missing files are 404 (a zarr chunk never written reads as its fill value).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from service.documents.sections import resolved_roots
from service.http.signing import STORE_SCOPE, BadSignature, Signer
from service.settings import Settings

STORES_PREFIX = "/stores"
EXPOSED = "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified"
MEDIA_TYPES = {".json": "application/json", ".zattrs": "application/json", ".zarray": "application/json",
               ".zgroup": "application/json"}  # fmt: skip


def viewer_origins(settings: Settings) -> frozenset[str]:
    """The origins whose pages may read stores: ``PYTC_NEUROGLANCER_URL``'s and ``PYTC_CORS_ORIGINS``."""
    origins = {o.rstrip("/") for o in settings.cors_origins}
    if settings.neuroglancer_url:
        parts = urlsplit(settings.neuroglancer_url)
        if parts.scheme and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return frozenset(origins)


def clean_relative(rel: str) -> str | None:
    """``rel`` when it is a relative path of plain names; None otherwise."""
    if not rel or rel.startswith("/") or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return None
    return rel


def confined_file(store: str, rel: str, roots: Sequence[Path]) -> Path | None:
    """The regular file ``rel`` in ``store``, symlinks followed, when it and the store stay inside
    ``roots``; None otherwise (missing, a directory, outside)."""
    clean = clean_relative(rel)
    if clean is None:
        return None
    try:
        root = Path(store).resolve(strict=True)
        target = (root / clean).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not any(root.is_relative_to(r) for r in roots) or not target.is_relative_to(root):
        return None
    return target


def store_routes(settings: Settings) -> APIRouter:
    router = APIRouter(prefix=STORES_PREFIX, tags=["viewing"], include_in_schema=False)
    roots = resolved_roots(settings.data_roots)
    origins = viewer_origins(settings)

    def cors(request: Request, response: Response) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = EXPOSED
            response.headers["Vary"] = "Origin"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @router.api_route("/{token}/{rel:path}", methods=["GET", "HEAD"])
    def read_store(token: str, rel: str, request: Request) -> Response:
        signer: Signer = request.app.state.signer
        try:
            grant = signer.verify(token, STORE_SCOPE)
        except BadSignature as err:
            return cors(request, Response(f"refused: {err}\n", 403, media_type="text/plain"))
        target = confined_file(grant.subject, rel, roots)
        info = _regular(target)
        if target is None or info is None:
            return cors(request, Response("not found\n", 404, media_type="text/plain"))
        media = MEDIA_TYPES.get(target.suffix or target.name, "application/octet-stream")
        response = FileResponse(target, stat_result=info, media_type=media)
        response.headers["Cache-Control"] = "private, no-cache"
        return cors(request, response)

    @router.options("/{token}/{rel:path}")
    def preflight(token: str, rel: str, request: Request) -> Response:
        response = cors(request, Response(status_code=204))
        if "Access-Control-Allow-Origin" in response.headers:
            response.headers["Access-Control-Allow-Methods"] = "GET, HEAD, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Range"
            response.headers["Access-Control-Max-Age"] = "600"
        return response

    return router


def _regular(path: Path | None) -> os.stat_result | None:
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None
