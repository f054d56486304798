"""Pure tests of autoscale: capacity from the efficiency model, stabilised decisions, no data."""

from __future__ import annotations

import pytest

from specserve_engine.policy.goodput import EfficiencyModel
from specserve_engine.policy.params import ModelParams, Policy, SloTargets, TimingCoefficients
from specserve_operator import autoscale
from specserve_operator.prometheus import SloSnapshot

CFG = autoscale.AutoscaleConfig(target_utilization=1.0, up_window_s=0.0, down_window_s=300.0,
                         max_up_factor=2.0)
CAP = autoscale.Capacity(requests_per_s=1.0, tokens_per_s=100.0, batch=8, k=2, tpot_s=0.05)


def snap(rate: float | None, attainment: float | None = None, state: str = "ok") -> SloSnapshot:
    return SloSnapshot(namespace="ns", name="m", time=0.0, window="30s",
                       state=state,  # type: ignore[arg-type]
                       reasons=[] if state == "ok" else ["no engine pod is scraped"],
                       pods_scraped=1, request_rate=rate, tpot_p90_s=0.05,
                       tpot_attainment=attainment)


def decide(s: SloSnapshot, current: int, history: list[autoscale.Recommendation] | None = None,
           now: float = 1000.0, lo: int = 1, hi: int = 10) -> autoscale.ScaleDecision:
    return autoscale.decide(s, current, lo, hi, CAP, 0.9, history or [], now, CFG)


@pytest.mark.parametrize(("rate", "attainment", "current", "desired"), [
    (0.5, None, 1, 1),      # fits one replica
    (2.5, None, 1, 2),      # needs 3, but at most doubles per step
    (2.5, None, 2, 3),      # needs 3
    (50.0, None, 4, 8),     # doubling
    (50.0, None, 8, 10),    # capped at max
    (0.9, 0.45, 1, 2),      # attainment 45% < 90%: capacity halved -> 2
    (0.9, 0.99, 1, 1),      # attainment above target never inflates capacity
    (0.0, None, 1, 1),      # idle at min
])
def test_scale_up_table(rate: float, attainment: float | None, current: int,
                        desired: int) -> None:
    d = decide(snap(rate, attainment), current)
    assert d.desired == desired, d.reason


def test_scale_down_waits_for_the_down_window() -> None:
    """Load drops to one replica's worth at t=0 with no history (a fresh operator): the count
    holds for the whole 300 s down window, then drops in one step."""
    history: list[autoscale.Recommendation] = []
    current, seen = 4, []
    for t in range(0, 400, 30):
        d = decide(snap(0.5), current, history, now=1000.0 + t)
        history, current = d.history, d.desired
        seen.append((t, current))
    assert all(c == 4 for t, c in seen if t < 300)
    assert all(c == 1 for t, c in seen if t >= 300)


def test_scale_down_goes_only_to_the_highest_recent_recommendation() -> None:
    history = [autoscale.Recommendation(time=900.0, replicas=4),
               autoscale.Recommendation(time=950.0, replicas=3)]
    d = decide(snap(0.5), 4, history, now=1000.0)
    assert d.raw == 1 and d.desired == 4
    d = decide(snap(0.5), 4, d.history, now=1210.0)  # 900 is out of the 300 s window
    assert d.desired == 3
    d = decide(snap(0.5), 3, d.history, now=1260.0)  # 950 out too
    assert d.desired == 1


def test_spike_does_not_oscillate_with_an_up_window() -> None:
    cfg = CFG.model_copy(update={"up_window_s": 60.0})
    history: list[autoscale.Recommendation] = []
    current, seen = 2, []
    rates = [1.5, 6.0, 1.5, 6.0, 1.5, 6.0, 1.5]  # alternating spikes every 20 s
    for i, r in enumerate(rates):
        d = autoscale.decide(snap(r), current, 1, 10, CAP, 0.9, history, 1000.0 + 20 * i, cfg)
        history, current = d.history, d.desired
        seen.append(current)
    assert seen == [2] * len(rates)  # neither up (spikes not sustained) nor down (slow)


def test_sustained_rise_scales_up_within_the_up_window() -> None:
    cfg = CFG.model_copy(update={"up_window_s": 60.0})
    history: list[autoscale.Recommendation] = []
    current = 2
    for i in range(5):
        d = autoscale.decide(snap(4.0), current, 1, 10, CAP, 0.9, history, 1000.0 + 20 * i, cfg)
        history, current = d.history, d.desired
    assert current == 4


@pytest.mark.parametrize(("snapshot", "current", "lo", "hi", "desired"), [
    (snap(None, state="noData"), 5, 1, 10, 5),
    (snap(0.0, state="noData"), 5, 1, 10, 5),   # a zero next to missing series is not data
    (snap(None, state="error"), 3, 1, 10, 3),
    (snap(None, state="error"), 0, 1, 10, 1),   # below min: bounds still apply
    (snap(None, state="ok"), 4, 1, 10, 4),      # no rate series
])
def test_no_data_never_scales_down(snapshot: SloSnapshot, current: int, lo: int, hi: int,
                                   desired: int) -> None:
    history = [autoscale.Recommendation(time=999.0, replicas=1)]
    d = autoscale.decide(snapshot, current, lo, hi, CAP, 0.9, history, 1000.0, CFG)
    assert d.desired == desired and d.raw is None
    assert d.history == history  # nothing recorded
    assert "no data" in d.reason


def _policy(tpot: float | None, k_max: int = 4) -> Policy:
    model = ModelParams(target=TimingCoefficients(overhead_s=0.010, per_token_s=0.001,
                                                  knee_tokens=8),
                        draft=TimingCoefficients(overhead_s=0.001, per_token_s=0.0001))
    return Policy(version=1, k_max=k_max, static_k=min(3, k_max),
                  slo=SloTargets(tpot_seconds=tpot), model=model)


def test_capacity_meets_the_tpot_limit_at_the_largest_batch() -> None:
    p = _policy(tpot=0.05)
    cap = autoscale.capacity_per_replica(p, acceptance=0.7, output_tokens=100, context_len=256)
    assert cap.tpot_s <= p.tpot_limit_seconds
    bigger = autoscale.capacity_per_replica(p, 0.7, 100, 256)
    assert bigger == cap  # deterministic
    assert cap.batch > 1
    assert cap.requests_per_s == pytest.approx(cap.tokens_per_s / 100)


def test_capacity_grows_with_a_looser_slo_and_better_acceptance() -> None:
    tight = autoscale.capacity_per_replica(_policy(0.03), 0.7, 100, 256)
    loose = autoscale.capacity_per_replica(_policy(0.2), 0.7, 100, 256)
    assert loose.requests_per_s > tight.requests_per_s and loose.batch > tight.batch
    assert loose.batch <= 256


def test_capacity_when_even_batch_one_misses_the_slo() -> None:
    cap = autoscale.capacity_per_replica(_policy(0.001), 0.7, 100, 256)
    assert cap.batch == 1 and cap.tpot_s > 0.001 * 0.9


def test_capacity_without_a_tpot_slo_uses_max_batch() -> None:
    cap = autoscale.capacity_per_replica(_policy(None), 0.7, 100, 256, max_batch=64)
    assert cap.batch == 64


def test_capacity_is_computed_with_the_model_the_pods_report() -> None:
    """slo_loop.capacity_model: the pods' model replaces the ConfigMap's (the built-in
    defaults until a refit); without one the ConfigMap's stays. A pod slower than the
    defaults gives a lower capacity than the defaults would."""
    from specserve_operator.slo_loop import capacity_model

    policy = Policy(slo=SloTargets(tpot_seconds=0.05))
    base = policy.model
    slow = base.model_copy(update={"target": base.target.model_copy(update={
        "overhead_s": 2 * base.target.overhead_s}), "source": "pod"})
    assert capacity_model(policy, None) is policy
    used = capacity_model(policy, slow)
    assert used.model == slow and used.slo == policy.slo
    cap = autoscale.capacity_per_replica
    assert cap(used, 0.7, 100, 200).requests_per_s < cap(policy, 0.7, 100, 200).requests_per_s


def test_capacity_prices_the_prefill_of_the_requests_it_admits() -> None:
    """Each step finishes and admits expected_tokens / output_tokens requests whose prompts
    are prefilled in the same steps: long prompts lower the capacity, within the TPOT limit."""
    p = _policy(tpot=0.05)
    decode_only = autoscale.capacity_per_replica(p, 0.7, 100, 256)
    assert autoscale.capacity_per_replica(p, 0.7, 100, 256, prompt_tokens=0.0) == decode_only
    short = autoscale.capacity_per_replica(p, 0.7, 100, 256, prompt_tokens=64)
    long = autoscale.capacity_per_replica(p, 0.7, 100, 256, prompt_tokens=1024)
    assert long.requests_per_s < short.requests_per_s <= decode_only.requests_per_s
    assert long.tpot_s <= p.tpot_limit_seconds
    # At its batch, the priced step is slower than the decode-only prediction of that batch.
    model = EfficiencyModel(p)
    rows = [[0.7 ** (j + 1) for j in range(p.k_max)]] * long.batch
    assert long.tpot_s > model.choose_k(rows, 256).tpot_seconds
