"""The simulated cluster: gateway routing, replicas that start and drain, a controller loop.

- Arrivals go through the gateway's own `Balancer` (specserve_gateway/routing.py: least outstanding
  requests, then least served, then name) over the replicas that are ready and not draining.
  With none ready, requests are held at the gateway (as `holding.py` does) and sent, in arrival
  order, as soon as one is.
- Every `controller.interval_s` the controller gets a `Window` (interface.py) and its decision
  is applied: a larger replica count starts replicas that become ready after `cold_start_s`; a
  smaller one cancels starting replicas first, then drains the ready ones with the fewest
  outstanding requests (`drain=False`: they stop at once and what they held fails); a policy is
  pushed to every replica, which adopts it with the engine's `PolicyStore` rules.
- Without a controller, windows are still cut every `window_s` for the time series.
Deterministic: same inputs and seed, same result (ties in time run in scheduling order).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import replace

from specserve_engine.policy import Policy
from specserve_gateway.routing import Balancer, Lease
from specserve_sim.events import Kernel
from specserve_sim.groundtruth import GroundTruth
from specserve_sim.interface import (
    ControlDecision,
    Controller,
    RequestRecord,
    ScalingEvent,
    SeriesPoint,
    SimRequest,
    SimResult,
    StepRecord,
    Window,
)
from specserve_sim.replica import Replica, ReplicaConfig


class Cluster:
    """One deployment of `replica_config` replicas serving `requests`."""

    def __init__(
        self,
        requests: Sequence[SimRequest],
        replica_config: ReplicaConfig,
        ground_truth: GroundTruth,
        initial_replicas: int = 1,
        controller: Controller | None = None,
        cold_start_s: float = 60.0,
        drain: bool = True,
        seed: int = 0,
        *,
        window_s: float = 10.0,
        deadline_s: float | None = None,
        keep_steps: bool = True,
    ) -> None:
        if initial_replicas < 0:
            raise ValueError(f"initial_replicas must be >= 0, got {initial_replicas}")
        if initial_replicas == 0 and controller is None and requests:
            raise ValueError("no replicas and no controller to start any: nothing would run")
        self.requests = sorted(requests, key=lambda r: r.arrival)
        self.config = replica_config
        self.truth = ground_truth
        self.controller = controller
        self.cold_start_s = cold_start_s
        self.drain = drain
        self.seed = seed
        self.window_s = controller.interval_s if controller is not None else window_s
        if not self.window_s > 0:
            raise ValueError("the window / controller interval must be > 0 s")
        self.deadline_s = deadline_s
        self.keep_steps = keep_steps
        self.kernel = Kernel()
        self.balancer = Balancer(clock=lambda: self.kernel.now)
        self.policy: Policy = replica_config.policy
        self.replicas: list[Replica] = []  # every replica not yet gone (starting, ready, draining)
        self._starting: set[str] = set()
        self._born: dict[str, float] = {}
        self._replica_seconds = 0.0
        self._next_name = 0
        self._run_start = 0.0
        self._tick_pending = False
        self._held: deque[SimRequest] = deque()
        self._leases: dict[str, Lease] = {}
        self._records: dict[str, RequestRecord] = {}
        self._window_finished: list[RequestRecord] = []
        self._window_steps: list[StepRecord] = []
        self._window_arrivals = 0
        self._window_start = 0.0
        self._arrived = 0
        self._done = 0
        self.steps: list[StepRecord] = []
        self.series: list[SeriesPoint] = []
        self.scaling: list[ScalingEvent] = []
        self.decisions: list[tuple[float, ControlDecision]] = []
        for _ in range(initial_replicas):
            self._add_replica(ready=True)

    # -- replicas --

    def _add_replica(self, ready: bool) -> Replica:
        name = f"replica-{self._next_name:03d}"
        self._next_name += 1
        replica = Replica(name, self.config, self.truth, self.seed, self.policy)
        self.replicas.append(replica)
        self._born[name] = self.kernel.now
        if ready:
            replica.ready = True
        else:
            self._starting.add(name)
            self.kernel.after(self.cold_start_s, lambda: self._ready(replica))
        return replica

    def _ready(self, replica: Replica) -> None:
        if replica.name not in self._starting:
            return  # cancelled while starting
        self._starting.discard(replica.name)
        replica.ready = True
        if self.policy is not None:
            replica.push(self.policy)
        while self._held and self._routable():
            self._route(self._held.popleft())

    def _gone(self, replica: Replica) -> None:
        replica.gone = True
        self.replicas.remove(replica)
        born = self._born.pop(replica.name)
        self._replica_seconds += self.kernel.now - max(born, self._run_start)

    def _routable(self) -> list[str]:
        return [r.name for r in self.replicas if r.ready and not r.draining]

    def _by_name(self, name: str) -> Replica:
        for r in self.replicas:
            if r.name == name:
                return r
        raise KeyError(name)

    def _active(self) -> list[Replica]:
        """Replicas that count towards the replica count: starting or ready, not draining."""
        return [r for r in self.replicas if not r.draining]

    def scale_to(self, target: int, reason: str) -> None:
        active = self._active()
        current = len(active)
        target = max(0, target)
        if target == current:
            return
        self.scaling.append(ScalingEvent(self.kernel.now, current, target, reason))
        if target > current:
            for _ in range(target - current):
                self._add_replica(ready=False)
            return
        excess = current - target
        starting = [r for r in active if r.name in self._starting]
        for r in reversed(starting[-excess:] if excess < len(starting) else starting):
            self._starting.discard(r.name)
            self._gone(r)
            excess -= 1
        ready = sorted((r for r in self._active() if r.ready),
                       key=lambda r: (r.outstanding, r.name))
        for r in ready[:excess]:
            r.draining = True
            if not self.drain:
                for lost in r.abort_all():
                    self._fail(lost.request.request_id, lost.lease)
                self._gone(r)
            elif not r.has_work and not r.busy:
                self._gone(r)

    # -- requests --

    def _arrive(self, request: SimRequest) -> None:
        self._arrived += 1
        self._window_arrivals += 1
        self._records[request.request_id] = RequestRecord(
            request.request_id, request.arrival, None, None, request.prompt_tokens,
            request.output_tokens, "")
        if self._held or not self._routable():
            self._held.append(request)
        else:
            self._route(request)

    def _route(self, request: SimRequest) -> None:
        name = self.balancer.order(self._routable())[0]
        lease = self.balancer.acquire(name)
        replica = self._by_name(name)
        self._records[request.request_id] = replace(self._records[request.request_id],
                                                    replica=name)
        replica.add(request, lease)
        if not replica.busy:
            self._step(replica)

    def _fail(self, request_id: str, lease: object | None) -> None:
        if isinstance(lease, Lease):
            lease.release()
        self._done += 1  # never finishes: its record keeps finish None

    def _step(self, replica: Replica) -> None:
        if replica.gone or not replica.has_work:
            return
        seconds = replica.start_step(self.kernel.now)
        self.kernel.after(seconds, lambda: self._step_done(replica))

    def _step_done(self, replica: Replica) -> None:
        if replica.gone or not replica.busy:
            return  # killed mid-step
        done = replica.finish_step(self.kernel.now)
        for r in done:
            if isinstance(r.lease, Lease):
                r.lease.release()
        self._done += len(done)
        for rec in replica.finished:
            self._records[rec.request_id] = rec
        self._window_finished += replica.finished
        replica.finished = []
        if self.keep_steps:
            self.steps += replica.step_records
        self._window_steps += replica.step_records
        replica.step_records = []
        if replica.has_work:
            self._step(replica)
        elif replica.draining:
            self._gone(replica)

    # -- windows and the controller --

    def _window(self) -> Window:
        now = self.kernel.now
        views = [r.view(r.name in self._starting) for r in self.replicas]
        window = Window(self._window_start, now, self._window_finished, self._window_steps,
                        self._window_arrivals, views, self._arrived - self._done, self.policy,
                        len(self._held))
        self._window_finished, self._window_steps, self._window_arrivals = [], [], 0
        self._window_start = now
        return window

    def _series_point(self, w: Window) -> SeriesPoint:
        span = max(w.end - w.start, 1e-9)
        steps = w.steps
        draft_tokens = sum(s.drafted for s in steps)
        request_steps = sum(s.batch for s in steps)
        slo = self.policy.slo.tpot_seconds if self.policy is not None else None
        tpots = [r.tpot for r in w.finished]
        attainment = (sum(1 for t in tpots if t is None or t <= slo) / len(tpots)
                      if slo is not None and tpots else None)
        return SeriesPoint(
            time=w.end, arrivals_per_s=w.arrivals / span, in_flight=w.in_flight,
            ready=sum(v.ready for v in w.replicas), starting=sum(v.starting for v in w.replicas),
            draining=sum(v.draining for v in w.replicas),
            mean_k=draft_tokens / request_steps if request_steps else None,
            attainment=attainment,
            goodput_tok_s=sum(r.output_tokens for r in w.finished) / span)

    def _tick(self) -> None:
        self._tick_pending = False
        window = self._window()
        self.series.append(self._series_point(window))
        if self.controller is not None:
            decision = self.controller.decide(self.kernel.now, window)
            self.decisions.append((self.kernel.now, decision))
            if decision.policy is not None:
                self.policy = decision.policy
                for r in self.replicas:
                    r.push(decision.policy)
            if decision.replicas is not None:
                self.scale_to(decision.replicas, decision.reason)
        if not self._finished():
            self._tick_pending = True
            self.kernel.after(self.window_s, self._tick)

    def _finished(self) -> bool:
        return self._arrived == len(self.requests) and self._done >= self._arrived

    # -- run --

    def run(self) -> SimResult:
        """Serve the cluster's requests until every one has finished (or the deadline)."""
        return self._run(self.requests)

    def run_more(self, requests: Sequence[SimRequest]) -> SimResult:
        """Then serve `requests` (arrivals relative to now) on the same replicas, as the bench
        replays its levels one after another on one engine: what the replicas' policies learned
        carries over. The result covers these requests only, times relative to their start."""
        start = self.kernel.now
        shifted = sorted((SimRequest(r.request_id, start + r.arrival, r.prompt_tokens,
                                     r.output_tokens) for r in requests), key=lambda r: r.arrival)
        result = self._run(shifted)
        return shift_result(result, -start)

    def _run(self, requests: list[SimRequest]) -> SimResult:
        start = self.kernel.now
        self._run_start = start
        self._records, self._arrived, self._done = {}, 0, 0
        self.requests = requests
        self.steps, self.series, self.scaling, self.decisions = [], [], [], []
        self._replica_seconds = 0.0
        self._window_finished, self._window_steps, self._window_arrivals = [], [], 0
        self._window_start = start
        for request in requests:
            self.kernel.at(request.arrival, lambda r=request: self._arrive(r))
        if not self._tick_pending:
            self._tick_pending = True
            self.kernel.after(self.window_s, self._tick)
        end = self.kernel.run(until=self.deadline_s + start if self.deadline_s else None,
                              stop=self._finished)
        if self._window_steps or self._window_finished or self._window_arrivals:
            self.series.append(self._series_point(self._window()))
        held = self._replica_seconds + sum(end - max(self._born[r.name], start)
                                           for r in self.replicas)
        return SimResult(
            requests=[self._records.get(r.request_id) or RequestRecord(
                r.request_id, r.arrival, None, None, r.prompt_tokens, r.output_tokens, "")
                for r in requests],
            steps=self.steps, series=self.series, scaling=self.scaling,
            replica_seconds=held if math.isfinite(held) else 0.0, end_time=end,
            decisions=self.decisions)


def shift_result(result: SimResult, delta: float) -> SimResult:
    """`result` with every time moved by `delta` seconds."""
    def rec(r: RequestRecord) -> RequestRecord:
        return RequestRecord(r.request_id, r.arrival + delta,
                             None if r.first_token is None else r.first_token + delta,
                             None if r.finish is None else r.finish + delta,
                             r.prompt_tokens, r.output_tokens, r.replica)

    return SimResult(
        requests=[rec(r) for r in result.requests],
        steps=[replace(s, time=s.time + delta) for s in result.steps],
        series=[replace(p, time=p.time + delta) for p in result.series],
        scaling=[replace(e, time=e.time + delta) for e in result.scaling],
        replica_seconds=result.replica_seconds, end_time=result.end_time + delta,
        decisions=[(t + delta, d) for t, d in result.decisions])
