"""The SLO-goodput search against synthetic queueing systems whose answer is known."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from itertools import pairwise

import pytest

from specserve_engine.trace_replay.slo_goodput import (
    RequestLatency,
    SloTarget,
    attainment,
    slo_goodput,
)
from specserve_engine.trace_replay.trace import TraceRow, plan_requests, poisson_plan

N = 100  # requests per probe


def mm1(capacity: float, base_tpot: float, spread: float = 0.5, ttft_base: float = 0.1
        ) -> Callable[[float], list[RequestLatency]]:
    """An M/M/1-ish system: latency grows as 1 / (1 - rho), rho = rate / capacity; request i of a
    probe gets a fixed jitter 1 + spread * (i + 0.5) / N (so the 90th request sets attainment)."""
    def run(rate: float) -> list[RequestLatency]:
        rho = rate / capacity
        slow = 1 / (1 - rho) if rho < 1 else 1e6
        return [RequestLatency(base_tpot * slow * (1 + spread * (i + 0.5) / N),
                               ttft_base * slow * slow)
                for i in range(N)]
    return run


def truth(capacity: float, base_tpot: float, slo: float, spread: float = 0.5) -> float:
    """90 of 100 meet iff request 89 does: base * (1 + spread * 0.895) / (1 - rho) <= slo."""
    return capacity * (1 - base_tpot * (1 + spread * 0.895) / slo)


def test_the_search_finds_the_known_capacity_within_tolerance() -> None:
    target = SloTarget(tpot_s=0.06)
    result = slo_goodput(mm1(10.0, 0.02), target, start_rate=1.0, rel_tol=0.02)
    expected = truth(10.0, 0.02, 0.06)  # 5.05 req/s
    assert result.converged and result.upper is not None
    assert result.rate <= expected <= result.upper
    assert result.upper / result.rate - 1 <= 0.02
    assert result.rate == pytest.approx(expected, rel=0.02)
    assert all(p.meets == (p.rate <= expected) for p in result.probes)
    assert len(result.probes) <= 16


def test_a_start_above_capacity_searches_down() -> None:
    result = slo_goodput(mm1(10.0, 0.02), SloTarget(tpot_s=0.06), start_rate=64.0, rel_tol=0.02)
    assert result.probes[0].meets is False
    assert result.rate == pytest.approx(truth(10.0, 0.02, 0.06), rel=0.02)


def test_a_faster_system_has_proportionally_more_slo_goodput() -> None:
    target = SloTarget(tpot_s=0.06)
    slow = slo_goodput(mm1(10.0, 0.02), target, rel_tol=0.01)
    fast = slo_goodput(mm1(20.0, 0.02), target, rel_tol=0.01)
    assert fast.rate / slow.rate == pytest.approx(2.0, rel=0.03)


def test_a_ttft_slo_binds_when_set() -> None:
    system = mm1(10.0, 0.02)
    tpot_only = slo_goodput(system, SloTarget(tpot_s=0.06), rel_tol=0.01)
    # TTFT 0.1 / (1 - rho)^2 <= 0.2 holds up to rho = 1 - 1/sqrt(2): 2.93 req/s.
    both = slo_goodput(system, SloTarget(tpot_s=0.06, ttft_s=0.2), rel_tol=0.01)
    assert both.rate == pytest.approx(10 * (1 - 1 / math.sqrt(2)), rel=0.02)
    assert both.rate < tpot_only.rate


def test_no_rate_meets_an_slo_below_the_unloaded_latency() -> None:
    result = slo_goodput(mm1(10.0, 0.02), SloTarget(tpot_s=0.01), min_rate=0.01)
    assert result.rate == 0.0 and result.upper == pytest.approx(0.01) and not result.converged
    assert all(not p.meets for p in result.probes)


def test_a_system_that_never_saturates_stops_at_max_rate() -> None:
    result = slo_goodput(lambda r: [RequestLatency(0.01)] * 10, SloTarget(tpot_s=0.06),
                         max_rate=50.0)
    assert (result.rate, result.upper) == (50.0, None) and not result.converged


def test_the_probe_budget_is_never_exceeded() -> None:
    calls: list[float] = []

    def run(rate: float) -> list[RequestLatency]:
        calls.append(rate)
        return mm1(10.0, 0.02)(rate)

    result = slo_goodput(run, SloTarget(tpot_s=0.06), rel_tol=1e-9, max_probes=7)
    assert len(calls) == len(result.probes) == 7
    assert result.converged  # bracketed, if not to 1e-9


def test_a_noisy_system_still_lands_near_its_capacity() -> None:
    """Random per-request jitter (seeded per probe): the answer moves by about one probe's noise."""
    def run(rate: float) -> list[RequestLatency]:
        rng = random.Random(f"{rate:.6f}")
        rho = rate / 10.0
        slow = 1 / (1 - rho) if rho < 1 else 1e6
        return [RequestLatency(0.02 * slow * rng.lognormvariate(0, 0.25)) for _ in range(200)]

    # 90th percentile of the lognormal jitter: exp(0.25 * 1.2816).
    expected = 10.0 * (1 - 0.02 * math.exp(0.25 * 1.2816) / 0.06)
    result = slo_goodput(run, SloTarget(tpot_s=0.06), rel_tol=0.02)
    assert result.rate == pytest.approx(expected, rel=0.1)


def test_failed_requests_are_misses_and_one_token_answers_meet_tpot() -> None:
    target = SloTarget(tpot_s=0.05, ttft_s=1.0)
    got = [RequestLatency(0.04, 0.5), RequestLatency(None, 0.5), RequestLatency(0.04, 2.0),
           RequestLatency(0.04, 0.5, ok=False), RequestLatency(0.06, 0.5)]
    assert attainment(got, target) == pytest.approx(2 / 5)
    assert attainment([], target) == 0.0
    with pytest.raises(ValueError):
        slo_goodput(mm1(1, 1), target, growth=1.0)


def test_poisson_arrivals_keep_the_window_lengths_and_scale_with_rate() -> None:
    rows = [TraceRow(float(i), 10 + i, 5 + i) for i in range(400)]
    kw = {"count": 300, "max_prompt_tokens": 64, "max_output_tokens": 32, "seed": 3}
    one = poisson_plan(rows, rate=1.0, **kw)  # type: ignore[arg-type]
    four = poisson_plan(rows, rate=4.0, **kw)  # type: ignore[arg-type]
    even = plan_requests(rows, rate=1.0, count=300, max_prompt_tokens=64, max_output_tokens=32)
    assert [(p.prompt_tokens, p.output_tokens) for p in one] == \
        [(p.prompt_tokens, p.output_tokens) for p in even]
    assert [p.send_at_s for p in four] == pytest.approx([p.send_at_s / 4 for p in one])
    gaps = [b.send_at_s - a.send_at_s for a, b in pairwise(one)]
    assert one[0].send_at_s == 0.0 and min(gaps) >= 0
    assert sum(gaps) / len(gaps) == pytest.approx(1.0, rel=0.15)  # mean gap 1 / rate
    cv = math.sqrt(sum((g - 1) ** 2 for g in gaps) / len(gaps))
    assert cv == pytest.approx(1.0, rel=0.2)  # exponential gaps: sd = mean
    assert poisson_plan(rows, rate=1.0, **kw) == one  # type: ignore[arg-type]
    assert poisson_plan(rows, rate=1.0, **{**kw, "seed": 4}) != one  # type: ignore[arg-type]
