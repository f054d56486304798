"""Holding requests for a model that has no ready backend yet (scale from zero).

A model in the route table with no ready pod (scaled to zero, or every pod still loading) does
not answer 503 at once: the request waits here until the route source swaps in a table where
the model has a backend, then goes on as usual. The wait is bounded twice per model:

    max_queued   requests held at once per model; one more is refused at once (503)
    max_wait_s   longest hold; then 503 with Retry-After

Every answer the hold ends in is OpenAI's error shape with code `backend_unavailable` and a
`Retry-After` header, so the official clients treat it as a retryable server error.

Sources that can say when their table changes (`sources.Notifying`: every source here)
wake the waiters at once; every waiter also re-reads the table every `recheck_s` seconds, so a
source that cannot notify costs at most that much latency. The re-check also notices a client
that went away (its slot is freed, outcome `disconnected`).

The demand is exported so that something can act on it (the operator's SLO loop scales a
deployment from zero when it sees held requests; see docs/slo-loop.md):

    specserve_gateway_held_requests{model}          gauge: requests held now; a series for
                                                    every model in the table (0 when none), so
                                                    "no series" means "this gateway does not
                                                    know the model", not "no demand"
    specserve_gateway_holds_total{model,outcome}    counter: requests that found no ready
                                                    backend, by how the hold ended: routed,
                                                    timeout, queue_full, disconnected, removed
                                                    (the model left the table: 404)

Both live on the gateway's registry (`Holding(registry=...)`); `export` brings them up to the
route table at each scrape. `Holding.hold` is the only I/O-facing part (it awaits); the
decision of one re-check (`hold_step`) is a pure function of the route, the time waited and the
client's presence.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge

from specserve_contract.metrics import GATEWAY_HELD, GATEWAY_HOLDS
from specserve_gateway.routing import Route, backend_unavailable

Outcome = Literal["routed", "timeout", "queue_full", "disconnected", "removed"]
OUTCOMES: tuple[Outcome, ...] = ("routed", "timeout", "queue_full", "disconnected", "removed")


@dataclass(frozen=True)
class HoldConfig:
    max_queued: int = 64  # per model; 0: never hold (503 at once, still counted as demand)
    max_wait_s: float = 120.0
    recheck_s: float = 0.5


@dataclass(frozen=True)
class HoldResult:
    outcome: Outcome
    route: Route | None  # the route with backends when routed, else None
    waited_s: float

    def error(self, model: str, config: HoldConfig) -> dict[str, object]:
        """The OpenAI-shaped body of a hold that did not end in a backend (not `removed`)."""
        detail = {
            "timeout": f"no ready replica came up within {config.max_wait_s:g}s",
            "queue_full": (f"no ready replicas and {config.max_queued} requests already waiting"
                           if config.max_queued else "no ready replicas"),
            "disconnected": "the client went away while waiting for a ready replica",
        }.get(self.outcome, "no ready replicas")
        return backend_unavailable(model, detail)


def hold_step(route: Route | None, waited_s: float, gone: bool,
              config: HoldConfig) -> Outcome | None:
    """One re-check of a held request: how the hold ends now, or None to keep waiting."""
    if route is None:
        return "removed"
    if route.backends:
        return "routed"
    if gone:
        return "disconnected"
    if waited_s >= config.max_wait_s:
        return "timeout"
    return None


class Holding:
    """Held requests of one gateway (one event loop): per-model counts, outcomes, wake-ups.
    The two metrics go on `registry` (None: kept unregistered)."""

    def __init__(self, config: HoldConfig | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or HoldConfig()
        self.clock = clock
        self.held: dict[str, int] = {}  # model -> requests waiting now
        self.held_gauge = Gauge(GATEWAY_HELD, "Requests waiting for a ready backend.",
                                ["model"], registry=registry)
        self.holds = Counter(GATEWAY_HOLDS, "Requests that found no ready backend, by how "
                             "their hold ended.", ["model", "outcome"], registry=registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The loop the waiters run on (the gateway's, at startup)."""
        self._loop = loop
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """The route table changed: wake every waiter. Safe from any thread."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()  # later waiters wait for the next change

    def _series(self, model: str) -> None:
        """Every outcome of `model` from 0 on, so that `increase()` counts its first hold."""
        for outcome in OUTCOMES:
            self.holds.labels(model, outcome)

    def _end(self, model: str, outcome: Outcome) -> None:
        self._series(model)
        self.holds.labels(model, outcome).inc()

    async def hold(self, model: str, lookup: Callable[[], Route | None],
                   disconnected: Callable[[], Awaitable[bool]]) -> HoldResult:
        """Wait until `lookup()` gives the model a backend (or the hold ends otherwise)."""
        c = self.config
        start = self.clock()
        if self.held.get(model, 0) >= c.max_queued:
            self._end(model, "queue_full")
            return HoldResult("queue_full", None, 0.0)
        self.held[model] = self.held.get(model, 0) + 1
        outcome: Outcome = "disconnected"  # if the waiting task itself is cancelled
        try:
            while True:
                route = lookup()
                waited = self.clock() - start
                done = hold_step(route, waited, await disconnected(), c)
                if done is not None:
                    outcome = done
                    return HoldResult(done, route if done == "routed" else None, waited)
                changed = self._changed
                wait = max(0.0, min(c.recheck_s, c.max_wait_s - waited))
                if changed is None:
                    await asyncio.sleep(wait)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait)
        finally:
            left = self.held[model] - 1
            if left > 0:
                self.held[model] = left
            else:
                del self.held[model]
            self._end(model, outcome)

    def export(self, models: Iterable[str]) -> None:
        """Bring the metrics up to the route table (at each scrape): a held-requests series for
        every model in `models` or held now (0 when none is), and its outcomes from 0."""
        self.held_gauge.clear()
        for model in set(models) | set(self.held):
            self.held_gauge.labels(model).set(self.held.get(model, 0))
            self._series(model)
