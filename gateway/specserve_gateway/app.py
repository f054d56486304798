"""The ASGI proxy: OpenAI requests in, routed by `model` to a backend, answers passed back.

    POST /v1/completions, /v1/chat/completions   routed by the body's `model`
    GET  /v1/models                               every model in the route table
    GET  /health                                  the gateway itself is up (liveness)
    GET  /ready                                   503 until the route source's first table
    GET  /gateway/routes                          the table and per-backend counters (JSON)
    GET  /metrics                                 Prometheus text: requests, outstanding

Failure rules (no request ever waits on a dead backend for long):
- unknown model -> 404 `model_not_found`; bad JSON or no `model` -> 400;
- a model with no ready backend is held until one is ready (`holding.py`: bounded per model in
  number and time; then 503 with `Retry-After`);
- a model whose backends all refuse or drop the connection before answering -> 503 with
  `Retry-After`; connecting gives up after `connect_timeout` (2 s);
- a failed connection marks the backend down for a few seconds and the request moves on to the
  next backend (a completion has no side effects, so retrying it elsewhere is safe);
- a backend that accepted the request but sends nothing for `read_timeout` -> 504;
- streaming (`"stream": true`): the upstream bytes are relayed chunk by chunk as they arrive
  (no buffering); if the backend dies mid-stream, an SSE `error` event ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from specserve_gateway.holding import HoldConfig, Holding
from specserve_gateway.routing import (
    Balancer,
    Lease,
    backend_timeout,
    backend_unavailable,
    invalid_request,
    model_not_found,
    openai_error,
)
from specserve_gateway.sources import Notifying, RouteSource

log = logging.getLogger("specserve_gateway")

PROXIED_PATHS = ("/v1/completions", "/v1/chat/completions")
# Hop-by-hop headers (RFC 9110 7.6.1) and those the proxy recomputes.
_DROP_REQUEST = {"host", "content-length", "connection", "keep-alive", "te", "trailer",
                 "transfer-encoding", "upgrade", "proxy-authorization", "proxy-connection",
                 "accept-encoding"}
_DROP_RESPONSE = {"content-length", "connection", "keep-alive", "te", "trailer",
                  "transfer-encoding", "upgrade", "content-encoding"}


@dataclass(frozen=True)
class GatewayConfig:
    connect_timeout: float = 2.0
    read_timeout: float = 600.0
    retry_after_s: int = 2
    down_for_s: float = 5.0
    max_attempts: int = 3
    hold: HoldConfig = field(default_factory=HoldConfig)  # models with no ready backend


class Gateway:
    def __init__(self, source: RouteSource, config: GatewayConfig | None = None) -> None:
        self.source = source
        self.config = config or GatewayConfig()
        self.balancer = Balancer(down_for=self.config.down_for_s)
        self.requests: dict[tuple[str, str, int], int] = {}  # (model, path, status) -> count
        self.holding = Holding(self.config.hold)
        self._client: httpx.AsyncClient | None = None

    # ------------------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        c = self.config
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                c.read_timeout, connect=c.connect_timeout, pool=c.connect_timeout
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            trust_env=False,  # backends are pod IPs: never through an HTTP(S)_PROXY
        )
        self.holding.bind(asyncio.get_running_loop())
        if isinstance(self.source, Notifying):
            self.source.subscribe(self.holding.notify)
        await self.source.start()

    async def shutdown(self) -> None:
        await self.source.stop()
        if self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("the gateway has not started")
        return self._client

    # --------------------------------------------------------------------------- helpers

    def _count(self, model: str, path: str, status: int) -> None:
        key = (model, path, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def _error(self, model: str, path: str, status: int, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> JSONResponse:
        self._count(model, path, status)
        return JSONResponse(body, status_code=status, headers=headers)

    def _unavailable(self, model: str, path: str, detail: str) -> JSONResponse:
        return self._error(model, path, 503, backend_unavailable(model, detail),
                           {"Retry-After": str(self.config.retry_after_s)})

    # -------------------------------------------------------------------------- handlers

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def ready(self, request: Request) -> Response:
        if self.source.ready():
            return PlainTextResponse("ready\n")
        return PlainTextResponse("waiting for the first route list\n", status_code=503)

    async def models(self, request: Request) -> Response:
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "specserve"}
                for name in self.source.table().models()]
        return JSONResponse({"object": "list", "data": data})

    async def routes(self, request: Request) -> Response:
        table = self.source.table()
        backends = [u for route in table.routes.values() for u in route.backends]
        return JSONResponse({"models": table.to_json(),
                             "backends": self.balancer.snapshot(backends)})

    async def metrics(self, request: Request) -> Response:
        lines = ["# HELP specserve_gateway_requests_total Proxied requests by model and status.",
                 "# TYPE specserve_gateway_requests_total counter"]
        for (model, path, status), n in sorted(self.requests.items()):
            lines.append(f'specserve_gateway_requests_total{{model={_q(model)},'
                         f'path={_q(path)},code="{status}"}} {n}')
        lines += ["# HELP specserve_gateway_outstanding_requests Requests in flight per backend.",
                  "# TYPE specserve_gateway_outstanding_requests gauge"]
        for url, n in sorted(self.balancer.outstanding.items()):
            lines.append(f"specserve_gateway_outstanding_requests{{backend={_q(url)}}} {n}")
        lines += self.holding.metric_lines(self.source.table().models())
        return PlainTextResponse("\n".join(lines) + "\n",
                                 media_type="text/plain; version=0.0.4")

    async def proxy(self, request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._error("", path, 400, invalid_request("the body must be JSON"))
        model = payload.get("model") if isinstance(payload, dict) else None
        if not isinstance(model, str) or not model:
            return self._error("", path, 400,
                               invalid_request("`model` (a string) is required", "model"))
        route = self.source.table().get(model)
        if route is None:
            return self._error(model, path, 404, model_not_found(model))
        if not route.backends:  # scaled to zero, or every pod still loading: wait for one
            held = await self.holding.hold(model, lambda: self.source.table().get(model),
                                           request.is_disconnected)
            if held.outcome == "removed":
                return self._error(model, path, 404, model_not_found(model))
            if held.route is None:
                return self._error(model, path, 503, held.error(model, self.config.hold),
                                   {"Retry-After": str(self.config.retry_after_s)})
            route = held.route
        if route.upstream_model:
            raw = json.dumps({**payload, "model": route.upstream_model}).encode()
        stream = payload.get("stream") is True
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        headers["accept-encoding"] = "identity"  # relay bytes as they are

        failures: list[str] = []
        for url in self.balancer.order(route.backends)[: self.config.max_attempts]:
            lease = self.balancer.acquire(url)
            upstream = self.client.build_request("POST", url + path, content=raw,
                                                 headers=headers)
            try:
                resp = await self.client.send(upstream, stream=True)
            except httpx.TimeoutException as exc:
                lease.release()
                if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
                    self.balancer.mark_down(url)
                    failures.append(f"{url}: connect timeout")
                    continue
                return self._error(model, path, 504,
                                   backend_timeout(model, self.config.read_timeout))
            except httpx.TransportError as exc:  # refused, reset, closed before answering
                lease.release()
                self.balancer.mark_down(url)
                failures.append(f"{url}: {type(exc).__name__}")
                continue
            self.balancer.mark_up(url)
            out_headers = {k: v for k, v in resp.headers.items()
                           if k.lower() not in _DROP_RESPONSE}
            if stream:
                self._count(model, path, resp.status_code)
                return StreamingResponse(
                    self._relay(resp, lease, model), status_code=resp.status_code,
                    headers=out_headers, background=BackgroundTask(_close, resp, lease),
                )
            try:
                body = await resp.aread()
            except httpx.TimeoutException:
                return self._error(model, path, 504,
                                   backend_timeout(model, self.config.read_timeout))
            except httpx.TransportError as exc:  # died while answering: try the next one
                self.balancer.mark_down(url)
                failures.append(f"{url}: {type(exc).__name__} while reading")
                continue
            finally:
                await _close(resp, lease)
            self._count(model, path, resp.status_code)
            return Response(body, status_code=resp.status_code, headers=out_headers)
        log.warning("model %s: no backend answered: %s", model, "; ".join(failures))
        return self._unavailable(model, path, f"{len(failures)} backend(s) failed")

    async def _relay(self, resp: httpx.Response, lease: Lease,
                     model: str) -> AsyncIterator[bytes]:
        """Upstream bytes, as they come. Ends with an SSE error event if the backend dies."""
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            self.balancer.mark_down(lease.url)
            log.warning("model %s: %s failed mid-stream: %r", model, lease.url, exc)
            error = openai_error(
                f"The backend serving `{model}` failed mid-stream ({type(exc).__name__}).",
                "server_error", code="backend_failed",
            )
            yield b"\n\ndata: " + json.dumps(error).encode() + b"\n\n"
        finally:
            lease.release()


async def _close(resp: httpx.Response, lease: Lease) -> None:
    lease.release()
    with contextlib.suppress(Exception):
        await resp.aclose()


def _q(value: str) -> str:
    """A Prometheus label value, quoted."""
    escaped = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return f'"{escaped}"'


def create_app(source: RouteSource, config: GatewayConfig | None = None) -> Starlette:
    gateway = Gateway(source, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.startup()
        try:
            yield
        finally:
            await gateway.shutdown()

    routes = [
        Route("/health", gateway.health, methods=["GET"]),
        Route("/ready", gateway.ready, methods=["GET"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/gateway/routes", gateway.routes, methods=["GET"]),
        Route("/metrics", gateway.metrics, methods=["GET"]),
        *[Route(p, gateway.proxy, methods=["POST"]) for p in PROXIED_PATHS],
    ]
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        body = openai_error(f"{request.method} {request.url.path}: {exc.detail}",
                              "invalid_request_error", code=str(exc.status_code))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.gateway = gateway
    return app
