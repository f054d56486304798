"""The studies' pure parts: load shaping, attainment over a run, the saving verdict."""

from __future__ import annotations

from itertools import pairwise

import pytest

from specserve_sim import studies
from specserve_sim.interface import RequestRecord, SimRequest, SimResult


def trace(rates: list[float], seconds: float = 100.0) -> list[SimRequest]:
    """Poisson-free arrivals at piecewise constant rates, one piece per `seconds`."""
    out, t, i = [], 0.0, 0
    for k, rate in enumerate(rates):
        end = (k + 1) * seconds
        while t < end:
            out.append(SimRequest(str(i), t, 100, 50))
            i += 1
            t += 1.0 / rate
    return out


def test_shape_load_maps_the_trough_and_peak() -> None:
    reqs = trace([2.0, 4.0, 2.0])
    shaped = studies.shape_load(reqs, 10.0, 40.0, smooth_s=20.0, seed=1)
    rate = dict(studies.rate_series(shaped, 100.0))
    assert rate[100.0] == pytest.approx(10.0, rel=0.1)
    assert rate[200.0] == pytest.approx(40.0, rel=0.1)
    assert all(a.arrival <= b.arrival for a, b in pairwise(shaped))
    assert {r.prompt_tokens for r in shaped} == {100}


def result(records: list[RequestRecord], replica_seconds: float = 100.0) -> SimResult:
    return SimResult(requests=records, steps=[], series=[], scaling=[],
                     replica_seconds=replica_seconds, end_time=10.0)


def test_summary_counts_unfinished_requests_as_misses() -> None:
    recs = [RequestRecord("a", 0.0, 0.1, 1.0, 10, 11, "p"),    # TPOT 90 ms
            RequestRecord("b", 0.0, 0.1, 0.3, 10, 11, "p"),    # TPOT 20 ms
            RequestRecord("c", 0.0, None, None, 10, 11, "")]   # never served
    s = studies.summarise("x", result(recs), tpot_s=0.05, ttft_s=1.0)
    assert s.tpot_attainment == pytest.approx(1 / 3)
    assert s.ttft_attainment == pytest.approx(2 / 3)
    assert s.attainment == pytest.approx(1 / 3)


def summary(name: str, att: float, rs: float) -> studies.RunSummary:
    return studies.RunSummary(name, 1, 1, att, att, att, None, None, rs, 0, None, 0.0)


def test_saving_is_against_the_cheapest_baseline_that_meets_the_target() -> None:
    rows = [summary("fixed", 0.99, 1000.0), summary("hpa", 0.95, 800.0),
            summary("planner", 0.5, 300.0), summary("specserve joint", 0.93, 600.0)]
    best, saved = studies.saving(rows, "specserve joint", 0.9)
    assert best == "hpa" and saved == pytest.approx(0.25)
    rows[-1] = summary("specserve joint", 0.8, 100.0)
    assert studies.saving(rows, "specserve joint", 0.9) == ("hpa", None)


def test_at_rate_keeps_the_pattern_and_sets_the_mean_rate() -> None:
    reqs = [SimRequest(str(i), t, 10, 5) for i, t in enumerate((5.0, 6.0, 8.0, 9.0, 13.0))]
    scaled = studies.at_rate(reqs, rate=2.0, count=5)
    assert [r.arrival for r in scaled] == pytest.approx([0.0, 0.25, 0.75, 1.0, 2.0])
    assert [r.request_id for r in scaled] == [r.request_id for r in reqs]


def test_simulated_capacity_falls_with_a_tighter_slo() -> None:
    """One replica of the GPU model: the rate it serves within the SLO is found by bisection,
    and a stricter TPOT target can only lower it."""
    from specserve_engine.policy.params import SloTargets
    from specserve_sim.hardware import HardwareModel

    hw = HardwareModel()
    truth = studies.ground_truth(None, hw)  # seeded synthetic verifications
    slo = SloTargets(tpot_seconds=0.05, ttft_seconds=2.0)
    config = {c.name: c for c in studies.bench_configs(slo, studies.gpu_profile(hw))}["K=3"]
    reqs = [SimRequest(str(i), i * 0.1, 200 + 37 * (i % 7), 40 + 11 * (i % 5))
            for i in range(120)]
    loose, tight = (studies.simulated_capacity_req_s(
        reqs, config, truth, tpot_s=tpot, ttft_s=2.0, attainment=0.9, count=120, probes=6)
        for tpot in (0.05, 0.012))
    assert 0.25 < loose <= 256.0
    assert tight <= loose
