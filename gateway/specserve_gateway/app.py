"""The ASGI proxy: OpenAI requests in, routed by `model` to a backend, answers passed back.

    POST /v1/completions, /v1/chat/completions   routed by the body's `model`
    GET  /v1/models                               every model in the route table
    GET  /health                                  the gateway itself is up (liveness)
    GET  /ready                                   503 until the route source's first table
    GET  /gateway/routes                          the table and per-backend counters (JSON)
    GET  /metrics                                 Prometheus text: requests, outstanding,
                                                  resumes (`resume.py`), holds (`holding.py`)

Failure rules (no request ever waits on a dead backend for long):
- with API keys (`auth.py`), no valid `Authorization: Bearer` -> 401 (probes, metrics open);
- unknown model -> 404 `model_not_found` (counted as model `__unknown__`); bad JSON or no
  `model` -> 400;
- a model with no ready backend is held until one is ready (`holding.py`: bounded per model in
  number and time; then 503 with `Retry-After`);
- a model whose backends all refuse or drop the connection before answering -> 503 with
  `Retry-After`; connecting gives up after `connect_timeout` (2 s);
- a failed connection marks the backend down for a few seconds and the request moves on to the
  next backend (a completion has no side effects, so retrying it elsewhere is safe);
- a backend that accepted the request but sends nothing for `read_timeout` -> 504;
- streaming (`"stream": true`): the upstream bytes are relayed chunk by chunk as they arrive
  (no buffering); if the backend dies mid-stream, the stream is resumed on another ready
  backend from the tokens already sent (`resume.py`; at most `max_resumes` times, before the
  request's deadline), and otherwise an SSE `error` event ends the stream;
- a non-streamed answer cut off mid-body is asked again of the next backend (same bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from specserve_contract.metrics import (
    GATEWAY_OUTSTANDING,
    GATEWAY_REQUESTS,
    GATEWAY_ROUTE_CONFLICTS,
)
from specserve_gateway.auth import ApiKeys, RequireApiKey
from specserve_gateway.holding import HoldConfig, Holding
from specserve_gateway.resume import ResumeMetrics, ResumePlan, StreamSplicer, plan_resume
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
    max_resumes: int = 2  # per request: continuations of a broken stream / body re-asks
    request_deadline_s: float = 600.0  # no resume starts later than this after arrival
    hold: HoldConfig = field(default_factory=HoldConfig)  # models with no ready backend
    api_keys: ApiKeys | None = None  # None: no key asked (`auth.py`)


# The `model` label of requests for a model not in the route table: client-chosen names would
# otherwise make one series each (unbounded label values).
UNKNOWN_MODEL = "__unknown__"


class Gateway:
    def __init__(self, source: RouteSource, config: GatewayConfig | None = None) -> None:
        self.source = source
        self.config = config or GatewayConfig()
        self.balancer = Balancer(down_for=self.config.down_for_s)
        # The gateway's own registry, not prometheus_client's global one: several gateways in
        # one process (the tests) keep their series apart.
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(GATEWAY_REQUESTS, "Proxied requests by model and status.",
                                ["model", "path", "code"], registry=r)
        self.outstanding = Gauge(GATEWAY_OUTSTANDING, "Requests in flight per backend.",
                                 ["backend"], registry=r)
        self.route_conflicts = Gauge(
            GATEWAY_ROUTE_CONFLICTS,
            "1 per claim of a model name that another namespace holds (not routed by it).",
            ["model", "namespace"], registry=r)
        self.resume_metrics = ResumeMetrics(r)
        self.holding = Holding(self.config.hold, registry=r)
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
        self.requests.labels(model, path, str(status)).inc()

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
                for name in self.source.table().listed_models()]
        return JSONResponse({"object": "list", "data": data})

    async def routes(self, request: Request) -> Response:
        table = self.source.table()
        backends = [u for route in table.routes.values() for u in route.backends]
        return JSONResponse({"models": table.to_json(),
                             "backends": self.balancer.snapshot(backends),
                             "conflicts": [{"model": c.model, "namespace": c.namespace,
                                            "names": list(c.names), "holder": c.holder,
                                            "message": c.message()} for c in table.conflicts]})

    async def metrics(self, request: Request) -> Response:
        # The gauges of state kept elsewhere (balancer, holding) are set from it here, with no
        # await in between, so no handler on the event loop sees them half set.
        self.outstanding.clear()
        for url, n in self.balancer.outstanding.items():
            self.outstanding.labels(url).set(n)
        table = self.source.table()
        self.holding.export(table.models())
        self.route_conflicts.clear()
        for c in table.conflicts:
            self.route_conflicts.labels(c.model, c.namespace).set(1)
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    async def proxy(self, request: Request) -> Response:
        started = time.monotonic()
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
            return self._error(UNKNOWN_MODEL, path, 404, model_not_found(model))
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
            payload = {**payload, "model": route.upstream_model}
            raw = json.dumps(payload).encode()
        stream = payload.get("stream") is True
        plan: ResumePlan | str = "resuming is off (--max-resumes 0)"
        if stream and self.config.max_resumes > 0:
            plan = plan_resume(path, payload)
            if isinstance(plan, ResumePlan):
                raw = json.dumps(plan.first_request()).encode()
        rereads = 0  # non-streamed answers cut off mid-body and asked again
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
                relay = (self._resumable_relay(resp, lease, model, path, headers, plan, started)
                         if isinstance(plan, ResumePlan) and resp.status_code == 200
                         else self._relay(resp, lease, model, path,
                                          plan if isinstance(plan, str) else "not a 200"))
                return StreamingResponse(
                    relay, status_code=resp.status_code,
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
                why = self._why_not_again(rereads, started)
                if why is not None:
                    self.resume_metrics.count_failure(model, path, why)
                    break
                rereads += 1
                self.resume_metrics.count_resume(model, path)
                continue
            finally:
                await _close(resp, lease)
            self._count(model, path, resp.status_code)
            return Response(body, status_code=resp.status_code, headers=out_headers)
        log.warning("model %s: no backend answered: %s", model, "; ".join(failures))
        return self._unavailable(model, path, f"{len(failures)} backend(s) failed")

    async def _relay(self, resp: httpx.Response, lease: Lease, model: str, path: str,
                     unresumable: str) -> AsyncIterator[bytes]:
        """Upstream bytes, as they come, for a stream that cannot be resumed (`unresumable`
        says why). Ends with an SSE error event if the backend dies."""
        try:
            async for chunk in resp.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            self.balancer.mark_down(lease.url)
            log.warning("model %s: %s failed mid-stream (not resumable: %s): %r",
                        model, lease.url, unresumable, exc)
            self.resume_metrics.count_failure(model, path, "unsupported")
            yield self._failed_event(model, type(exc).__name__, unresumable)
        finally:
            lease.release()

    def _failed_event(self, model: str, failure: str, why: str) -> bytes:
        error = openai_error(
            f"The backend serving `{model}` failed mid-stream ({failure}); "
            f"not resumed: {why}.", "server_error", code="backend_failed",
        )
        return b"\n\ndata: " + json.dumps(error).encode() + b"\n\n"

    def _why_not_again(self, resumes: int, started: float) -> str | None:
        """The bounds on resuming one request: None, or the failure reason."""
        if resumes >= self.config.max_resumes:
            return "limit"
        if time.monotonic() - started > self.config.request_deadline_s:
            return "deadline"
        return None

    async def _resumable_relay(
        self, resp: httpx.Response, lease: Lease, model: str, path: str,
        headers: dict[str, str], plan: ResumePlan, started: float,
    ) -> AsyncIterator[bytes]:
        """One client stream over upstream streams: the first, then continuations on other
        backends when one breaks (see `resume.StreamSplicer`), each event relayed as soon as it
        is whole."""
        splicer = StreamSplicer(plan)
        broke_at: float | None = None  # when the stream being resumed broke
        try:
            while True:
                failure = "the stream ended early"
                try:
                    async for chunk in resp.aiter_raw():
                        out = splicer.feed(chunk)
                        if out and broke_at is not None:
                            self.resume_metrics.observe(model, time.monotonic() - broke_at)
                            broke_at = None
                        for piece in out:
                            yield piece
                        if splicer.broken:
                            break
                except httpx.HTTPError as exc:
                    failure = type(exc).__name__
                splicer.upstream_ended()
                if splicer.done:
                    return
                failure = splicer.broken or failure
                self.balancer.mark_down(lease.url)
                log.warning("model %s: %s failed mid-stream after %d tokens: %s",
                            model, lease.url, len(splicer.sent_ids), failure)
                await _close(resp, lease)
                if splicer.finished:  # the whole answer is out; only its trailer is missing
                    for piece in splicer.closing():
                        yield piece
                    return
                broke_at = broke_at or time.monotonic()
                opened = await self._resume(splicer, model, headers, started)
                if isinstance(opened, tuple) and isinstance(opened[0], str):
                    reason, detail = opened
                    self.resume_metrics.count_failure(model, path, reason)
                    yield self._failed_event(model, failure, detail)
                    return
                resp, lease = opened
                self.resume_metrics.count_resume(model, path)
                log.info("model %s: resuming on %s after %d tokens (resume %d)",
                         model, lease.url, len(splicer.sent_ids), splicer.resumes)
        finally:
            await _close(resp, lease)

    async def _resume(
        self, splicer: StreamSplicer, model: str, headers: dict[str, str], started: float
    ) -> tuple[httpx.Response, Lease] | tuple[str, str]:
        """The next upstream of a broken stream, or (failure reason, detail for the client)."""
        detail = splicer.why_not_resumable()
        if detail is not None:
            return "unsupported", detail
        reason = self._why_not_again(splicer.resumes, started)
        if reason is not None:
            return reason, {"limit": f"{splicer.resumes} resume(s) already, the limit",
                            "deadline": "past the request's deadline"}[reason]
        path, body = splicer.continuation()
        opened = await self._open_continuation(model, path, body, headers)
        return ("no_backend", opened) if isinstance(opened, str) else opened

    async def _open_continuation(
        self, model: str, path: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[httpx.Response, Lease] | str:
        """A streaming 200 from a ready backend of `model` (the table as it is now), or why
        none answered."""
        route = self.source.table().get(model)
        backends = route.backends if route is not None else ()
        content = json.dumps(body).encode()
        failures: list[str] = []
        for url in self.balancer.order(backends)[: self.config.max_attempts]:
            lease = self.balancer.acquire(url)
            upstream = self.client.build_request("POST", url + path, content=content,
                                                 headers=headers)
            try:
                resp = await self.client.send(upstream, stream=True)
            except httpx.HTTPError as exc:
                lease.release()
                self.balancer.mark_down(url)
                failures.append(f"{url}: {type(exc).__name__}")
                continue
            if resp.status_code != 200:
                text = ""
                with contextlib.suppress(httpx.HTTPError):
                    text = (await resp.aread()).decode(errors="replace")[:300]
                await _close(resp, lease)
                failures.append(f"{url}: HTTP {resp.status_code} {text}")
                if resp.status_code < 500:
                    break  # the continuation itself was refused: another pod would too
                continue
            self.balancer.mark_up(url)
            return resp, lease
        return "no ready backend took the continuation (" + "; ".join(failures or ["none"]) + ")"


async def _close(resp: httpx.Response, lease: Lease) -> None:
    lease.release()
    with contextlib.suppress(Exception):
        await resp.aclose()


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
    keys = gateway.config.api_keys
    if keys is not None:  # outermost: nothing (not even a 404) answers without a key
        app.add_middleware(RequireApiKey, keys=keys,
                           on_refused=lambda path: gateway._count(
                               "", path if path in PROXIED_PATHS else "other", 401))
    return app
