"""The operator's loop on simulated windows: the snapshot PromQL would give, and the decisions."""

from __future__ import annotations

import math

import pytest

from specserve_engine.policy.params import Policy
from specserve_operator.autoscale import AutoscaleConfig, capacity_per_replica
from specserve_operator.config import LoopConfig
from specserve_operator.prometheus import fraction_at_most
from specserve_operator.slo_loop import decide_scale
from specserve_operator.spec import SpecServeDeploymentSpec
from specserve_operator.tuning import TuningConfig
from specserve_sim import control
from specserve_sim.interface import ReplicaView, RequestRecord, StepRecord, Window


def req(i: int, arrival: float, ttft: float, tpot: float, out: int = 11,
        prompt: int = 100) -> RequestRecord:
    first = arrival + ttft
    return RequestRecord(f"r{i}", arrival, first, first + tpot * (out - 1), prompt, out, "a")


def step(t: float, k: int = 2, drafted: int = 4, accepted: int = 3, seconds: float = 0.02,
         predicted: float = 0.02, batch: int = 2) -> StepRecord:
    return StepRecord(t, "a", batch, k, drafted, accepted, seconds, predicted)


def replica(name: str = "a", ready: bool = True, starting: bool = False, running: int = 2,
            waiting: int = 0) -> ReplicaView:
    return ReplicaView(name, ready, starting, False, running, waiting)


def window(finished: list[RequestRecord], steps: list[StepRecord] | None = None,
           replicas: list[ReplicaView] | None = None, start: float = 0.0,
           end: float = 30.0) -> Window:
    return Window(start=start, end=end, finished=finished, steps=steps or [],
                  arrivals=len(finished), replicas=[replica()] if replicas is None else replicas,
                  in_flight=0, policy=Policy())


SPEC = SpecServeDeploymentSpec.model_validate({
    "model": {"target": "tiny", "draft": "tiny-draft"},
    "slo": {"tpotP90Ms": 50, "ttftP90Ms": 1000, "ttftP99Ms": 5000, "attainment": 0.9},
    "replicas": {"min": 1, "max": 16, "initial": 1},
    "autoscaling": {"mode": "builtin"},
})


# ----------------------------------------------------------------- Prometheus' arithmetic


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    """Ten observations in (0.025, 0.05]: the median is halfway through that bucket."""
    buckets = control.cumulative_buckets([0.03] * 10, control.TPOT_BUCKETS)
    assert control.histogram_quantile(0.5, buckets) == pytest.approx(0.0375)


def test_histogram_quantile_in_the_inf_bucket_is_the_last_finite_bound() -> None:
    buckets = control.cumulative_buckets([1e6] * 3, control.TPOT_BUCKETS)
    assert control.histogram_quantile(0.9, buckets) == control.TPOT_BUCKETS[-1]


def test_histogram_quantile_of_nothing_is_none() -> None:
    assert control.histogram_quantile(0.9, control.cumulative_buckets([], (0.1, 1.0))) is None


def test_quantiles_are_ordered() -> None:
    values = [0.001 * i for i in range(1, 400)]
    buckets = control.cumulative_buckets(values, control.TPOT_BUCKETS)
    qs = [control.histogram_quantile(q, buckets) for q in (0.5, 0.9, 0.99)]
    assert qs == sorted(qs)


# ----------------------------------------------------------------- the snapshot


def test_snapshot_counts_like_the_promql() -> None:
    """Rates over the window, ratios of sums, gauges summed over scraped pods, and attainment
    exact when the target is a bucket bound."""
    fast = [req(i, 0.5 * i, 0.2, 0.02) for i in range(12)]       # TPOT 20 ms
    slow = [req(100 + i, 0.5 * i, 0.2, 0.07) for i in range(4)]  # TPOT 70 ms
    steps = [step(1.0 + i, k=2 + i % 2, drafted=4, accepted=1 + i % 3) for i in range(30)]
    reps = [replica("a", running=3, waiting=1), replica("b", running=2),
            replica("c", ready=False, starting=True, running=0)]
    w = window(fast + slow, steps, reps)
    s = control.snapshot_from_window(w, tpot_target_s=0.05, ttft_target_s=1.0)
    assert s.state == "ok", s.reasons
    assert s.request_rate == pytest.approx(16 / 30)
    assert s.targets == 3 and s.pods_scraped == 2
    assert s.running == 5 and s.waiting == 1
    assert s.acceptance_rate == pytest.approx(sum(x.accepted for x in steps)
                                              / sum(x.drafted for x in steps))
    assert s.mean_k == pytest.approx(sum(x.k for x in steps) / len(steps))
    assert s.step_rate == pytest.approx(30 / 30)
    assert s.output_tokens_per_request == 11 and s.prompt_tokens_per_request == 100
    assert s.tpot_attainment == pytest.approx(12 / 16)   # 0.05 is a bucket bound
    assert s.ttft_attainment == pytest.approx(1.0)
    assert s.tpot_p50_s is not None and 0.01 < s.tpot_p50_s <= 0.025
    assert s.tpot_p99_s is not None and 0.05 < s.tpot_p99_s <= 0.075


def test_attainment_between_bounds_is_the_operators_interpolation() -> None:
    """Off a bound, attainment is what the operator reads from the buckets, not the exact
    fraction (the simulated operator sees what the real one would)."""
    done = [req(i, 0.0, 0.1, 0.012 + 0.001 * i) for i in range(10)]
    s = control.snapshot_from_window(window(done), tpot_target_s=0.016, ttft_target_s=1.0)
    buckets = control.cumulative_buckets([r.tpot for r in done if r.tpot], control.TPOT_BUCKETS)
    assert s.tpot_attainment == pytest.approx(fraction_at_most(buckets, 0.016))
    exact = sum(1 for r in done if r.tpot is not None and r.tpot <= 0.016) / len(done)
    assert s.tpot_attainment != pytest.approx(exact)


def test_no_scraped_pod_is_no_data() -> None:
    s = control.snapshot_from_window(window([], replicas=[replica(ready=False, starting=True)]),
                                     0.05, 1.0)
    assert s.state == "noData" and s.no_data_reason == "TargetsDown"
    s = control.snapshot_from_window(window([], replicas=[]), 0.05, 1.0)
    assert s.state == "noData" and s.no_data_reason == "NoTargets"


def test_idle_pods_are_an_observed_zero() -> None:
    s = control.snapshot_from_window(window([], replicas=[replica(running=0)]), 0.05, 1.0)
    assert s.state == "ok" and s.request_rate == 0 and s.tpot_p90_s is None
    assert s.acceptance_rate is None and s.mean_k is None  # 0/0 reads as no value


def test_merged_windows_are_one_range() -> None:
    a = window([req(1, 0.0, 0.1, 0.02)], [step(5.0)], start=0.0, end=30.0)
    b = window([req(2, 31.0, 0.1, 0.02)], [step(35.0), step(36.0)],
               replicas=[replica(running=7)], start=30.0, end=60.0)
    m = control.merge_windows([a, b])
    assert (m.start, m.end, len(m.finished), len(m.steps), m.arrivals) == (0.0, 60.0, 2, 3, 2)
    assert m.replicas == b.replicas


# ----------------------------------------------------------------- the controller


def busy_window(t: float, rate: float, tpot: float, pods: int) -> Window:
    n = round(rate * 30)
    done = [req(int(t) * 10_000 + i, t - 30 + 30 * i / max(n, 1), 0.2, tpot, out=100)
            for i in range(n)]
    steps = [step(t - 30 + 0.1 * i, batch=8) for i in range(300)]
    reps = [replica(f"p{j}", running=8) for j in range(pods)]
    return window(done, steps, reps, start=t - 30, end=t)


def heavy(ctl: control.SpecServeController, times: float = 3.0) -> float:
    """A request rate `times` what one replica serves by the controller's own capacity."""
    assert ctl.policy is not None
    cap = capacity_per_replica(ctl.policy, 0.75, 100.0, 150.0).requests_per_s
    return times * cap


def test_controller_decides_as_the_operator_would() -> None:
    """The controller's replica decision is the operator's `decide_scale` on the same
    snapshot and the status the operator would have written."""
    ctl = control.SpecServeController(SPEC, loop=LoopConfig(window="30s"))
    w = busy_window(30.0, rate=heavy(ctl), tpot=0.03, pods=1)
    d = ctl.decide(30.0, w)
    snap = ctl.passes[-1].snapshot
    old = {"autoscale": {"mode": "builtin", "desired": 1, "recommendations": []}}
    expected = decide_scale(SPEC, snap, ctl.passes[-1].tuning.policy, old, ctl.loop, 30.0)
    assert d.replicas == expected.desired and expected.desired > 1
    assert ctl.passes[-1].scale.reason == expected.reason


def test_controller_scales_up_then_waits_the_down_window() -> None:
    ctl = control.SpecServeController(SPEC, loop=LoopConfig(window="30s"))
    counts = []
    high = heavy(ctl, 6.0)
    for i in range(1, 25):
        t = 30.0 * i
        rate = high if i <= 8 else 1.0
        d = ctl.decide(t, busy_window(t, rate, 0.03, pods=ctl.desired or 1))
        counts.append((t, d.replicas))
    peak = max(c for _, c in counts)
    assert peak > 2
    drop = next(t for t, c in counts if t > 240 and c is not None and c < peak)
    # The load fell after t=240: no scale-down before the 300 s down window has passed.
    assert drop - 240 >= ctl.loop.autoscale.down_window_s - 30


def test_controller_tightens_the_policy_when_tpot_stays_over_target() -> None:
    loop = LoopConfig(window="30s", tuning=TuningConfig(cooldown_s=0.0))
    ctl = control.SpecServeController(SPEC, loop=loop)
    start = ctl.policy
    assert start is not None
    decisions = [ctl.decide(30.0 * i, busy_window(30.0 * i, 5.0, 0.09, pods=2))
                 for i in range(1, 4)]
    pushed = [d.policy for d in decisions if d.policy is not None]
    assert pushed, [d.reason for d in decisions]
    assert pushed[-1].tpot_headroom < start.tpot_headroom
    assert pushed[-1].version > start.version


def test_controller_holds_without_data() -> None:
    ctl = control.SpecServeController(SPEC, loop=LoopConfig(window="30s"))
    d = ctl.decide(30.0, window([], replicas=[replica(ready=False, starting=True)] * 3))
    assert d.replicas == 3 and d.policy is None


def test_pass_series_has_one_point_per_pass() -> None:
    ctl = control.SpecServeController(SPEC, loop=LoopConfig(window="30s"))
    for i in range(1, 4):
        ctl.decide(30.0 * i, busy_window(30.0 * i, 4.0, 0.02, pods=1))
    series = control.pass_series(ctl.passes)
    assert [p["time"] for p in series] == [30.0, 60.0, 90.0]
    assert all(p["request_rate"] is not None and not math.isnan(p["request_rate"])
               for p in series)


def test_capacity_follows_the_model_the_pods_report() -> None:
    """With a pod reporting a model twice as slow as the ConfigMap's, the controller sizes for
    the pods' model (more replicas); the pre-change operator sized for the ConfigMap's."""
    spec_policy = control.SpecServeController(SPEC).policy
    assert spec_policy is not None
    base = spec_policy.model
    slow = base.model_copy(update={
        "target": base.target.model_copy(update={"overhead_s": 2 * base.target.overhead_s,
                                                 "per_token_s": 2 * base.target.per_token_s}),
        "source": "pod profile"})

    # Decode-only capacity, as `heavy` computes it: this test isolates the model's source.
    loop = LoopConfig(window="30s", autoscale=AutoscaleConfig(price_prefill=False))

    def replicas(from_pods: bool) -> int:
        ctl = control.SpecServeController(SPEC, loop=loop,
                                          measured=lambda: slow, capacity_from_pods=from_pods)
        d = ctl.decide(30.0, busy_window(30.0, heavy(ctl, 1.5), 0.03, pods=2))
        assert d.replicas is not None
        return d.replicas

    assert replicas(True) > replicas(False)
