"""Optional API keys: `Authorization: Bearer <key>` on every request but the probes and metrics.

    python -m specserve_gateway ... --api-keys-file /etc/specserve/api-keys   # a mounted Secret
    SPECSERVE_GATEWAY_API_KEYS=key1,key2 python -m specserve_gateway ...      # or the env

The file holds one key per line (blank lines and `#` comments ignored) and is re-read when it
changes (its mtime, inode or size: a Secret volume swaps its `..data` link on update), so a key
rotated in the Secret is honoured, and a revoked one refused, without a restart. An unreadable
file refuses every key (fail closed) until it can be read again. Keys are compared as SHA-256
digests, so the time a comparison takes says nothing about a key.

Open without a key: `/health`, `/ready` (the kubelet's probes send no credentials) and
`/metrics` (the scrape). Everything else without a valid key gets 401 in OpenAI's error shape
(`code: invalid_api_key`), which the official clients raise as `openai.AuthenticationError`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from specserve_gateway.routing import openai_error

log = logging.getLogger("specserve_gateway.auth")

ENV = "SPECSERVE_GATEWAY_API_KEYS"  # comma- or newline-separated
OPEN_PATHS = frozenset({"/health", "/ready", "/metrics"})


def parse_keys(text: str) -> set[str]:
    """Keys from a file's text (one a line) or the env (commas too); comments and blanks out."""
    keys = set()
    for line in text.replace(",", "\n").splitlines():
        key = line.strip()
        if key and not key.startswith("#"):
            keys.add(key)
    return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def bearer(header: str | None) -> str | None:
    """The token of `Authorization: Bearer <token>` (scheme case-insensitive), else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class ApiKeys:
    """The keys in force: from `path` (re-read on change) and/or fixed ones (the env)."""

    def __init__(self, path: Path | None = None, fixed: Iterable[str] = ()) -> None:
        self.path = path
        self._fixed = {_digest(k) for k in fixed}
        self._from_file: set[bytes] = set()
        self._stamp: tuple[int, int, int] | None = None
        if path is not None:
            path.stat()  # fail fast at startup when the file is not there
            self.reload_if_changed()

    @classmethod
    def from_options(cls, path: Path | None,
                     env: dict[str, str] | os._Environ[str] = os.environ) -> ApiKeys | None:
        """None (no check) when neither the file nor the env variable is given."""
        fixed = parse_keys(env.get(ENV, ""))
        if path is None and not fixed:
            return None
        return cls(path, fixed)

    def _stat(self) -> tuple[int, int, int] | None:
        assert self.path is not None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_ino, st.st_size)

    def reload_if_changed(self) -> None:
        if self.path is None:
            return
        stamp = self._stat()
        if stamp is not None and stamp == self._stamp:
            return
        try:
            keys = parse_keys(self.path.read_text())
        except OSError as exc:
            if self._from_file:
                log.warning("cannot read the API keys (%s): refusing every key until it can "
                            "be read", exc)
            self._from_file, self._stamp = set(), None
            return
        self._stamp = stamp
        self._from_file = {_digest(k) for k in keys}
        log.info("API keys read from %s: %d key(s)", self.path, len(keys))

    def allows(self, authorization: str | None) -> bool:
        token = bearer(authorization)
        if token is None:
            return False
        self.reload_if_changed()
        d = _digest(token)
        return d in self._fixed or d in self._from_file


def invalid_api_key(provided: bool) -> dict[str, Any]:
    message = ("Incorrect API key provided." if provided else
               "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.")
    return openai_error(message, "invalid_request_error", code="invalid_api_key")


class RequireApiKey:
    """ASGI middleware: 401 for requests without a valid key (`OPEN_PATHS` excepted).
    `on_refused(path)` is told of each refusal (the gateway counts it)."""

    def __init__(self, app: ASGIApp, keys: ApiKeys,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.keys = keys
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        raw = dict(scope.get("headers") or []).get(b"authorization")
        header = raw.decode("latin-1") if raw is not None else None
        if self.keys.allows(header):
            await self.app(scope, receive, send)
            return
        if self.on_refused is not None:
            self.on_refused(str(scope.get("path", "")))
        response = JSONResponse(invalid_api_key(header is not None), status_code=401,
                                headers={"WWW-Authenticate": 'Bearer realm="specserve"'})
        await response(scope, receive, send)
