"""Helpers for the gateway tests: run the gateway in a thread, and dead backends.

A dead backend is what a killed pod looks like from the network: a port where nothing accepts
(connection refused) or a peer that accepts and never answers. Both are real sockets here. A
pod that comes up later (scale from zero) is a tiny real HTTP server swapped into a
`MutableSource`.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from specserve_engine.launcher import free_port
from specserve_gateway.app import GatewayConfig, create_app
from specserve_gateway.routing import RouteTable
from specserve_gateway.sources import Listeners, RouteSource, StaticSource


@contextmanager
def running_gateway(
    routes: RouteTable | RouteSource, config: GatewayConfig | None = None
) -> Iterator[str]:
    """The gateway on 127.0.0.1:<free port> (uvicorn in a thread) over a fixed table or a
    source; yields its base URL once it is live (not necessarily ready)."""
    port = free_port()
    source = StaticSource(routes) if isinstance(routes, RouteTable) else routes
    server = uvicorn.Server(uvicorn.Config(
        create_app(source, config), host="127.0.0.1", port=port,
        log_level="warning", lifespan="on",
    ))
    thread = threading.Thread(target=server.run, name="gateway", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def refused_port() -> Iterator[str]:
    """A base URL whose port is bound but not listening: every connect is refused at once
    (holding the socket keeps anyone else from taking the port meanwhile)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def silent_port() -> Iterator[str]:
    """A base URL whose port accepts connections (kernel backlog) and never answers: a hung pod."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextmanager
def unreachable_port() -> Iterator[str]:
    """A base URL where connecting hangs until the client's connect timeout: a listener whose
    accept queue is full (Linux then drops new SYNs), like a node that stopped answering."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        sock.close()


@contextmanager
def dies_mid_stream_fake_backend(first_event: bytes) -> Iterator[str]:
    """NOT an engine: a raw socket that answers one request with the start of an SSE stream
    (headers and `first_event`) and then drops the connection, the way a pod killed mid-answer
    looks on the wire. Stands in for killing a real engine mid-stream, which the shared
    session engines cannot be."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)

    def serve() -> None:
        try:
            conn, _ = sock.accept()
        except OSError:
            return
        with conn:
            conn.recv(65536)
            chunk = b"%x\r\n%s\r\n" % (len(first_event), first_event)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n" + chunk)
            time.sleep(0.2)
            # linger 0: close with a reset, as when the process is killed
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()
        thread.join(5)


class MutableSource(Listeners):
    """A route source whose table the test swaps (from its own thread), notifying listeners as
    the cluster source does when a pod becomes ready. `notify=False`: a source that cannot say
    when it changed (the gateway's re-check must find the change on its own)."""

    def __init__(self, table: RouteTable, notify: bool = True) -> None:
        super().__init__()
        self._table = table
        self._notify = notify

    def set(self, table: RouteTable) -> None:
        self._table = table
        if self._notify:
            self.notify()

    def table(self) -> RouteTable:
        return self._table

    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


@contextmanager
def completion_fake_backend(text: str = "ok") -> Iterator[str]:
    """NOT an engine: a tiny real HTTP server (a thread) that answers every POST with one
    OpenAI-shaped completion whose text is `text` and whose model is the request's. Stands in
    for a pod that came up (scale from zero), which the shared session engines cannot do."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            request = json.loads(self.rfile.read(length) or b"{}")
            body = json.dumps({
                "id": "cmpl-fake", "object": "text_completion", "created": 0,
                "model": request.get("model"),
                "choices": [{"index": 0, "text": text, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fake-backend", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
