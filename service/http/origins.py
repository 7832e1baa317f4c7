"""Browsers and the API: a web page of another origin cannot make a visitor's browser act on it.

Without tokens (the default) the API trusts whoever reaches it, and a browser reaches it for any
page it opens: a page of another site can have it send a "simple" request, one that needs no CORS
preflight (a form post, ``text/plain``), and the browser sends it before it asks whether the page may
read the answer. So, for every request that changes something (``POST``, ``PUT``, ``PATCH``,
``DELETE``):

- a request whose ``Origin`` is neither this service's own nor one of the configured origins
  (``PYTC_CORS_ORIGINS``) is refused, 403: browsers name the page's origin on such requests, and
  programs (``pytc``, ``httpx``, ``curl``) do not send the header at all;
- a body of a type a browser may post cross-origin without a preflight (``text/plain``, forms) is
  refused, 415: the API takes JSON.

CORS itself stays off unless origins are configured; then Starlette's ``CORSMiddleware`` answers
their preflights (see :func:`service.http.app.create_app`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.problems import PROBLEM_JSON, PROBLEM_TYPE

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The media types a browser sends cross-origin without a CORS preflight (the Fetch standard).
SIMPLE_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})


class BrowserGuard:
    """ASGI middleware applying the two rules of the module docstring."""

    def __init__(self, app: ASGIApp, allowed_origins: Sequence[str] = ()) -> None:
        self.app = app
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in UNSAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self.allowed | {_own_origin(scope, headers)}:
            await _problem(
                scope, send, 403, "cross-origin-refused", "A request from another origin was refused",
                f"{scope['method']} from a page of {origin} is refused: this service only answers its "
                "own pages, programs, and the origins named in PYTC_CORS_ORIGINS",
            )  # fmt: skip
            return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type in SIMPLE_TYPES:
            await _problem(
                scope, send, 415, "unsupported-media-type", "The body must be JSON",
                f"a body of type {media_type} is refused (a browser can send it from any page); "
                "send JSON with Content-Type: application/json",
            )  # fmt: skip
            return
        await self.app(scope, receive, send)


def _own_origin(scope: Scope, headers: Headers) -> str:
    host = headers.get("host")
    if host is None:
        server = scope.get("server") or ("", None)
        host = f"{server[0]}:{server[1]}" if server[1] else str(server[0])
    return f"{scope.get('scheme', 'http')}://{host}".rstrip("/")


async def _problem(scope: Scope, send: Send, status: int, kind: str, title: str, detail: str) -> None:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE + kind,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": scope.get("path", ""),
    }
    data = json.dumps(body).encode()
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
