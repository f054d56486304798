"""A short trace replay against a real engine: every planned request comes back complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.trace_replay.client import replay
from specserve_engine.trace_replay.summary import summarize
from specserve_engine.trace_replay.trace import TraceRow, load_trace, plan_requests, token_prompts

pytestmark = pytest.mark.engine

SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared" / "traces" / "azure_llm_conv_2023.csv"


def trace_rows() -> list[TraceRow]:
    if SHARED_TRACE.is_file():
        return load_trace(SHARED_TRACE)
    # Without ../shared: the first rows of the Azure trace, as sizes and gaps.
    return [TraceRow(t, p, o) for t, p, o in ((0.0, 374, 44), (4.31, 396, 109), (4.54, 879, 55),
                                              (4.71, 91, 16), (5.89, 381, 84))] * 4


def test_smoke_replay_returns_every_request_complete(
    tiny_models: tiny.TinyModels, spec_engine: ServerProcess
) -> None:
    rows = trace_rows()
    plan = plan_requests(rows, rate=1.5, count=20, max_prompt_tokens=128, max_output_tokens=32)
    assert plan[-1].send_at_s < 15
    text = tiny_models.heldout.read_text(encoding="utf-8")
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(tiny_models.target / "tokenizer.json")).encode(text[:50000]).ids
    prompts = token_prompts(ids, [p.prompt_tokens for p in plan], seed=1)
    done: list[int] = []
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
