"""The engine's control port: ``GET/PUT /specserve/policy`` and ``GET /metrics``.

Runs as a thread inside the EngineCore process, next to the scheduler it steers. ``PolicyStore``
holds the rules (auth, validation, versioning) and is tested without HTTP; ``ControlServer`` is
the thin HTTP adapter (stdlib ``http.server``: the EngineCore has no event loop of its own).

Versioning: a PUT must carry a version greater than the current one (409 otherwise), except that
re-sending exactly the current policy is an idempotent 200, so an operator retrying a push after
a lost answer gets an acknowledgement, not an error.

A pushed `model` with an empty `source` is the built-in default, not a measurement: the engine
keeps the model it runs (its profile and what it learned online) and adopts only the knobs. An
operator that has not measured anything yet must not wipe a pod's profile.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from pydantic import ValidationError

from specserve_contract import ENV_CONTROL_TOKEN, HEALTH_PATH, METRICS_PATH, POLICY_PATH
from specserve_engine.policy import ModelParams, Policy, validation_message

log = logging.getLogger("specserve.control")


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class PolicyStore:
    """The current policy, swapped atomically by PUTs and read by the scheduler every step."""

    def __init__(self, policy: Policy, engine_k_max: int, token: str | None) -> None:
        self._lock = threading.Lock()
        self._policy = policy
        self.engine_k_max = engine_k_max
        self._token = token
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
        if not self._token:
            return False  # no token configured: the policy cannot be changed at runtime
        scheme, _, value = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), self._token)

    def put(self, body: bytes, authorization: str | None) -> Reply:
        if not self._authorized(authorization):
            detail = (f"policy updates are disabled: {ENV_CONTROL_TOKEN} is not set"
                      if not self._token else "missing or wrong bearer token")
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


class ControlServer:
    """HTTP on its own port; ``metrics_text`` renders the Prometheus exposition."""

    def __init__(self, store: PolicyStore, metrics_text: Any, host: str, port: int) -> None:
        store_ = store

        class Handler(BaseHTTPRequestHandler):
            server_version = "specserve-control"

            def _send(self, reply: Reply) -> None:
                payload = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in reply.headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path == POLICY_PATH:
                    self._send(store_.get())
                elif self.path == METRICS_PATH:
                    text = metrics_text()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4")
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                elif self.path == HEALTH_PATH:
                    self._send(Reply(200, {"status": "ok"}))
                else:
                    self._send(Reply(404, {"error": f"no such path {self.path}"}))

            def do_PUT(self) -> None:
                if self.path != POLICY_PATH:
                    self._send(Reply(404, {"error": f"no such path {self.path}"}))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > 1 << 20:
                    self._send(Reply(413, {"error": "policy body larger than 1 MiB"}))
                    return
                self._send(store_.put(self.rfile.read(length), self.headers.get("Authorization")))

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("control: " + format, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="specserve-control",
                                       daemon=True)

    def start(self) -> ControlServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
