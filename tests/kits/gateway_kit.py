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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from specserve_engine.launcher import free_port
from specserve_gateway.app import GatewayConfig, create_app
from specserve_gateway.routing import RouteTable
from specserve_gateway.sources import RouteSource, StaticSource


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


# --------------------------------------------------------------- a fake OpenAI token server

# The fake "model": a token id is a character (its code point); 1 is BOS, 2 is EOS (empty text),
# 3 is a token with empty text (a byte that completes nothing yet). The next token is a pure
# function of every id so far, prompt included, so a continuation given `prompt + sent` goes on
# exactly as the unbroken run did (greedy decoding does the same on a real engine).
BOS, EOS, SILENT = 1, 2, 3
FAKE_CONTEXT = 512  # the fake's max_model_len


def fake_tokenize(text: str) -> list[int]:
    return [BOS, *(ord(c) for c in text)]


def fake_render_chat(messages: list[dict[str, Any]]) -> list[int]:
    """The fake chat template: `<role>: <content>\\n` per message, then `assistant: `."""
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    return fake_tokenize(text)


def fake_next(ids: list[int]) -> int:
    h = 0
    for t in ids[-4:]:
        h = (h * 131 + t) % 1_000_003
    h = (h + 7 * len(ids)) % 1_000_003
    if h % 41 == 0:
        return EOS
    if h % 13 == 0:
        return SILENT
    return 97 + h % 26  # a..z


def fake_text(token: int) -> str:
    return "" if token in (BOS, EOS, SILENT) else chr(token)


def fake_generate(prompt: list[int], max_tokens: int | None, min_tokens: int = 0) -> list[int]:
    """What the fake model answers (ends with EOS unless max_tokens cuts it off)."""
    budget = FAKE_CONTEXT - len(prompt) if max_tokens is None else max_tokens
    ids = list(prompt)
    out: list[int] = []
    while len(out) < budget:
        t = fake_next(ids)
        if t == EOS and len(out) < min_tokens:
            t = SILENT
        ids.append(t)
        out.append(t)
        if t == EOS:
            break
    return out


@dataclass
class FakeBackend:
    """A real HTTP server speaking the part of vLLM's OpenAI API the gateway relies on.

    `die_after[k]` says what happens to the k-th generation request: None, answer in full;
    n >= 0, stop after n tokens' chunks (`failure`: "reset" the connection as a killed pod does,
    or send vLLM's in-stream server "error_event"); -1, reset before the response headers.
    Requests past the list are answered in full. `requests` records (path, body) as received.
    """

    url: str
    die_after: list[int | None]
    failure: str
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


def _read_request(conn: socket.socket) -> tuple[str, str, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("closed")
        data += more
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        more = conn.recv(65536)
        if not more:
            raise ConnectionError("closed")
        body += more
    return method, path, body


def _reset(conn: socket.socket) -> None:
    """Close with a reset (linger 0), as when the process is killed."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _answer(backend: FakeBackend, conn: socket.socket, delay: float) -> None:
    method, path, raw = _read_request(conn)
    if method == "GET":
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
        conn.close()
        return
    body = json.loads(raw)
    backend.requests.append((path, body))
    k = len(backend.requests) - 1
    die = backend.die_after[k] if k < len(backend.die_after) else None
    if die == -1:
        _reset(conn)
        return
    chat = path == "/v1/chat/completions"
    if chat:
        prompt = fake_render_chat(body["messages"])
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
    else:
        p = body["prompt"]
        prompt = list(p) if isinstance(p, list) else fake_tokenize(p)
        limit = body.get("max_tokens", 16)  # vLLM's default; an explicit null: the context
    out = fake_generate(prompt, limit, body.get("min_tokens") or 0)
    finish = "stop" if out and out[-1] == EOS else "length"
    ids_wanted = body.get("return_token_ids") is True
    usage = {"prompt_tokens": len(prompt), "completion_tokens": len(out),
             "total_tokens": len(prompt) + len(out)}
    head = {"id": f"fake-{len(backend.requests)}", "created": 1000 + len(backend.requests),
            "model": body.get("model")}
    if not body.get("stream"):
        text = "".join(fake_text(t) for t in out)
        if chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant",
                                                              "content": text},
                                      "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        answer = json.dumps({**head, "object": "chat.completion" if chat else "text_completion",
                             "choices": [choice], "usage": usage}).encode()
        if die is not None:  # cut off mid-body
            half = answer[: len(answer) // 2]
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\n\r\n%s" % (len(answer), half))
            time.sleep(delay)
            _reset(conn)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(answer), answer))
        conn.close()
        return
    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                 b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")

    def send(obj: dict[str, Any] | str) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        conn.sendall(_chunked(f"data: {text}\n\n".encode()))
        time.sleep(delay)

    obj = "chat.completion.chunk" if chat else "text_completion"
    if chat:
        first: dict[str, Any] = {**head, "object": obj, "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None}]}
        first["prompt_token_ids"] = prompt if ids_wanted else None
        send(first)
    for n, token in enumerate(out):
        if die is not None and n >= die:
            if backend.failure == "error_event":
                send({"error": {"message": "EngineCore died", "type": "InternalServerError",
                                "param": None, "code": 500}})
                send("[DONE]")
                conn.sendall(b"0\r\n\r\n")
                conn.close()
            else:
                _reset(conn)
            return
        last = n == len(out) - 1
        text = fake_text(token)
        # The fields vLLM 0.32 sets (and so serialises, null or not) in its stream choices.
        c: dict[str, Any] = {"index": 0}
        if chat:
            if not text and not last and not ids_wanted:
                continue  # vLLM sends no chunk for a token without text (chat)
            c["delta"] = {"content": text} if text else {}
            c.update(logprobs=None, finish_reason=finish if last else None)
            if last:
                c["stop_reason"] = None
        else:
            c.update(text=text, logprobs=None, finish_reason=finish if last else None,
                     stop_reason=None,
                     prompt_token_ids=prompt if n == 0 and ids_wanted else None)
        c["token_ids"] = [token] if ids_wanted else None
        send({**head, "object": obj, "choices": [c]})
    options = body.get("stream_options") or {}
    if options.get("include_usage"):
        send({**head, "object": obj, "choices": [], "usage": usage})
    send("[DONE]")
    conn.sendall(b"0\r\n\r\n")
    conn.close()


@contextmanager
def fake_openai_backend(die_after: Sequence[int | None] = (), *, failure: str = "reset",
                        delay: float = 0.002) -> Iterator[FakeBackend]:
    """NOT an engine: a small real HTTP server answering /v1/completions and
    /v1/chat/completions from the fake token model above, streaming one token per chunk
    (`delay` apart), dying mid-answer as `die_after` says (see FakeBackend)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    backend = FakeBackend(f"http://127.0.0.1:{sock.getsockname()[1]}", list(die_after), failure)

    def handle(conn: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError, ConnectionError):
            _answer(backend, conn, delay)
        with contextlib.suppress(OSError):
            conn.close()

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield backend
    finally:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        sock.close()
class MutableSource(StaticSource):
    """A route source whose table the test swaps (from its own thread), notifying listeners as
    the cluster source does when a pod becomes ready. `notify=False`: a source that cannot say
    when it changed (the gateway's re-check must find the change on its own)."""

    def __init__(self, table: RouteTable, notify: bool = True) -> None:
        super().__init__(table)
        self._notify = notify

    def set(self, table: RouteTable) -> None:
        self._table = table
        if self._notify:
            self.notify()


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
