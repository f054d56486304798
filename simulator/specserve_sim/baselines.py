"""Autoscaling baselines SpecServe's joint control is measured against
(docs/simulator-control.md, "Baselines").

Each is a simulator `Controller`: every `interval_s` it gets a `Window` and answers a replica
count; none of them touches the policy (the engines keep whatever K rule they run). The
decisions are pure functions, the classes only keep the memory between calls.

FixedReplicas
    A constant count (provisioned for the peak).

HpaInflight: the Kubernetes HorizontalPodAutoscaler on in-flight requests per pod, the way
KEDA's Prometheus scaler feeds it (an External metric, `sum(vllm:num_requests_running +
vllm:num_requests_waiting)`, target type AverageValue). The facts used, from the Kubernetes
HPA documentation and the autoscaling/v2 API reference:
    desired = ceil(current * metric / target)   (for AverageValue: ceil(total / target per pod))
    no change while |metric / target - 1| <= tolerance, 0.1 by default
    scale-down stabilisation: the highest recommendation of the last 300 s (default window);
    scale-up has no stabilisation window by default
    default rate policies: up by at most max(100 %, 4 pods), down by at most 100 %, per 15 s
    the controller re-evaluates every 15 s (--horizontal-pod-autoscaler-sync-period)

DynamoPlanner: an SLA planner in the style of NVIDIA Dynamo's (throughput-based scaling),
here for aggregated replicas (one decode pool). The facts used, from Dynamo's planner design
docs: every `adjustment_interval` it reads the request count, mean ISL/OSL and the mean TTFT
and ITL over the interval; it keeps correction factors observed / expected (the expectation
interpolated from a pre-deployment profile); a load predictor (constant, ARIMA, Prophet)
forecasts the next interval's request count and lengths; the replica count is the predicted
token demand divided by the profiled throughput per replica at the ITL target, corrected, and
applied without further stabilisation. The profile is taken at one static K (the planner knows
nothing of a K that changes with load), the predictor here is "ARIMA-lite": the mean of the last
intervals plus their linear trend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from specserve_sim.interface import ControlDecision, Window

# ------------------------------------------------------------------------------ fixed


@dataclass
class FixedReplicas:
    replicas: int
    interval_s: float = 30.0

    def decide(self, now: float, window: Window) -> ControlDecision:
        return ControlDecision(replicas=self.replicas, reason=f"fixed at {self.replicas}")


# ------------------------------------------------------------------------------ HPA


@dataclass(frozen=True)
class HpaConfig:
    target_per_pod: float  # in-flight requests per pod the HPA aims at (the AverageValue)
    min_replicas: int = 1
    max_replicas: int = 32
    tolerance: float = 0.1
    down_window_s: float = 300.0
    up_window_s: float = 0.0
    up_percent: float = 100.0  # per period
    up_pods: int = 4  # per period
    down_percent: float = 100.0  # per period


def hpa_recommendation(total: float, current: int, cfg: HpaConfig) -> int:
    """The HPA's raw recommendation for an AverageValue metric summed over pods: `current`
    when the per-pod value is within the tolerance of the target."""
    if current <= 0:
        return max(cfg.min_replicas, 1)
    ratio = total / (cfg.target_per_pod * current)
    if abs(ratio - 1.0) <= cfg.tolerance:
        return current
    return math.ceil(total / cfg.target_per_pod - 1e-9)


def hpa_stabilise(raw: int, current: int, history: Sequence[tuple[float, int]], now: float,
                  cfg: HpaConfig) -> int:
    """Stabilisation windows, then the rate policies, then min..max (the HPA's order).

    `history` holds the earlier recommendations (time, replicas) and this one."""
    up_recs = [r for t, r in history if now - t <= cfg.up_window_s] or [raw]
    down_recs = [r for t, r in history if now - t <= cfg.down_window_s] or [raw]
    desired = raw
    if raw > current:
        desired = max(current, min(up_recs))
        limit = max(math.ceil(current * (1 + cfg.up_percent / 100)), current + cfg.up_pods)
        desired = min(desired, limit)
    elif raw < current:
        desired = min(current, max(down_recs))
        desired = max(desired, math.floor(current * (1 - cfg.down_percent / 100)))
    return min(max(desired, cfg.min_replicas), cfg.max_replicas)


@dataclass
class HpaInflight:
    config: HpaConfig
    interval_s: float = 15.0
    history: list[tuple[float, int]] = field(default_factory=list)
    current: int | None = None

    def decide(self, now: float, window: Window) -> ControlDecision:
        cfg = self.config
        pods = [r for r in window.replicas if not r.draining]
        # The scale subresource's count: what the HPA set last (pods asked for).
        current = self.current if self.current is not None else len(pods)
        scraped = [r for r in pods if r.ready]
        total = float(sum(r.running + r.waiting for r in scraped))
        if not scraped:
            return ControlDecision(replicas=current, reason="hpa: no metric, holding")
        raw = hpa_recommendation(total, current, cfg)
        keep = max(cfg.down_window_s, cfg.up_window_s)
        self.history = [(t, r) for t, r in self.history if now - t <= keep] + [(now, raw)]
        desired = hpa_stabilise(raw, current, self.history, now, cfg)
        self.current = desired
        return ControlDecision(replicas=desired, reason=(
            f"hpa: in-flight {total:.0f} over {current} pods (target {cfg.target_per_pod:g}/pod):"
            f" raw {raw} -> {desired}"))


# ------------------------------------------------------------------------------ Dynamo-style


@dataclass(frozen=True)
class ProfilePoint:
    """One pre-deployment measurement: a replica at `batch` concurrent decodes."""

    batch: int
    itl_s: float  # mean inter-token latency per request
    tokens_per_s: float  # output tokens per second of the replica


def static_k_profile(step_seconds: Callable[[int, int, float], float], k: int,
                     acceptance: float, context_len: float,
                     batches: Sequence[int]) -> list[ProfilePoint]:
    """The profile a pre-deployment sweep at static K measures: at batch b one step takes
    `step_seconds(b, k, context_len)` and yields 1 + a + ... + a^k tokens per request in
    expectation (a = per-token acceptance)."""
    per_request = 1.0 + sum(acceptance ** j for j in range(1, k + 1))
    out = []
    for b in sorted(set(batches)):
        step = step_seconds(b, k, context_len)
        out.append(ProfilePoint(b, step / per_request, b * per_request / step))
    return out


def _interp(points: Sequence[ProfilePoint], batch: float, attr: str) -> float:
    xs = [p.batch for p in points]
    ys = [getattr(p, attr) for p in points]
    if batch <= xs[0]:
        return ys[0]
    for i in range(1, len(xs)):
        if batch <= xs[i]:
            f = (batch - xs[i - 1]) / (xs[i] - xs[i - 1])
            return ys[i - 1] + f * (ys[i] - ys[i - 1])
    return ys[-1]


def expected_itl(points: Sequence[ProfilePoint], batch: float) -> float:
    """ITL the profile expects at a mean batch (interpolated, clamped to the profiled range)."""
    return _interp(points, batch, "itl_s")


def throughput_at_itl(points: Sequence[ProfilePoint], itl_target_s: float) -> float:
    """Tokens/s per replica at the largest profiled load whose ITL meets the target
    (interpolated between the two profile points around it); the smallest batch's
    throughput when none meets it."""
    ok = [p for p in points if p.itl_s <= itl_target_s]
    if not ok:
        return points[0].tokens_per_s
    best = max(ok, key=lambda p: p.batch)
    above = [p for p in points if p.batch > best.batch]
    if not above or above[0].itl_s <= best.itl_s:
        return best.tokens_per_s
    nxt = above[0]
    f = (itl_target_s - best.itl_s) / (nxt.itl_s - best.itl_s)
    return best.tokens_per_s + f * (nxt.tokens_per_s - best.tokens_per_s)


def predict_next(values: Sequence[float], horizon: int = 1) -> float:
    """ARIMA-lite: the mean of the recent values plus their least-squares trend, `horizon`
    intervals past the last, never below 0. One value: constant."""
    n = len(values)
    if n == 0:
        return 0.0
    if n == 1:
        return max(values[0], 0.0)
    mean_x = (n - 1) / 2
    mean_y = sum(values) / n
    sxx = sum((i - mean_x) ** 2 for i in range(n))
    slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sxx
    return max(mean_y + slope * (n - 1 - mean_x + horizon), 0.0)


def planner_replicas(predicted_requests: float, predicted_osl: float, interval_s: float,
                     per_replica_tokens_s: float, min_replicas: int, max_replicas: int) -> int:
    """Replicas for the predicted token demand of the next interval."""
    demand = predicted_requests * predicted_osl / max(interval_s, 1e-9)
    need = math.ceil(demand / max(per_replica_tokens_s, 1e-9) - 1e-9)
    return min(max(need, min_replicas), max_replicas)


@dataclass
class DynamoPlanner:
    profile: list[ProfilePoint]
    itl_target_s: float
    min_replicas: int = 1
    max_replicas: int = 32
    interval_s: float = 60.0  # adjustment_interval
    lookback: int = 4  # intervals the predictor fits
    correction_bounds: tuple[float, float] = (0.5, 4.0)
    requests: list[float] = field(default_factory=list)
    osls: list[float] = field(default_factory=list)
    correction: float = 1.0

    def decide(self, now: float, window: Window) -> ControlDecision:
        done = window.finished
        self.requests = [*self.requests, float(window.arrivals)][-self.lookback:]
        if done:
            osl = sum(r.output_tokens for r in done) / len(done)
            self.osls = [*self.osls, osl][-self.lookback:]
        tpots = [t for t in (r.tpot for r in done) if t is not None]
        decoding = [s.batch for s in window.steps]
        if tpots and decoding:
            observed = sum(tpots) / len(tpots)
            expected = expected_itl(self.profile, sum(decoding) / len(decoding))
            lo, hi = self.correction_bounds
            self.correction = min(max(observed / expected, lo), hi)
        # The corrected ITL target: the profile's ITL has to come in under target/correction.
        per_replica = throughput_at_itl(self.profile, self.itl_target_s / self.correction)
        next_req = predict_next(self.requests)
        next_osl = predict_next(self.osls) if self.osls else 0.0
        desired = planner_replicas(next_req, next_osl, self.interval_s, per_replica,
                                   self.min_replicas, self.max_replicas)
        return ControlDecision(replicas=desired, reason=(
            f"planner: next {next_req:.0f} req x {next_osl:.0f} tok in {self.interval_s:.0f}s, "
            f"{per_replica:.0f} tok/s/replica (correction x{self.correction:.2f}) -> {desired}"))
