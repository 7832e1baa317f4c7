"""Bearer tokens for ``/v1`` when ``PYTC_API_TOKENS`` or ``PYTC_ADMIN_TOKENS`` is set; the probes
stay open. Each token is a tenant: its jobs are its own. The web page logs in once with a token and
then holds a signed session cookie instead (:data:`SESSION_COOKIE`), which ``/v1`` accepts too.

Tokens are compared in constant time (``hmac.compare_digest``), and against every configured token
whatever the outcome, so the time taken says nothing about which token nearly matched.

A job is stored with its owner, :func:`token_owner` of the token that submitted it: a fingerprint
(a prefix of the token's SHA-256), stable across restarts and not the secret itself, so the database
and the logs never hold a token. A caller sees, reads, follows and cancels its own jobs only; another
owner's job answers 404 exactly as an unknown id does, so ids are not revealed. An admin token
(``PYTC_ADMIN_TOKENS``) sees and acts on every job, including the jobs recorded without an owner
(submitted while the service ran without tokens, or before jobs had owners). Without any token the
service is open as it always was: no owners, everyone sees everything.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from service.errors import AuthenticationError, JobNotFoundError
from service.http.signing import SESSION_SCOPE, BadSignature, Signer
from service.store.jobs import JobRecord

# auto_error=False: a missing header is ours to answer (problem+json 401, not FastAPI's 403).
_bearer = HTTPBearer(
    auto_error=False, description="one of the tokens in PYTC_API_TOKENS (or PYTC_ADMIN_TOKENS)"
)
OWNER_PREFIX = "token:"
# The web page's session (service.http.page): an HttpOnly, SameSite=Strict cookie holding a value
# signed for the caller's owner, so a browser's fetches and event streams need no header.
SESSION_COOKIE = "pytc_session"


def token_owner(token: str) -> str:
    """The owner recorded for jobs submitted with ``token``: ``token:`` and 16 hex digits of its
    SHA-256. Whoever reads the database learns which jobs share a token, not the token."""
    digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()
    return OWNER_PREFIX + digest[:16]


@dataclass(frozen=True)
class Caller:
    """Who makes a ``/v1`` call: ``owner`` is what their jobs are recorded under (None on an open
    service), ``sees_all`` whether every job is theirs to see (an admin token, or no tokens)."""

    owner: str | None
    sees_all: bool

    @property
    def owner_filter(self) -> str | None:
        """The store's filter for listing: this owner's jobs, or None for every job."""
        return None if self.sees_all else self.owner

    def may_see(self, record: JobRecord) -> bool:
        return self.sees_all or (record.owner is not None and record.owner == self.owner)

    def check(self, record: JobRecord) -> JobRecord:
        """``record`` when this caller may see it; else the 404 of an unknown id, word for word."""
        if not self.may_see(record):
            raise JobNotFoundError(f"no job with id {record.id!r}")
        return record


OPEN = Caller(owner=None, sees_all=True)


def _match(given: str, tokens: Sequence[str]) -> int | None:
    """The index of ``given`` in ``tokens`` (None: absent), comparing with every token whatever
    the outcome."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    found: int | None = None
    for i, token in enumerate(tokens):
        if hmac.compare_digest(given_bytes, token.encode("utf-8", "surrogateescape")) and found is None:
            found = i
    return found


class TokenAuth:
    """The service's tokens: who a bearer token is. A token in both lists is an admin's."""

    def __init__(self, tokens: Sequence[str] = (), admin_tokens: Sequence[str] = ()) -> None:
        admins = tuple(admin_tokens)
        self._tokens = admins + tuple(t for t in tokens if t not in admins)
        self._callers = [Caller(token_owner(t), sees_all=i < len(admins)) for i, t in enumerate(self._tokens)]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def identify(self, token: str | None) -> Caller:
        """The caller presenting ``token`` (None: no bearer token given); AuthenticationError when
        tokens are configured and this is none of them."""
        if not self._tokens:
            return OPEN
        if token is None:
            raise AuthenticationError("this call needs an 'Authorization: Bearer <token>' header")
        found = _match(token, self._tokens)
        if found is None:
            raise AuthenticationError("the bearer token is not valid for this service")
        return self._callers[found]

    def session(self, owner: str) -> Caller:
        """The caller a web page session was opened for (its owner); AuthenticationError when that
        token is no longer configured."""
        for caller in self._callers:
            if caller.owner == owner:
                return caller
        raise AuthenticationError("the session's token is no longer valid for this service; log in again")


def session_caller(request: Request) -> Caller | None:
    """The caller of the request's session cookie, or None when it has none (or none still valid)."""
    value = request.cookies.get(SESSION_COOKIE)
    signer: Signer | None = getattr(request.app.state, "signer", None)
    auth: TokenAuth = request.app.state.auth
    if value is None or signer is None or not auth.enabled:
        return None
    try:
        return auth.session(signer.verify(value, SESSION_SCOPE).subject)
    except (BadSignature, AuthenticationError):
        return None


def require_token(auth: TokenAuth) -> Callable[..., Awaitable[None]]:
    """The ``/v1`` router's dependency when tokens are set: a request without a valid token is a 401
    before its body is read, and the OpenAPI document shows the bearer scheme."""

    async def check(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> None:
        if credentials is None and session_caller(request) is not None:
            return
        auth.identify(None if credentials is None else credentials.credentials)

    return check


async def current_caller(request: Request) -> Caller:
    """Who makes this request, for the handlers (the app's :class:`TokenAuth`, ``app.state.auth``)."""
    auth: TokenAuth = request.app.state.auth
    scheme, token = get_authorization_scheme_param(request.headers.get("authorization"))
    if not (scheme.lower() == "bearer" and token) and (caller := session_caller(request)) is not None:
        return caller
    return auth.identify(token if scheme.lower() == "bearer" and token else None)  # as HTTPBearer reads it
