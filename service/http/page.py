"""The web page: ``/`` (plain HTML, CSS and a small script in ``service/http/web/``, no build step and
no CDN) and its session.

The page itself holds no data: its script calls ``/v1`` like any client. Where tokens are set, it
asks for one once (``POST /login`` with JSON ``{"token": ...}``, so the token never appears in a
URL) and the service answers with an HttpOnly, SameSite=Strict cookie holding a value signed for
that token's owner (:mod:`service.http.signing`), valid ``PYTC_VIEW_LINK_TTL_S``; ``/v1`` accepts the
cookie as it accepts the bearer header (:func:`service.http.auth.session_caller`). ``POST /logout``
clears it. A cross-site page cannot use the cookie: the browser does not send a SameSite=Strict
cookie from another site, and :mod:`service.http.origins` refuses its posts anyway.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field

from service.http.auth import SESSION_COOKIE, TokenAuth, session_caller
from service.http.signing import SESSION_SCOPE, Signer
from service.settings import Settings

WEB_DIR = Path(__file__).with_name("web")
ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # Everything from this service (neuroglancer opens in its own tab); no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; frame-ancestors 'none'"
    ),
}


class Login(BaseModel):
    token: str = Field(min_length=1, max_length=4096)


def page_routes(auth: TokenAuth, settings: Settings) -> APIRouter:
    router = APIRouter(tags=["page"], include_in_schema=False)

    @router.get("/")
    def index() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)

    @router.get("/ui/{name}")
    def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response("not found\n", 404, media_type="text/plain")
        return FileResponse(WEB_DIR / name, media_type=ASSETS[name], headers=SECURITY_HEADERS)

    @router.post("/login")
    def login(body: Login, request: Request) -> Response:
        if not auth.enabled:
            return JSONResponse({"auth": False})
        caller = auth.identify(body.token)  # AuthenticationError: a 401 problem
        signer: Signer = request.app.state.signer
        value, _ = signer.sign(str(caller.owner), SESSION_SCOPE, settings.view_link_ttl_s)
        response = JSONResponse({"auth": True, "admin": caller.sees_all})
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=int(settings.view_link_ttl_s),
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @router.post("/logout")
    def logout() -> Response:
        response = JSONResponse({"auth": auth.enabled})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @router.get("/session")
    def session(request: Request) -> dict[str, Any]:
        caller = session_caller(request)
        return {"auth": auth.enabled, "logged_in": caller is not None or not auth.enabled}

    return router
