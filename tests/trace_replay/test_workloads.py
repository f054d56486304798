"""Workload shapes and arrival processes of the SLO-goodput probes (trace.py), all pure."""

from __future__ import annotations

import math
import random
from dataclasses import astuple
from itertools import pairwise
from pathlib import Path

import pytest

from specserve_engine.trace_replay.trace import (
    WORKLOADS,
    TraceRow,
    length_scale,
    load_trace,
    percentile,
    plan_requests,
    poisson_plan,
    scale_length,
    shaped_plan,
    timed_plan,
    unit_gaps,
    workload_shape,
)

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_conv_2023.csv"


def heavy_tailed_rows(n: int = 2000, seed: int = 1) -> list[TraceRow]:
    """Lengths shaped like the Azure trace's (log-normal-ish, a long tail), arrivals 1 s apart."""
    rng = random.Random(seed)
    return [TraceRow(float(i), max(1, round(rng.lognormvariate(6.5, 1.0))),
                     max(1, round(rng.lognormvariate(4.7, 0.8)))) for i in range(n)]


def reference_poisson_plan(rows, *, rate, count, max_prompt_tokens, max_output_tokens, start=0,
                           seed=0):
    """The plan as bench/slo_goodput.py made it before workload shapes existed (frozen copy)."""
    window = rows[start:start + count]
    span = window[-1].arrival_s - window[0].arrival_s
    pf = length_scale([r.prompt_tokens for r in rows], max_prompt_tokens)
    of = length_scale([r.output_tokens for r in rows], max_output_tokens)
    rng = random.Random(f"poisson:{seed}")
    at, out = 0.0, []
    for i, r in enumerate(window):
        assert span > 0
        out.append((i, at / rate, scale_length(r.prompt_tokens, pf, max_prompt_tokens),
                    scale_length(r.output_tokens, of, max_output_tokens)))
        at += rng.expovariate(1.0)
    return out


def test_the_conversation_shape_is_the_plan_as_it_was() -> None:
    rows = heavy_tailed_rows()
    kw = {"rate": 3.0, "count": 500, "start": 100, "max_prompt_tokens": 256,
          "max_output_tokens": 128}
    old = reference_poisson_plan(rows, seed=7, **kw)  # type: ignore[arg-type]
    assert [astuple(p) for p in poisson_plan(rows, seed=7, **kw)] == old  # type: ignore[arg-type]
    shape = workload_shape("conversation", max_prompt_tokens=256, max_output_tokens=128)
    lengths = shaped_plan(rows, shape, rate=3.0, count=500, start=100)
    assert [astuple(p) for p in timed_plan(lengths, rate=3.0, seed=7)] == old
    assert lengths == plan_requests(rows, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("context", [1024, 700, 2048])
def test_every_shape_fits_the_context_and_keeps_the_order_of_sizes(context: int) -> None:
    rows = heavy_tailed_rows()
    for name in WORKLOADS:
        shape = workload_shape(name, context_tokens=context)
        plan = shaped_plan(rows, shape, rate=1.0, count=len(rows))
        assert all(p.prompt_tokens + p.output_tokens <= context for p in plan), name
        assert all(p.prompt_tokens >= 1 and p.output_tokens >= 1 for p in plan)
        by_prompt = sorted(zip(rows, plan, strict=True), key=lambda rp: rp[0].prompt_tokens)
        assert [p.prompt_tokens for _, p in by_prompt] == \
            sorted(p.prompt_tokens for p in plan)  # a monotone map: ranks survive
        assert shaped_plan(rows, shape, rate=1.0, count=len(rows)) == plan  # no draws


def test_the_shapes_have_the_documented_ranges() -> None:
    rows = heavy_tailed_rows()
    plans = {w: shaped_plan(rows, workload_shape(w), rate=1.0, count=len(rows))
             for w in WORKLOADS}
    prefill, decode = plans["prefill-heavy"], plans["decode-heavy"]
    assert min(p.prompt_tokens for p in prefill) == 640
    assert max(p.prompt_tokens for p in prefill) == 960
    assert max(p.output_tokens for p in prefill) == 64
    assert max(p.prompt_tokens for p in decode) == 64
    assert max(p.output_tokens for p in decode) == 512

    def mean(plan, attr):
        return sum(getattr(p, attr) for p in plan) / len(plan)

    # prefill-heavy: many prompt tokens per output token; decode-heavy: the reverse.
    assert mean(prefill, "prompt_tokens") > 10 * mean(prefill, "output_tokens")
    assert mean(decode, "output_tokens") > 5 * mean(decode, "prompt_tokens")
    # The trace's shape survives inside the range: the trace's median prompt sits where an
    # affine map of p1..p99 onto 640..960 puts it.
    prompts = [r.prompt_tokens for r in rows]
    p1, p50, p99 = (percentile(prompts, q) for q in (1, 50, 99))
    assert percentile([p.prompt_tokens for p in prefill], 50) == pytest.approx(
        640 + (p50 - p1) * 320 / (p99 - p1), abs=1)


def test_a_context_too_small_or_an_unknown_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="do not fit a 300-token context"):
        workload_shape("conversation", context_tokens=300)  # 256 + 128
    with pytest.raises(ValueError, match="do not fit"):
        workload_shape("prefill-heavy", context_tokens=64)
    with pytest.raises(ValueError, match="unknown workload"):
        workload_shape("chat")
    assert workload_shape("decode-heavy", context_tokens=400).output.hi == 336


def gap_stats(gaps: list[float]) -> tuple[float, float]:
    mean = sum(gaps) / len(gaps)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (len(gaps) - 1))
    return mean, sd / mean


@pytest.mark.parametrize(("arrivals", "cv", "expected_cv"),
                         [("poisson", 3.0, 1.0), ("bursty", 3.0, 3.0), ("bursty", 2.0, 2.0)])
def test_arrival_gaps_have_unit_mean_and_the_configured_cv(arrivals: str, cv: float,
                                                           expected_cv: float) -> None:
    mean, got_cv = gap_stats(unit_gaps(arrivals, 100_000, seed=5, cv=cv))
    assert mean == pytest.approx(1.0, rel=0.04)
    assert got_cv == pytest.approx(expected_cv, rel=0.06)


def test_bursty_plans_are_seeded_and_every_rate_replays_one_pattern_scaled() -> None:
    rows = [TraceRow(float(i), 10 + i % 50, 5 + i % 20) for i in range(5000)]
    lengths = plan_requests(rows, rate=1.0, count=5000, max_prompt_tokens=64,
                            max_output_tokens=32)
    one = timed_plan(lengths, rate=1.0, arrivals="bursty", seed=3)
    four = timed_plan(lengths, rate=4.0, arrivals="bursty", seed=3)
    assert [p.send_at_s for p in four] == pytest.approx([p.send_at_s / 4 for p in one])
    assert [(p.prompt_tokens, p.output_tokens) for p in one] == \
        [(p.prompt_tokens, p.output_tokens) for p in lengths]
    assert one[0].send_at_s == 0.0
    gaps = [b.send_at_s - a.send_at_s for a, b in pairwise(four)]
    assert min(gaps) >= 0
    assert len(gaps) / four[-1].send_at_s == pytest.approx(4.0, rel=0.1)  # the mean rate
    assert gap_stats(gaps)[1] == pytest.approx(3.0, rel=0.15)
    assert timed_plan(lengths, rate=1.0, arrivals="bursty", seed=3) == one
    assert timed_plan(lengths, rate=1.0, arrivals="bursty", seed=4) != one
    assert timed_plan(lengths, rate=1.0, arrivals="poisson", seed=3) != one


def test_bad_arrivals_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown arrivals"):
        unit_gaps("trace", 3, seed=0)
    with pytest.raises(ValueError, match="> 0"):
        unit_gaps("bursty", 3, seed=0, cv=0.0)
    with pytest.raises(ValueError, match="rate"):
        timed_plan([], rate=0.0)


@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason="../shared/traces is not beside the repo")
def test_the_shared_trace_gives_the_documented_shapes() -> None:
    rows = load_trace(SHARED_TRACE)
    for name, prompt_p50, output_p50 in [("conversation", 63, 27), ("prefill-heavy", 717, 14),
                                         ("decode-heavy", 16, 110)]:
        plan = shaped_plan(rows, workload_shape(name), rate=1.0, count=len(rows))
        assert percentile([p.prompt_tokens for p in plan], 50) == prompt_p50
        assert percentile([p.output_tokens for p in plan], 50) == output_p50
        assert max(p.prompt_tokens + p.output_tokens for p in plan) <= 1024
