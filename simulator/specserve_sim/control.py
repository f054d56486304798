"""The operator's own SLO loop on simulated windows: metrics -> `SloSnapshot` -> tuning + autoscale.

Nothing here decides anything. `snapshot_from_window` computes, from the requests and steps a
simulated window holds, the numbers the operator's PromQL would compute from the engines'
metrics (prometheus.build_queries), shapes them as Prometheus query results and hands them to
the operator's own `prometheus.assemble`; `SpecServeController` runs the operator's
`tuning.decide` and `slo_loop.scale_decision` (the same functions, with their hysteresis and
stabilisation memory) on that snapshot every loop interval.

What Prometheus would see, and how it is reproduced:

    histograms   TTFT and TPOT per finished request, counted into vLLM's own buckets (vLLM 0.32:
                 `histogram_buckets("time_to_first_token")` / `("inter_token_latency")`); the
                 quantiles by Prometheus' `histogram_quantile` rule (linear inside a bucket,
                 the last finite bound when the rank falls in +Inf), attainment by the
                 operator's `fraction_at_most` on the same buckets
    rates        counts over the query window divided by its length (Prometheus' `rate()`
                 extrapolates to the window edges from its scrape phase; exact counts are the
                 limit it tends to with 1 s scrapes)
    ratios       sum / sum over the window (acceptance, mean K, step times, tokens per
                 request); 0/0 is NaN, which the operator reads as "no value"
    gauges       running and waiting summed over the scraped pods at the window's end
    targets      every pod that exists (a starting pod is listed but not yet up: vLLM serves
                 /metrics only once loaded), scraped = ready or draining

The query window (`SPECSERVE_SLO_WINDOW`, default 2m) is longer than the loop interval (30 s):
the controller keeps the last windows the cluster hands it and merges those inside it, as a
`[2m]` range does.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from specserve_engine.policy.params import ModelParams, Policy
from specserve_operator.autoscale import Recommendation, ScaleDecision
from specserve_operator.config import LoopConfig
from specserve_operator.manifests import policy_from_spec
from specserve_operator.prometheus import SloSnapshot, assemble
from specserve_operator.slo_loop import scale_decision
from specserve_operator.spec import SpecServeDeploymentSpec
from specserve_operator.tuning import TuningDecision, TuningState, duration_seconds
from specserve_operator.tuning import decide as decide_tuning
from specserve_sim.interface import ControlDecision, RequestRecord, StepRecord, Window

# vLLM 0.32's histogram buckets (vllm.v1.metrics.loggers.histogram_buckets): the resolution
# the operator's quantiles and attainment have.
TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
TPOT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0)
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


# ------------------------------------------------------------------ Prometheus' arithmetic


def cumulative_buckets(values: Iterable[float], bounds: Sequence[float]
                       ) -> list[tuple[float, float]]:
    """[(upper bound, observations <= bound)] with +Inf last, as a histogram's `_bucket`s."""
    xs = sorted(values)
    out, i = [], 0
    for b in bounds:
        while i < len(xs) and xs[i] <= b:
            i += 1
        out.append((b, float(i)))
    out.append((math.inf, float(len(xs))))
    return out


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile on cumulative buckets (+Inf last): None when empty.

    The rank q * total is located in its bucket and interpolated linearly between the bucket's
    bounds (the first bucket's lower bound is 0); a rank in the +Inf bucket gives the highest
    finite bound."""
    if len(buckets) < 2 or buckets[-1][0] != math.inf:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == math.inf:
                return lo_bound
            if count == lo_count:
                return bound
            return lo_bound + (bound - lo_bound) * (rank - lo_count) / (count - lo_count)
        lo_bound, lo_count = bound, count
    return lo_bound


def _vector(value: float | None) -> dict[str, Any]:
    """An instant-vector query result: empty for None (no series), "NaN" for 0/0."""
    if value is None:
        return {"resultType": "vector", "result": []}
    text = "NaN" if math.isnan(value) else repr(float(value))
    return {"resultType": "vector", "result": [{"metric": {}, "value": [0, text]}]}


def _bucket_vector(buckets: Sequence[tuple[float, float]], seconds: float) -> dict[str, Any]:
    """`sum by (le) (rate(x_bucket[w]))` as Prometheus answers it."""
    return {"resultType": "vector", "result": [
        {"metric": {"le": "+Inf" if b == math.inf else repr(b)}, "value": [0, repr(c / seconds)]}
        for b, c in buckets]}


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


# ------------------------------------------------------------------------- the snapshot


def merge_windows(windows: Sequence[Window]) -> Window:
    """Consecutive windows as one (a longer range): their requests, steps and arrivals; the
    gauges and the policy of the last."""
    if not windows:
        raise ValueError("no window to merge")
    last = windows[-1]
    return Window(start=windows[0].start, end=last.end,
                  finished=[r for w in windows for r in w.finished],
                  steps=[s for w in windows for s in w.steps],
                  arrivals=sum(w.arrivals for w in windows), replicas=last.replicas,
                  in_flight=last.in_flight, policy=last.policy, held=last.held)


def promql_results(window: Window) -> dict[str, dict[str, Any] | None]:
    """What each query of `prometheus.build_queries` (without the gateway's) would answer over
    `window` (module doc)."""
    seconds = max(window.end - window.start, 1e-9)
    scraped = [r for r in window.replicas if not r.starting]
    out: dict[str, dict[str, Any] | None] = {
        "targets": _vector(float(len(window.replicas))) if window.replicas else _vector(None),
        "pods_scraped": _vector(float(len(scraped))) if scraped else _vector(None),
    }
    if not scraped:
        # No pod is up: every engine series is absent (Prometheus answers empty vectors).
        for key in ("request_rate", "running", "waiting", "output_tokens_per_request",
                    "prompt_tokens_per_request", "acceptance_rate", "mean_k", "step_rate",
                    "step_predicted_mean_s", "step_observed_mean_s"):
            out[key] = _vector(None)
        for prefix in ("ttft", "tpot"):
            out[f"{prefix}_buckets"] = {"resultType": "vector", "result": []}
            for name in QUANTILES:
                out[f"{prefix}_{name}_s"] = _vector(None)
        return out
    done: list[RequestRecord] = window.finished
    steps: list[StepRecord] = window.steps
    ttfts = [r.ttft for r in done if r.ttft is not None]
    tpots = [r.tpot for r in done if r.tpot is not None]
    for prefix, values, bounds in (("ttft", ttfts, TTFT_BUCKETS), ("tpot", tpots, TPOT_BUCKETS)):
        buckets = cumulative_buckets(values, bounds)
        out[f"{prefix}_buckets"] = _bucket_vector(buckets, seconds)
        for name, q in QUANTILES.items():
            v = histogram_quantile(q, buckets)
            out[f"{prefix}_{name}_s"] = _vector(math.nan if v is None else v)
    out["request_rate"] = _vector(len(done) / seconds)
    out["running"] = _vector(float(sum(r.running for r in scraped)))
    out["waiting"] = _vector(float(sum(r.waiting for r in scraped)))
    out["output_tokens_per_request"] = _vector(
        _ratio(sum(r.output_tokens for r in done), len(done)))
    out["prompt_tokens_per_request"] = _vector(
        _ratio(sum(r.prompt_tokens for r in done), len(done)))
    out["acceptance_rate"] = _vector(
        _ratio(sum(s.accepted for s in steps), sum(s.drafted for s in steps)))
    out["mean_k"] = _vector(_ratio(sum(s.k for s in steps), len(steps)))
    out["step_rate"] = _vector(len(steps) / seconds)
    out["step_predicted_mean_s"] = _vector(
        _ratio(sum(s.predicted_seconds for s in steps), len(steps)))
    out["step_observed_mean_s"] = _vector(_ratio(sum(s.seconds for s in steps), len(steps)))
    return out


def snapshot_from_window(window: Window, tpot_target_s: float, ttft_target_s: float,
                         namespace: str = "sim", name: str = "sim",
                         label: str | None = None) -> SloSnapshot:
    """The operator's `SloSnapshot` of `window`, through the operator's own `assemble`.

    `label`: the window as the snapshot names it (a duration `tuning` can read, e.g. "120s");
    default the window's own length."""
    seconds = window.end - window.start
    text = label or f"{max(seconds, 1e-3):.6g}s"
    return assemble(namespace, name, window.end, text, promql_results(window),
                    tpot_target_s, ttft_target_s)


# ------------------------------------------------------------------------- the controller


@dataclass(frozen=True)
class PassRecord:
    """One loop pass, for the studies' time series and for reading why it did what it did."""

    time: float
    snapshot: SloSnapshot
    tuning: TuningDecision
    scale: ScaleDecision


@dataclass
class SpecServeController:
    """The operator's SLO loop as a simulator controller (builtin autoscaling).

    `spec`: the SpecServeDeployment spec (SLO, replica bounds, speculation); `loop`: the
    operator's loop settings (tuning, autoscale, query window); `measured`: what a ready pod
    reports as its fitted model (`GET /specserve/policy`); default: the first ready replica's
    `fitted` in the window, as `push.fetch_model` asks the first ready pod that answers.
    `capacity_from_pods`: the autoscaler computes capacity with that model (the operator since
    `slo_loop.capacity_model`); False is the operator before it (the ConfigMap's model).
    The policy starts as the one reconcile writes first (`manifests.policy_from_spec`) unless
    `policy` is given."""

    spec: SpecServeDeploymentSpec
    loop: LoopConfig = field(default_factory=LoopConfig)
    interval_s: float = 30.0
    policy: Policy | None = None
    measured: Callable[[], ModelParams | None] | None = None
    capacity_from_pods: bool = True
    state: TuningState = field(default_factory=TuningState)
    history: list[Recommendation] = field(default_factory=list)
    idle_since: float | None = None
    desired: int | None = None
    passes: list[PassRecord] = field(default_factory=list)
    _windows: deque[Window] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = Policy.model_validate(policy_from_spec(self.spec, version=1))

    @property
    def query_window_s(self) -> float:
        return duration_seconds(self.loop.window)

    def decide(self, now: float, window: Window) -> ControlDecision:
        assert self.policy is not None
        self._windows.append(window)
        while self._windows and self._windows[0].end <= now - self.query_window_s + 1e-9:
            self._windows.popleft()
        merged = merge_windows(list(self._windows) or [window])
        slo = self.spec.slo
        snap = snapshot_from_window(merged, slo.tpot_p90_ms / 1e3, slo.ttft_p90_ms / 1e3,
                                    label=self.loop.window)
        measured = self.measured() if self.measured is not None else next(
            (r.fitted for r in window.replicas if r.ready and r.fitted is not None), None)
        tuned = decide_tuning(snap, self.policy, self.state, now, self.loop.tuning,
                              measured=measured)
        # The Deployment's count is the last decision (the operator's memory); before the
        # first one, what the cluster runs (starting pods included: they are replicas).
        current = self.desired if self.desired is not None else sum(
            1 for r in window.replicas if not r.draining)
        scaled = scale_decision(self.spec, snap, tuned.policy, current, self.history,
                                self.idle_since, self.loop, now,
                                measured if self.capacity_from_pods else None)
        self.state, self.history = tuned.state, scaled.history
        self.idle_since, self.desired = scaled.idle_since, scaled.desired
        changed = tuned.policy != self.policy
        self.policy = tuned.policy
        self.passes.append(PassRecord(now, snap, tuned, scaled))
        return ControlDecision(replicas=scaled.desired, policy=tuned.policy if changed else None,
                               reason=f"{tuned.summary} | {scaled.reason}")


def pass_series(passes: Sequence[PassRecord]) -> list[Mapping[str, float | None]]:
    """Per pass: time, load, desired replicas, mean K and attainment as the operator saw them."""
    return [{"time": p.time, "request_rate": p.snapshot.request_rate,
             "desired": float(p.scale.desired), "mean_k": p.snapshot.mean_k,
             "attainment": p.snapshot.attainment} for p in passes]
