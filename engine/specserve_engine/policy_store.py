"""The engine's runtime policy: who may change it, and the rules a change follows.

``PolicyStore`` holds the policy in force, swapped atomically by authorised PUTs and read by the
engine every step; the HTTP adapter (``vllm/control.py``) and the simulator call it the same way.

Versioning: a PUT must carry a version greater than the current one (409 otherwise), except that
re-sending exactly the current policy is an idempotent 200, so an operator retrying a push after
a lost answer gets an acknowledgement, not an error.

A pushed `model` with an empty `source` is the built-in default, not a measurement: the engine
keeps the model it runs (its profile and what it learned online) and adopts only the knobs. An
operator that has not measured anything yet must not wipe a pod's profile.

The bearer token (``control_token``): in a pod, a file (SPECSERVE_CONTROL_TOKEN_FILE, the
operator's Secret mounted as a volume), re-read when it changes, so that a Secret deleted and
recreated with a new token reaches running pods; else SPECSERVE_CONTROL_TOKEN (a local
``specserve serve``), fixed for the process's life.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from specserve_contract import ENV_CONTROL_TOKEN, ENV_CONTROL_TOKEN_FILE
from specserve_engine.policy import ModelParams, Policy, validation_message

log = logging.getLogger("specserve.control")

# How stale the token may be: a replaced token file is looked at (one stat) at most this often
# when the offered token matches, so an old token stops working within this many seconds of the
# kubelet swapping the file (which itself follows the Secret within its sync period, about a
# minute). A token that does not match is checked against the file at once, before the 401, so
# a new one works the moment the file has it.
TOKEN_CHECK_INTERVAL_S = 5.0


class ControlToken(Protocol):
    """Where the control port's bearer token comes from."""

    def get(self, fresh: bool = False) -> str | None:
        """The token now (None: none configured); `fresh`: look at its source first."""
        ...

    def missing(self) -> str:
        """Why there is no token, for the 401 a PUT then gets."""
        ...


class StaticToken:
    """A token fixed at start-up (SPECSERVE_CONTROL_TOKEN), or none."""

    def __init__(self, token: str | None) -> None:
        self.token = token or None

    def get(self, fresh: bool = False) -> str | None:
        return self.token

    def missing(self) -> str:
        return f"{ENV_CONTROL_TOKEN} is not set"


class TokenFile:
    """The token in a file the kubelet keeps current: a Secret volume.

    The kubelet writes a Secret volume atomically: the files live in a timestamped folder,
    `..data` links to it and each key (`token`) links to `..data/token`; an update writes a new
    folder and renames a new `..data` link over the old one. So the file is replaced, never
    rewritten in place: its resolved path and inode change. That (with mtime and size, for a
    file edited in place outside Kubernetes) is what is compared; the content is read only when
    it changed. An unreadable file keeps the token read before (a swap in progress, a Secret
    being recreated: the kubelet leaves the last files in place until the new ones arrive).
    """

    def __init__(self, path: str, check_interval_s: float = TOKEN_CHECK_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.check_interval_s = check_interval_s
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._identity: tuple[str, int, int, int] | None = None
        self._checked: float | None = None
        self._problem = "not read yet"
        self.reloads = 0  # times the content was (re)read: tests, logs
        self.get(fresh=True)

    def get(self, fresh: bool = False) -> str | None:
        with self._lock:
            now = self.clock()
            if fresh or self._checked is None or now - self._checked >= self.check_interval_s:
                self._checked = now
                self._check()
            return self._token

    def _check(self) -> None:
        try:
            real = os.path.realpath(self.path)
            st = os.stat(real)
            identity = (real, st.st_ino, st.st_mtime_ns, st.st_size)
            if identity == self._identity:
                return
            with open(real, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            self._problem = f"{ENV_CONTROL_TOKEN_FILE} {self.path}: {exc}"
            if self._token is not None:
                log.warning("control token file unreadable (%s); keeping the token read before",
                            exc)
            return
        self._identity = identity
        self.reloads += 1
        if token != self._token:
            log.info("control token %s from %s", "loaded" if self._token is None else "replaced",
                     self.path)
        self._token = token or None
        self._problem = f"{ENV_CONTROL_TOKEN_FILE} {self.path} is empty"

    def missing(self) -> str:
        return self._problem


def control_token(env: Mapping[str, str]) -> ControlToken:
    """The token source an engine uses: the file when SPECSERVE_CONTROL_TOKEN_FILE is set (a
    pod), else SPECSERVE_CONTROL_TOKEN."""
    path = env.get(ENV_CONTROL_TOKEN_FILE)
    if path:
        return TokenFile(path)
    return StaticToken(env.get(ENV_CONTROL_TOKEN))


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class PolicyStore:
    """The current policy, swapped atomically by PUTs and read by the scheduler every step."""

    def __init__(self, policy: Policy, engine_k_max: int,
                 token: str | ControlToken | None) -> None:
        self._lock = threading.Lock()
        self._policy = policy
        self.engine_k_max = engine_k_max
        self._token: ControlToken = (token if token is not None and not isinstance(token, str)
                                     else StaticToken(token))
        self.fitted: ModelParams | None = None  # published by the scheduler now and then
        # What this engine is, for whoever reads GET (dtype, machine): set by the scheduler.
        self.engine_info: dict[str, Any] = {}

    @property
    def policy(self) -> Policy:
        return self._policy

    def get(self) -> Reply:
        fitted = self.fitted
        return Reply(200, {
            "policy": self._policy.model_dump(mode="json"),
            "fitted": fitted.model_dump(mode="json") if fitted else None,
            "engine": {"k_max": self.engine_k_max, **self.engine_info},
        })

    def _authorized(self, authorization: str | None) -> bool:
        """A bearer token equal to the current one. One that differs is compared again after a
        fresh look at the token's source (it may just have been replaced) before it is refused.
        No token configured: the policy cannot be changed at runtime."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        offered = value.strip().encode()
        for fresh in (False, True):
            token = self._token.get(fresh=fresh)
            if token and hmac.compare_digest(offered, token.encode()):
                return True
        return False

    def put(self, body: bytes, authorization: str | None) -> Reply:
        if not self._authorized(authorization):
            detail = (f"policy updates are disabled: {self._token.missing()}"
                      if not self._token.get() else "missing or wrong bearer token")
            return Reply(401, {"error": detail}, (("WWW-Authenticate", "Bearer"),))
        try:
            data = json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            return Reply(422, {"error": f"body is not JSON: {exc.msg} (line {exc.lineno})"})
        try:
            new = Policy.model_validate(data)
        except ValidationError as exc:
            return Reply(422, {"error": validation_message(exc)})
        if new.k_max > self.engine_k_max:
            return Reply(422, {"error": f"k_max: {new.k_max} exceeds this engine's maximum "
                                        f"{self.engine_k_max} (set by `specserve serve --k-max`)"})
        with self._lock:
            current = self._policy
            if not new.model.source:
                new = new.model_copy(update={"model": current.model})
            if new.version == current.version and new == current:
                return Reply(200, {"version": new.version, "changed": False})
            if new.version <= current.version:
                return Reply(409, {"error": f"stale version {new.version}: this engine runs "
                                            f"version {current.version}; send a higher version",
                                   "current_version": current.version})
            self._policy = new
        log.info("policy version %d accepted (mode=%s, k_max=%d)", new.version, new.mode,
                 new.k_max)
        return Reply(200, {"version": new.version, "changed": True})
