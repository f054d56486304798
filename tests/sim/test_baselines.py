"""The autoscaling baselines' pure rules: HPA arithmetic, the planner's profile and predictor."""

from __future__ import annotations

import math

import pytest

from specserve_engine.policy.params import Policy
from specserve_sim import baselines as b
from specserve_sim.interface import ReplicaView, RequestRecord, StepRecord, Window

HPA = b.HpaConfig(target_per_pod=10.0, min_replicas=1, max_replicas=32)


def win(t: float, in_flight_per_pod: int, pods: int, arrivals: int = 0,
        finished: list[RequestRecord] | None = None,
        steps: list[StepRecord] | None = None) -> Window:
    reps = [ReplicaView(f"p{i}", True, False, False, in_flight_per_pod, 0) for i in range(pods)]
    return Window(t - 15, t, finished or [], steps or [], arrivals, reps,
                  in_flight_per_pod * pods, Policy())


@pytest.mark.parametrize(("total", "current", "raw"), [
    (100.0, 10, 10),   # exactly at target
    (108.0, 10, 10),   # within the 10 % tolerance: no change
    (92.0, 10, 10),
    (115.0, 10, 12),   # ceil(115 / 10)
    (50.0, 10, 5),
    (0.0, 4, 0),       # min..max is applied after stabilisation
])
def test_hpa_recommendation(total: float, current: int, raw: int) -> None:
    assert b.hpa_recommendation(total, current, HPA) == raw


def test_hpa_scale_up_rate_is_double_or_four_pods() -> None:
    assert b.hpa_stabilise(100, 2, [(0.0, 100)], 0.0, HPA) == 6     # +4 beats x2 when small
    assert b.hpa_stabilise(100, 10, [(0.0, 100)], 0.0, HPA) == 20   # x2 beats +4
    assert b.hpa_stabilise(100, 20, [(0.0, 100)], 0.0, HPA) == 32   # max replicas


def test_hpa_scale_down_waits_for_the_highest_recommendation_of_300s() -> None:
    hist = [(0.0, 10), (100.0, 4), (200.0, 4)]
    assert b.hpa_stabilise(4, 10, hist, 200.0, HPA) == 10
    assert b.hpa_stabilise(4, 10, [*hist, (301.0, 4)], 301.0, HPA) == 4


def test_hpa_controller_follows_in_flight_load() -> None:
    hpa = b.HpaInflight(HPA)
    seen = []
    pods = 2
    for i in range(1, 30):
        t = 15.0 * i
        per_pod = math.ceil(240 / pods)  # 240 requests in flight, spread over the pods
        d = hpa.decide(t, win(t, per_pod, pods))
        assert d.replicas is not None
        pods = d.replicas
        seen.append(pods)
    assert seen[-1] == 24                # 240 in flight / 10 per pod
    assert seen == sorted(seen)          # never down while the load holds


def test_predictor_is_constant_on_flat_and_extrapolates_a_trend() -> None:
    assert b.predict_next([5.0, 5.0, 5.0]) == pytest.approx(5.0)
    assert b.predict_next([1.0, 2.0, 3.0, 4.0]) == pytest.approx(5.0)
    assert b.predict_next([4.0, 2.0, 0.0]) == 0.0   # never below zero
    assert b.predict_next([7.0]) == 7.0 and b.predict_next([]) == 0.0


def linear_step(batch: int, k: int, context: float) -> float:
    return 0.007 + 2e-5 * batch * (k + 1) + 4e-8 * batch * context + k * (0.001 + 3e-6 * batch)


def test_static_k_profile_is_slower_and_faster_with_batch() -> None:
    prof = b.static_k_profile(linear_step, 3, 0.7, 1000.0, [1, 8, 64, 256])
    itls = [p.itl_s for p in prof]
    thpt = [p.tokens_per_s for p in prof]
    assert itls == sorted(itls) and thpt == sorted(thpt)


def test_throughput_at_itl_grows_with_the_target() -> None:
    prof = b.static_k_profile(linear_step, 3, 0.7, 1000.0, [1, 2, 4, 8, 16, 32, 64, 128, 256])
    targets = [p.itl_s for p in prof]
    caps = [b.throughput_at_itl(prof, t * 1.01) for t in targets]
    assert caps == sorted(caps)
    # Below the smallest ITL it answers the smallest batch's throughput.
    assert b.throughput_at_itl(prof, targets[0] / 2) == prof[0].tokens_per_s


def test_planner_sizes_for_the_token_demand() -> None:
    prof = b.static_k_profile(linear_step, 3, 0.7, 1000.0, [1, 2, 4, 8, 16, 32, 64, 128, 256])
    itl_target = prof[5].itl_s  # batch 32 meets it exactly
    planner = b.DynamoPlanner(prof, itl_target, interval_s=60.0)
    per_replica = prof[5].tokens_per_s
    arrivals = round(4.5 * per_replica * 60 / 200)  # 4.5 replicas' worth of 200-token requests
    done = [RequestRecord(f"r{i}", 0.0, 0.1, 0.1 + 199 * itl_target, 100, 200, "p0")
            for i in range(50)]
    steps = [StepRecord(1.0, "p0", 32, 3, 96, 60, 0.05, 0.05) for _ in range(10)]
    d = None
    for i in range(1, 5):
        d = planner.decide(60.0 * i, win(60.0 * i, 32, 4, arrivals, done, steps))
    assert d is not None and d.replicas == 5
    assert planner.correction == pytest.approx(1.0, rel=0.05)


def test_planner_correction_adds_replicas_when_itl_runs_over_the_profile() -> None:
    prof = b.static_k_profile(linear_step, 3, 0.7, 1000.0, [1, 2, 4, 8, 16, 32, 64, 128, 256])
    itl_target = prof[5].itl_s
    steps = [StepRecord(1.0, "p0", 32, 3, 96, 60, 0.05, 0.05)]

    def replicas(observed_itl: float) -> int:
        planner = b.DynamoPlanner(prof, itl_target, interval_s=60.0)
        done = [RequestRecord("r", 0.0, 0.1, 0.1 + 199 * observed_itl, 100, 200, "p0")]
        d = planner.decide(60.0, win(60.0, 32, 4, 2000, done, steps))
        assert d.replicas is not None
        return d.replicas

    assert replicas(2 * itl_target) > replicas(itl_target)


def test_fixed_is_fixed() -> None:
    f = b.FixedReplicas(7)
    assert f.decide(30.0, win(30.0, 100, 2)).replicas == 7
