"""The engine's control port: ``GET/PUT /specserve/policy`` and ``GET /metrics``.

Runs as a thread inside the EngineCore process, next to the scheduler it steers. The rules
(auth, validation, versioning) live in ``specserve_engine.policy_store.PolicyStore``, tested
without HTTP; ``ControlServer`` is the thin HTTP adapter (stdlib ``http.server``: the
EngineCore has no event loop of its own).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from specserve_contract import HEALTH_PATH, METRICS_PATH, POLICY_PATH
from specserve_engine.policy_store import PolicyStore, Reply

log = logging.getLogger("specserve.control")


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
