"""Bearer tokens for ``/v1`` when ``PYTC_API_TOKENS`` is set; the probes stay open.

Tokens are compared in constant time (``hmac.compare_digest``), and against every configured token
whatever the outcome, so the time taken says nothing about which token nearly matched.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import AuthenticationError

# auto_error=False: a missing header is ours to answer (problem+json 401, not FastAPI's 403).
_bearer = HTTPBearer(auto_error=False, description="one of the tokens in PYTC_API_TOKENS")


def token_matches(given: str, tokens: Sequence[str]) -> bool:
    """Whether ``given`` is one of ``tokens``; constant time in the token contents."""
    given_bytes = given.encode("utf-8", "surrogateescape")
    found = False
    for token in tokens:
        found |= hmac.compare_digest(given_bytes, token.encode("utf-8", "surrogateescape"))
    return found


def require_token(tokens: Sequence[str]) -> Callable[..., Awaitable[None]]:
    """A dependency that lets a request through only with ``Authorization: Bearer <token>``
    naming one of ``tokens``; with no tokens configured every request passes."""
    allowed = tuple(tokens)

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
        if not allowed:
            return
        if credentials is None:
            raise AuthenticationError("this call needs an 'Authorization: Bearer <token>' header")
        if not token_matches(credentials.credentials, allowed):
            raise AuthenticationError("the bearer token is not valid for this service")

    return check
