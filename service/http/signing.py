"""Signed values for browsers: store links for viewers and the web page's session cookie.

A viewer (neuroglancer) fetches data with plain ``GET`` requests and cannot send a bearer header, so
access to a store is carried by the link itself: ``/stores/<token>/<path in the store>``. A token is
``<payload>.<signature>``, both base64url without padding; the payload is JSON naming

- ``s``, the store: the absolute, resolved path of the container a job named,
- ``e``, the expiry (Unix seconds),
- ``k``, the scope (:data:`STORE_SCOPE` for read-only store access, :data:`SESSION_SCOPE` for a
  web page session),

and the signature is HMAC-SHA256 over the payload's bytes with the server's secret. Altering any of
them, or using a token past its expiry or for another scope, is refused (:class:`BadSignature`).

The secret is ``PYTC_VIEW_SECRET`` when set, else a random one kept in the state folder
(``view.secret``, mode 0600) so links survive a restart of the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

STORE_SCOPE = "store:r"
SESSION_SCOPE = "session"
SECRET_FILE = "view.secret"
SECRET_VARIABLE = "PYTC_VIEW_SECRET"
MAX_TOKEN_CHARS = 8192  # a store path is at most 4096 bytes; a longer token is no token of ours


class BadSignature(ValueError):
    """A token that is malformed, altered, expired or of another scope."""


@dataclass(frozen=True)
class Grant:
    """What a verified token grants: ``subject`` (a store's path, or a session's owner) until
    ``expires`` (Unix seconds)."""

    subject: str
    expires: int
    scope: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as err:
        raise BadSignature("the token is not base64url") from err


class Signer:
    """Signs and verifies tokens with one secret."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 16:
            raise ValueError(f"a signing secret needs at least 16 bytes, got {len(secret)}")
        self._secret = secret
        self._now = clock

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, subject: str, scope: str, ttl_s: float) -> tuple[str, int]:
        """A token granting ``subject`` for ``scope`` during ``ttl_s`` seconds, and its expiry."""
        expires = int(self._now() + ttl_s)
        payload = json.dumps({"s": subject, "e": expires, "k": scope}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(payload))}", expires

    def verify(self, token: str, scope: str) -> Grant:
        """The grant of ``token`` for ``scope``; BadSignature when it is not one this secret signed,
        has expired, or was signed for another scope."""
        if len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
            raise BadSignature("the token is malformed")
        payload_text, mac_text = token.split(".")
        payload = _unb64(payload_text)
        if not hmac.compare_digest(self._mac(payload), _unb64(mac_text)):
            raise BadSignature("the token's signature does not match")
        try:
            fields = json.loads(payload)
            grant = Grant(str(fields["s"]), int(fields["e"]), str(fields["k"]))
        except (ValueError, KeyError, TypeError) as err:  # signed by us, so never; kept total
            raise BadSignature("the token's payload is malformed") from err
        if grant.scope != scope:
            raise BadSignature(f"the token is for {grant.scope!r}, not {scope!r}")
        if grant.expires < self._now():
            raise BadSignature("the link has expired; ask the service for a new one")
        return grant


def load_secret(state_dir: Path, given: str | None = None) -> bytes:
    """``given`` (``PYTC_VIEW_SECRET``, UTF-8), else the state folder's ``view.secret``, made on
    first use."""
    given = (given or "").strip()
    if given:
        if len(given.encode()) < 16:
            raise ValueError(f"{SECRET_VARIABLE} must hold at least 16 bytes")
        return given.encode()
    path = state_dir / SECRET_FILE
    try:
        existing = path.read_bytes().strip()
        if len(existing) >= 32:
            return existing
    except FileNotFoundError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32).encode()
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secret)
    try:
        os.link(tmp, path)  # the first process to make it wins; the others read its secret
    except FileExistsError:
        secret = path.read_bytes().strip()
    finally:
        tmp.unlink(missing_ok=True)
    return secret
