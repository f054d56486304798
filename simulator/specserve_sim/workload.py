"""Trace rows -> simulated requests: the bench's plan, or the trace at its own lengths.

`bench_level` is the trace-replay bench's request plan for one load level (trace_replay/trace.py
`plan_requests`: the same window of rows, lengths scaled to the tiny models' limits, gaps
stretched to the level's mean rate), so a simulated level replays exactly the requests the bench
sent. `native` keeps the trace's own token counts (for a GPU-sized model) and divides its gaps
by `speedup` (1: the trace's own rate).
"""

from __future__ import annotations

from collections.abc import Sequence

from specserve_engine.trace_replay.trace import TraceRow, plan_requests
from specserve_sim.interface import SimRequest


def bench_level(rows: Sequence[TraceRow], *, rate: float, count: int, max_prompt_tokens: int,
                max_output_tokens: int, start: int = 0) -> list[SimRequest]:
    """The bench's plan at `rate` req/s, as simulated requests (id = the plan index)."""
    plan = plan_requests(rows, rate=rate, count=count, start=start,
                         max_prompt_tokens=max_prompt_tokens,
                         max_output_tokens=max_output_tokens)
    return [SimRequest(str(p.index), p.send_at_s, p.prompt_tokens, p.output_tokens)
            for p in plan]


def native(rows: Sequence[TraceRow], *, speedup: float = 1.0, count: int | None = None,
           start: int = 0, max_model_len: int | None = None) -> list[SimRequest]:
    """`count` rows from `start` (default: all) at their own lengths, arrivals / `speedup`.
    `max_model_len` clips prompt + output as a server with that limit would accept them."""
    if speedup <= 0:
        raise ValueError(f"speedup must be > 0, got {speedup}")
    window = rows[start:] if count is None else rows[start:start + count]
    if not window:
        raise ValueError("no trace rows selected")
    t0 = window[0].arrival_s
    out = []
    for i, r in enumerate(window):
        prompt, output = max(1, r.prompt_tokens), max(1, r.output_tokens)
        if max_model_len is not None:
            prompt = min(prompt, max_model_len - 1)
            output = max(1, min(output, max_model_len - prompt))
        out.append(SimRequest(str(start + i), (r.arrival_s - t0) / speedup, prompt, output))
    return out


def offered_rate(requests: Sequence[SimRequest]) -> float:
    """Mean arrival rate (req/s) over the requests' span."""
    if len(requests) < 2:
        return 0.0
    span = requests[-1].arrival - requests[0].arrival
    return (len(requests) - 1) / span if span > 0 else float("inf")
