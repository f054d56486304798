"""A short trace replay against a real engine: every planned request comes back complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.trace_replay.client import replay
from specserve_engine.trace_replay.summary import summarize
from specserve_engine.trace_replay.trace import TraceRow, load_trace, plan_requests, token_prompts
from specserve_engine.vllm_counters import metric_totals
from tests.kits.engine_kit import Control

pytestmark = pytest.mark.engine

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_conv_2023.csv"


def trace_rows() -> list[TraceRow]:
    if SHARED_TRACE.is_file():
        return load_trace(SHARED_TRACE)
    # Without ../shared: the first rows of the Azure trace, as sizes and gaps.
    return [TraceRow(t, p, o) for t, p, o in ((0.0, 374, 44), (4.31, 396, 109), (4.54, 879, 55),
                                              (4.71, 91, 16), (5.89, 381, 84))] * 4


def _totals(control: Control) -> dict[str, float]:
    return metric_totals(httpx.get(control.url + "/metrics", timeout=10).text)


def test_smoke_replay_returns_every_request_complete(
    tiny_models: tiny.TinyModels, spec_engine: ServerProcess, control: Control
) -> None:
    rows = trace_rows()
    plan = plan_requests(rows, rate=1.5, count=20, max_prompt_tokens=128, max_output_tokens=32)
    assert plan[-1].send_at_s < 15
    text = tiny_models.heldout.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tiny_models.target / "tokenizer.json")).encode(text[:50000]).ids
    prompts = token_prompts(ids, [p.prompt_tokens for p in plan], seed=1)
    done: list[int] = []
    before = _totals(control)
    records = asyncio.run(replay(spec_engine.url, "tiny", plan, prompts, deadline_s=120,
                                 on_done=lambda r: done.append(r.index)))
    assert sorted(done) == [p.index for p in plan], "every request reports once"
    assert [r.index for r in records] == [p.index for p in plan]
    failed = [(r.index, r.error) for r in records if not r.ok]
    assert not failed
    for r, p in zip(records, plan, strict=True):
        assert r.output_tokens == p.output_tokens
        assert r.sent_s is not None and r.sent_s >= p.send_at_s - 0.05
        assert r.ttft_s is not None and 0 < r.ttft_s <= r.e2e_s
    summary = summarize("adaptive", 1.5, [records], tpot_slo_s=1.0)
    assert summary.completed == 20 and summary.goodput_tok_s > 0
    assert summary.output_tokens == sum(p.output_tokens for p in plan)

    # The engine measured its cycles and predicted each request's TPOT from them: one
    # prediction per request with a TPOT, in the units clients measure (a loose bound: the
    # accuracy goal lives in the bench, this checks the accounting).
    after = _totals(control)
    name = "specserve_request_tpot_predicted_seconds"
    predicted = after[f"{name}_count"] - before.get(f"{name}_count", 0.0)
    assert predicted == sum(1 for r in records if r.output_tokens > 1)
    mean_predicted = (after[f"{name}_sum"] - before.get(f"{name}_sum", 0.0)) / predicted
    mean_measured = sum(r.tpot_s for r in records if r.tpot_s) / predicted
    assert mean_measured / 3 < mean_predicted < mean_measured * 3, (mean_predicted, mean_measured)
    cycles = "specserve_step_time_observed_seconds_count"
    assert after[cycles] > before.get(cycles, 0.0)
