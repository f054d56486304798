"""SLO goodput over rounds: bootstrap intervals, the tables, the matrix plan (no engines)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from specserve_engine.trace_replay.slo_goodput import (
    Found,
    Probe,
    SearchKey,
    SloGoodput,
    SloTarget,
    best_static,
    bound_mark,
    bounds,
    capacity,
    capacity_ratio,
    capacity_replicates,
    engine_runs,
    estimate_s,
    expected_probes,
    found_from_json,
    found_json,
    markdown,
    matrix_markdown,
    mean_capacity,
    mean_rate,
    probe_of,
    quantile,
    search_from_json,
    search_json,
)
from specserve_engine.trace_replay.slo_goodput import RequestLatency as Req


def search(rate: float, upper: float | None, probes: int = 5) -> SloGoodput:
    return SloGoodput(rate, upper, tuple(Probe(rate, 10, 1.0, True) for _ in range(probes)))


def rounds(*brackets: tuple[float, float | None]) -> list[SloGoodput]:
    return [search(lo, hi) for lo, hi in brackets]


def test_replicates_stay_in_the_brackets_and_are_seeded() -> None:
    one = rounds((10.0, 11.0))
    reps = capacity_replicates(one, 500, seed="x")
    assert all(10.0 <= r <= 11.0 for r in reps)
    assert max(reps) - min(reps) > 0.9  # the resolution counts
    assert capacity_replicates(one, 500, seed="x") == reps
    assert capacity_replicates(one, 500, seed="y") != reps
    # A search that never failed is censored at its rate: no spread from it.
    assert set(capacity_replicates(rounds((32.0, None)), 50, seed="x")) == {32.0}
    assert capacity_replicates([], 50, seed="x") == []


def test_the_point_is_the_brackets_middle_where_the_replicates_centre() -> None:
    one = rounds((8.0, 9.5))
    assert capacity(one[0]) == pytest.approx(8.75) and mean_rate(one) == 8.0
    reps = capacity_replicates(one, 2000, seed="x")
    assert sum(reps) / len(reps) == pytest.approx(8.75, abs=0.05)
    # A search that never failed is a lower bound: its rate, marked in every ratio it enters.
    never = rounds((16.0, None))
    assert mean_capacity(never) == 16.0
    r = capacity_ratio(never, one, replicates=2000, seed="s")
    assert r.interval is not None and r.interval.lo <= r.value <= r.interval.hi
    assert bound_mark(never, one) == ">= " and bound_mark(one, never) == "<= "
    assert bound_mark(never, never) == "? " and bound_mark(one, one) == ""


def test_a_ratio_with_a_censored_side_is_printed_as_a_bound() -> None:
    results = {"K=2": rounds((8.0, 9.5)), "adaptive": rounds((16.0, None))}
    text = markdown(results, SloTarget(0.15), title="t", replicates=200)
    rows = table_rows(text)
    assert "| >= 16 |" in rows["adaptive"] and "(never failed)" in rows["adaptive"]
    assert "| >= 1.829 |" in rows["K=2"]
    assert "**adaptive / best static K (K=2): >= 1.829" in text


def test_identical_configurations_give_an_interval_around_one() -> None:
    a = rounds((10.0, 11.0), (10.5, 11.5), (9.5, 10.5))
    r = capacity_ratio(a, list(a), replicates=2000, seed="s")
    assert r.value == pytest.approx(1.0)
    assert r.interval is not None and r.interval.lo < 1 < r.interval.hi
    assert not r.significant
    assert capacity_ratio(a, list(a), replicates=2000, seed="s") == r


def test_clearly_separated_configurations_exclude_one() -> None:
    fast = rounds((20.0, 22.0), (21.0, 23.0), (19.5, 21.5))
    slow = rounds((10.0, 11.0), (10.5, 11.5), (9.5, 10.5))
    r = capacity_ratio(fast, slow, replicates=2000, seed="s")
    assert r.value == pytest.approx(mean_capacity(fast) / mean_capacity(slow))
    assert r.significant and r.interval is not None and 1.6 < r.interval.lo < r.interval.hi < 2.4


def test_round_spread_widens_the_interval() -> None:
    steady = rounds((10.0, 10.5), (10.0, 10.5), (10.0, 10.5))
    noisy = rounds((7.0, 7.35), (10.0, 10.5), (13.0, 13.65))
    base = rounds((10.0, 10.5), (10.0, 10.5), (10.0, 10.5))
    narrow = capacity_ratio(steady, base, seed="s").interval
    wide = capacity_ratio(noisy, base, seed="s").interval
    assert narrow is not None and wide is not None
    assert wide.hi - wide.lo > 3 * (narrow.hi - narrow.lo)


def test_no_capacity_on_the_baseline_gives_no_ratio() -> None:
    r = capacity_ratio(rounds((10.0, 11.0)), [search(0.0, 0.25)], seed="s")
    assert r.value is None and not r.significant


def test_the_best_static_k_is_the_best_round_mean() -> None:
    results = {"off": rounds((30.0, 32.0)), "K=1": rounds((10.0, 11.0), (14.0, 15.0)),
               "K=2": rounds((12.5, 13.0), (12.5, 13.0)), "K=5": rounds((5.0, 6.0))}
    assert best_static(results) == "K=2"  # 12.5 > K=1's 12.0; off is not a static K here
    assert best_static({"off": rounds((1.0, 2.0))}) is None


def table_rows(text: str) -> dict[str, str]:
    return {line.split(" | ")[0].strip("| *"): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| config")}


def test_the_table_has_ratios_intervals_headlines_and_the_ablation() -> None:
    results = {
        "off": rounds((10.0, 11.0), (10.5, 11.5), (10.0, 11.0)),
        "K=1": rounds((12.0, 13.0), (12.0, 13.0), (12.5, 13.5)),
        "K=2": rounds((14.0, 15.0), (14.5, 15.5), (14.0, 15.0)),
        "dynamic-sd": rounds((11.0, 12.0), (11.0, 12.0), (11.5, 12.5)),
        "adaptive-drafter": rounds((16.0, 17.0), (16.0, 17.0), (16.5, 17.5)),
        "adaptive-verifier": rounds((16.5, 17.5), (16.0, 17.0), (16.0, 17.0)),
        "adaptive": rounds((22.0, 24.0), (23.0, 25.0), (22.0, 24.0)),
        "none": [],
    }
    text = markdown(results, SloTarget(0.06), title="conversation, poisson", replicates=500)
    assert text.startswith("### conversation, poisson\n")
    assert ">= 90% of requests meet TPOT <= 60 ms" in text
    rows = table_rows(text.split("Ablation")[0])
    assert "none" not in rows
    assert rows["off"].endswith("* |") and "| 3 | 15 |" in rows["off"]
    assert "10.2 | 10.7 | 10..10.5 | 10..11.5" in rows["off"]  # capacity: brackets' middles
    assert rows["adaptive"].endswith("| - | - |")
    assert "**adaptive / best static K (K=2):" in text and "**adaptive / dynamic-sd:" in text
    ablation = text.split("Ablation")[1]
    lines = [ln for ln in ablation.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [ln.split(" | ")[1] for ln in lines] == ["K=2", "adaptive-drafter",
                                                     "adaptive-verifier", "adaptive"]
    assert lines[0].endswith("| - | - |")
    assert lines[1].endswith("* |")  # drafter over K=2: 16.2 vs 14.2
    assert not lines[2].endswith("* |")  # verifier over drafter: the same capacity
    assert lines[3].endswith("* |")  # the SLO term


def test_without_the_ablation_configurations_there_is_no_ablation_table() -> None:
    results = {"K=2": rounds((14.0, 15.0)), "adaptive": rounds((20.0, 21.0))}
    text = markdown(results, SloTarget(0.1), title="t", replicates=100)
    assert "Ablation" not in text and "best static K (K=2)" in text
    assert "dynamic-sd" not in text


def test_bounds_span_every_round() -> None:
    assert bounds(rounds((10.0, 11.0), (9.0, 12.0))) == (9.0, 12.0)
    assert bounds(rounds((10.0, None))) == (10.0, float("inf"))


def test_engine_runs_share_an_engine_except_for_the_slo_in_a_policy() -> None:
    runs = engine_runs(["off", "adaptive-drafter", "adaptive"], ["adaptive"],
                       workloads=["conversation", "decode-heavy"], arrivals=["poisson", "bursty"],
                       slos_ms=[60.0, 150.0], rounds=2)
    assert [(r.config, r.round, r.policy_slo_ms) for r in runs] == [
        ("off", 0, None), ("adaptive-drafter", 0, None), ("adaptive", 0, 60.0),
        ("adaptive", 0, 150.0),
        ("adaptive", 1, 60.0), ("adaptive", 1, 150.0), ("adaptive-drafter", 1, None),
        ("off", 1, None)]
    assert len(runs[0].searches) == 8 and len(set(runs[0].searches)) == 8
    assert {k.tpot_slo_ms for k in runs[2].searches} == {60.0}
    assert len(runs[2].searches) == 4
    # Every (config, cell, round) is searched exactly once.
    cells = [(r.config, k, r.round) for r in runs for k in r.searches]
    assert len(cells) == len(set(cells)) == 3 * 8 * 2


def test_the_estimate_counts_starts_and_probes() -> None:
    assert expected_probes(growth=2.0, rel_tol=0.1, max_probes=8) == 3 + 3
    assert expected_probes(growth=2.0, rel_tol=0.15, max_probes=8) == 3 + 3
    assert expected_probes(growth=2.0, rel_tol=0.02, max_probes=8) == 8  # capped
    assert expected_probes(growth=2.0, rel_tol=1.5, max_probes=8) == 3
    runs = engine_runs(["off", "adaptive"], ["adaptive"], workloads=["conversation"],
                       arrivals=["poisson"], slos_ms=[60.0, 150.0], rounds=1)
    # 3 engines (off, adaptive x 2 SLOs), 4 searches.
    assert estimate_s(runs, probes_per_search=6, probe_s=30.0, engine_start_s=40.0) == \
        3 * 40 + 4 * 6 * 30


def test_results_read_back_and_render_one_table_per_cell() -> None:
    key60 = SearchKey("conversation", "poisson", 60.0)
    key150 = SearchKey("conversation", "bursty", 150.0)
    found = [Found(key60, "off", 1, search(9.0, 10.0)), Found(key60, "off", 0, search(10.0, 11.0)),
             Found(key60, "adaptive", 0, search(20.0, 22.0)),
             Found(key150, "off", 0, search(30.0, None))]
    back = [found_from_json(json.loads(json.dumps(found_json(f)))) for f in found]
    assert back == found
    text = matrix_markdown(back, describe="AMD EPYC; dtype bfloat16; mode eager",
                           replicates=100)
    assert text.count("### ") == 2
    assert "### conversation, poisson arrivals, TPOT <= 60 ms (AMD EPYC; dtype bfloat16; " \
           "mode eager)" in text
    first = table_rows(text.split("### ")[1])
    assert "| 9.5 | 10 | 9..10 |" in first["off"]  # rounds in round order, mean of both
    assert "(never failed)" in text.split("### ")[2]


def test_results_written_before_the_matrix_read_as_one_cell() -> None:
    from dataclasses import asdict

    from specserve_engine.trace_replay.slo_goodput import read_results

    old = {"meta": {"slo": {"tpot_s": 0.1, "ttft_s": None, "attainment": 0.9}, "mode": "eager"},
           "results": {"off": [asdict(search(13.5, 14.7))],
                       "adaptive": [asdict(search(29.3, 32.0)), asdict(search(28.0, 30.0))]}}
    meta, found = read_results(old)
    key = SearchKey("conversation", "poisson", 100.0)
    assert [(f.key, f.config, f.round) for f in found] == [
        (key, "off", 0), (key, "adaptive", 0), (key, "adaptive", 1)]
    assert (meta["ttft_slo_s"], meta["attainment"], meta["mode"]) == (None, 0.9, "eager")
    new = {"meta": {"mode": "eager"}, "searches": [found_json(f) for f in found]}
    assert read_results(new)[1] == found


def test_a_probe_keeps_the_clients_latency_quantiles() -> None:
    assert quantile([], 0.5) is None and quantile([3.0], 0.9) == 3.0
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.5) == 2.5 and quantile([1.0, 2.0], 0.9) == 1.9
    got = [Req(0.10, 0.5), Req(0.12, 1.0), Req(0.30, 4.0), Req(None, 0.2),
           Req(0.05, None, ok=False)]
    p = probe_of(8.0, got, SloTarget(0.15, ttft_s=3.0, attainment=0.6))
    # Met: 0.10/0.5, 0.12/1.0 and the one-token answer; 0.30/4.0 and the failed one missed.
    assert (p.rate, p.requests, p.attainment, p.meets) == (8.0, 5, 0.6, True)
    assert p.tpot_p50_s == 0.12 and p.tpot_p90_s == pytest.approx(0.264)
    assert p.ttft_p50_s == pytest.approx(0.75) and p.predicted_tpot_p50_s is None


def test_the_table_shows_the_tpot_at_the_answer_measured_and_predicted() -> None:
    at = Probe(8.0, 40, 0.95, True, tpot_p50_s=0.101, ttft_p50_s=0.4,
               predicted_tpot_p50_s=0.097)
    fail = Probe(9.5, 40, 0.5, False, tpot_p50_s=0.2)
    results = {"K=2": [SloGoodput(8.0, 9.5, (at, fail))],
               "adaptive": [SloGoodput(8.0, 9.5, (replace(at, predicted_tpot_p50_s=None), fail))]}
    rows = table_rows(markdown(results, SloTarget(0.15), title="t", replicates=50))
    assert "| 101 (97) |" in rows["K=2"] and "| 101 |" in rows["adaptive"]
    # Probes written before these fields existed read back with them empty.
    old = {"rate": 8.0, "upper": 9.5, "probes": [
        {"rate": 8.0, "requests": 40, "attainment": 0.95, "meets": True}]}
    back = search_from_json(old)
    assert back.probes[0].tpot_p50_s is None
    assert search_from_json(search_json(results["K=2"][0])) == results["K=2"][0]
