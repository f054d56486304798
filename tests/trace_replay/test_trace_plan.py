"""The replay plan: trace parsing, time scaling to a load level, length scaling, prompts."""

from __future__ import annotations

from pathlib import Path

import pytest

from specserve_engine.trace_replay.trace import (
    TraceError,
    TraceRow,
    length_scale,
    load_trace,
    percentile,
    plan_requests,
    token_prompts,
)

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_conv_2023.csv"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_load_trace_parses_times_relative_to_the_first_request(tmp_path: Path) -> None:
    rows = load_trace(write(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                                      "2023-11-16 18:15:47.1805900,10,3\n"
                                      "2023-11-16 18:15:46.6805900,374,44\n"))
    assert rows == [TraceRow(0.0, 374, 44), TraceRow(0.5, 10, 3)]


@pytest.mark.parametrize(("text", "message"), [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46,1\n", "missing column(s) GeneratedTokens"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,x,1\n", ":2:"),
    ("TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"),
])
def test_bad_traces_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(TraceError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_trace(write(tmp_path, text))
    with pytest.raises(TraceError, match="cannot read trace"):
        load_trace(tmp_path / "absent.csv")


def rows_every(gap: float, n: int, prompt: int = 100, output: int = 20) -> list[TraceRow]:
    return [TraceRow(i * gap, prompt + i, output + i) for i in range(n)]


def test_arrivals_are_rescaled_to_the_target_rate_keeping_relative_gaps() -> None:
    rows = [TraceRow(t, 10, 10) for t in (0.0, 1.0, 1.5, 4.0, 5.0)]  # mean gap 1.25 s
    plan = plan_requests(rows, rate=2.0, count=5, max_prompt_tokens=10, max_output_tokens=10)
    times = [p.send_at_s for p in plan]
    assert times == pytest.approx([0.0, 0.4, 0.6, 1.6, 2.0])  # mean gap 0.5 s = 1 / 2 req/s
    twice = plan_requests(rows, rate=4.0, count=5, max_prompt_tokens=10, max_output_tokens=10)
    assert [p.send_at_s for p in twice] == pytest.approx([t / 2 for t in times])
    # The same requests at every level: only the times change.
    assert [(p.prompt_tokens, p.output_tokens) for p in plan] == \
        [(p.prompt_tokens, p.output_tokens) for p in twice]


def test_a_window_starts_at_its_first_row_and_simultaneous_arrivals_spread_evenly() -> None:
    rows = rows_every(2.0, 10)
    plan = plan_requests(rows, rate=1.0, count=3, start=4, max_prompt_tokens=1000,
                         max_output_tokens=1000)
    assert [p.send_at_s for p in plan] == pytest.approx([0.0, 1.0, 2.0])
    same = [TraceRow(0.0, 5, 5)] * 3
    plan = plan_requests(same, rate=2.0, count=3, max_prompt_tokens=9, max_output_tokens=9)
    assert [p.send_at_s for p in plan] == pytest.approx([0.0, 0.5, 1.0])


def test_lengths_map_the_99th_percentile_onto_the_limit_and_are_clamped() -> None:
    rows = [TraceRow(float(i), 10 * (i + 1), i + 1) for i in range(100)]  # prompts 10..1000
    assert length_scale([r.prompt_tokens for r in rows], 256) == pytest.approx(
        256 / percentile([r.prompt_tokens for r in rows], 99))
    plan = plan_requests(rows, rate=1.0, count=100, max_prompt_tokens=256, max_output_tokens=32)
    prompts = [p.prompt_tokens for p in plan]
    outputs = [p.output_tokens for p in plan]
    assert max(prompts) == 256 and min(prompts) >= 1
    assert max(outputs) == 32 and min(outputs) == 1
    assert prompts == sorted(prompts)  # scaling keeps the order of sizes


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"count": 0}, {"count": 11}, {"start": 9,
                                                                              "count": 2}])
def test_impossible_plans_are_refused(kwargs: dict) -> None:
    args = {"rate": 1.0, "count": 5, "max_prompt_tokens": 8, "max_output_tokens": 8, **kwargs}
    with pytest.raises(ValueError):
        plan_requests(rows_every(1.0, 10), **args)


def test_prompts_are_cut_deterministically_with_the_planned_lengths() -> None:
    tokens = list(range(1000))
    a = token_prompts(tokens, [5, 50, 1], seed=3)
    assert [len(p) for p in a] == [5, 50, 1]
    assert a == token_prompts(tokens, [5, 50, 1], seed=3)
    assert all(p == list(range(p[0], p[0] + len(p))) for p in a)  # contiguous slices
    with pytest.raises(ValueError, match="needs 2000"):
        token_prompts(tokens, [2000], seed=0)


@pytest.mark.skipif(not SHARED_TRACE.is_file(), reason="../shared/traces is not beside the repo")
def test_the_shared_azure_trace_plans_within_the_tiny_context() -> None:
    rows = load_trace(SHARED_TRACE)
    assert len(rows) > 19000
    plan = plan_requests(rows, rate=2.0, count=48, max_prompt_tokens=256, max_output_tokens=128)
    assert all(p.prompt_tokens + p.output_tokens <= 384 for p in plan)
    assert plan[-1].send_at_s == pytest.approx(47 / 2.0)
