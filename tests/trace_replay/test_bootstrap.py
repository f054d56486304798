"""Intervals and ratio significance on synthetic rounds whose truth is known (no engines)."""

from __future__ import annotations

import random

import pytest

from specserve_engine.trace_replay import bootstrap
from specserve_engine.trace_replay.client import RequestRecord
from specserve_engine.trace_replay.summary import (
    Cell,
    RoundRecords,
    cell,
    level_ratio,
    ratio_rows,
    report_markdown,
    whole_trace_ratio,
)

SLO = 0.05


def synthetic_rounds(tpot_s: float, *, rounds: int = 3, requests: int = 48, seed: int = 0,
                     round_noise: float = 0.03, request_noise: float = 0.2) -> list[RoundRecords]:
    """Closed-loop rounds (each request sent when the previous one ends, so goodput is
    1 / TPOT-ish): request i asks for the same 4 + i % 29 tokens in every configuration; a round
    scales every TPOT by its own factor (engine-to-engine noise), a request by its own."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        factor = 1 + round_noise * rng.gauss(0, 1)
        at, records = 0.0, []
        for i in range(requests):
            tokens = 4 + i % 29
            tpot = tpot_s * factor * max(0.2, 1 + request_noise * rng.gauss(0, 1))
            ttft = 0.1 * factor
            e2e = ttft + tpot * (tokens - 1)
            records.append(RequestRecord(i, 10, tokens, sent_s=at, ttft_s=ttft, e2e_s=e2e,
                                         output_tokens=tokens))
            at += e2e
        out.append(RoundRecords(records, (10.0, 5.0, 20.0, 5.0)))
    return out


def make(config: str, tpot_s: float, rate: float = 1.0, seed: int = 0, **kw: int) -> Cell:
    return cell(config, rate, synthetic_rounds(tpot_s, seed=seed, **kw), tpot_slo_s=SLO,
                replicates=400)


def test_every_metric_gets_an_interval_around_its_pooled_value() -> None:
    s = make("a", 0.04).summary
    for metric in ("goodput_tok_s", "ttft_p50_s", "tpot_p50_s", "tpot_p99_s", "slo_attainment",
                   "mean_k"):
        iv = s.intervals[metric]
        assert iv.lo <= getattr(s, metric) <= iv.hi, metric
    assert s.intervals["tpot_p50_s"].lo < s.intervals["tpot_p50_s"].hi


def test_a_known_difference_is_significant() -> None:
    slow, fast = make("slow", 0.05, seed=1), make("fast", 0.04, seed=2)
    tpot = level_ratio([slow, fast], "fast", "slow", 1.0, "tpot_p50_s")
    goodput = level_ratio([slow, fast], "fast", "slow", 1.0)
    assert tpot is not None and goodput is not None
    assert tpot.value == pytest.approx(0.8, rel=0.1) and tpot.significant
    assert tpot.interval is not None and tpot.interval.hi < 1
    assert goodput.value is not None and goodput.value > 1.1 and goodput.significant
    assert whole_trace_ratio([slow, fast], "fast", "slow").significant


def test_the_same_system_measured_twice_is_not_significant() -> None:
    a, b = make("a", 0.04, seed=1), make("b", 0.04, seed=2)  # same truth, independent noise
    for metric in ("goodput_tok_s", "tpot_p50_s", "tpot_p99_s", "slo_attainment"):
        r = level_ratio([a, b], "a", "b", 1.0, metric)
        assert r is not None and r.interval is not None, metric
        assert not r.significant, (metric, r)
    # Literally the same records: the ratio is 1 in every paired replicate, never significant.
    same = make("same", 0.04, seed=1)
    r = level_ratio([a, same], "a", "same", 1.0, "tpot_p50_s")
    assert r is not None and r.value == pytest.approx(1.0) and not r.significant


def test_intervals_shrink_with_more_rounds_and_requests() -> None:
    def width(**kw: int) -> float:
        iv = make("a", 0.04, seed=3, **kw).summary.intervals["tpot_p50_s"]
        return iv.hi - iv.lo

    assert width(rounds=8, requests=192) < 0.6 * width(rounds=3, requests=24)
    assert width(rounds=3, requests=192) < width(rounds=3, requests=24)


def test_intervals_are_deterministic_and_follow_the_seed() -> None:
    rounds = synthetic_rounds(0.04, seed=5)
    one = cell("a", 2.0, rounds, tpot_slo_s=SLO, replicates=200, seed=7)
    two = cell("a", 2.0, rounds, tpot_slo_s=SLO, replicates=200, seed=7)
    other = cell("a", 2.0, rounds, tpot_slo_s=SLO, replicates=200, seed=8)
    assert one == two
    assert one.replicates["tpot_p50_s"] != other.replicates["tpot_p50_s"]


def test_cells_of_one_level_share_request_draws_but_not_round_draws() -> None:
    kw = {"replicates": 50, "request_seed": "0:requests:1.0"}
    a = bootstrap.draws([10, 10, 10], round_seed="a", **kw)  # type: ignore[arg-type]
    b = bootstrap.draws([10, 10, 10], round_seed="b", **kw)  # type: ignore[arg-type]
    assert [[idx for _, idx in d] for d in a] == [[idx for _, idx in d] for d in b]
    assert [[r for r, _ in d] for d in a] != [[r for r, _ in d] for d in b]
    assert all(len(d) == 3 and all(len(idx) == 10 for _, idx in d) for d in a)


def test_an_interval_needs_most_replicates_defined() -> None:
    assert bootstrap.interval([1.0, None, None]) is None
    assert bootstrap.interval([]) is None
    iv = bootstrap.interval([float(i) for i in range(101)])
    assert iv is not None and (iv.lo, iv.hi) == (pytest.approx(2.5), pytest.approx(97.5))
    # Replicates on one side only: a point ratio, no interval, not significant.
    r = bootstrap.ratio(2.0, 1.0, [2.0, 2.0], [])
    assert (r.value, r.interval, r.significant) == (2.0, None, False)


def test_the_report_names_machine_dtype_mode_and_marks_significance() -> None:
    table = [make("adaptive", 0.04, seed=1), make("off", 0.05, seed=2),
             make("K=1", 0.04, seed=3)]
    meta = {"command": "specserve bench", "machine": "AMD EPYC 7B13 (2 cores; avx2)",
            "dtype": "float32", "mode": "eager"}
    text = report_markdown(meta, table, SLO, statics=("off", "K=1"), replicates=400, seed=0)
    assert "AMD EPYC 7B13 (2 cores; avx2); dtype float32; mode eager; 3 round(s)" in text
    assert "Fewer than" not in text
    goodput_table = text.split("### adaptive / baseline: goodput")[1].split("###")[0]
    rows_md = {line.split(" | ")[0]: line for line in goodput_table.splitlines() if "[" in line}
    assert "*" in rows_md["| off"] and "*" not in rows_md["| K=1"]
    rows = ratio_rows(table, "adaptive", ["K=1", "off"])
    goodput = {r["baseline"]: r for r in rows if r["metric"] == "goodput_tok_s" and r["rate"]}
    assert goodput["off"]["significant"] and not goodput["K=1"]["significant"]
    few = [make("adaptive", 0.04, rounds=2), make("off", 0.05, rounds=2)]
    assert "Fewer than 3 rounds" in report_markdown(meta, few, SLO, statics=("off",),
                                                    replicates=50, seed=0)
