"""Replay a request plan against an OpenAI completions endpoint; one record per planned request.

Streaming, so the first token's arrival (TTFT) is seen as it happens. Each request asks for
exactly its planned output length (`ignore_eos`), greedy. Every planned request gets a record,
whatever happens: a request still unsent at the deadline is recorded as such, never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx

from specserve_engine.trace_replay.trace import PlannedRequest


@dataclass
class RequestRecord:
    index: int
    prompt_tokens: int
    expected_tokens: int
    sent_s: float | None = None  # seconds after the level started
    ttft_s: float | None = None
    e2e_s: float | None = None
    output_tokens: int = 0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.e2e_s is not None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first; None with fewer than two tokens."""
        if not self.ok or self.ttft_s is None or self.output_tokens < 2:
            return None
        assert self.e2e_s is not None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


async def _one(
    client: httpx.AsyncClient, url: str, model: str, plan: PlannedRequest, prompt: list[int],
    record: RequestRecord, started: float,
) -> None:
    body = {"model": model, "prompt": prompt, "max_tokens": plan.output_tokens,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    sent = time.perf_counter()
    record.sent_s = sent - started
    async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")[:200]
            record.error = f"HTTP {resp.status_code}: {text}"
            return
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            # Any chunk with a choice carries the first token(s), even one whose text is still
            # an incomplete UTF-8 sequence.
            if record.ttft_s is None and chunk.get("choices"):
                record.ttft_s = time.perf_counter() - sent
            usage = chunk.get("usage")
            if usage:
                record.output_tokens = int(usage.get("completion_tokens", 0))
    record.e2e_s = time.perf_counter() - sent
    if record.output_tokens != plan.output_tokens:
        record.error = f"got {record.output_tokens} of {plan.output_tokens} tokens"


async def replay(
    url: str,
    model: str,
    plan: Sequence[PlannedRequest],
    prompts: Sequence[list[int]],
    *,
    deadline_s: float,
    on_done: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Send each planned request at its time; stop everything at `deadline_s` after the start."""
    records = [RequestRecord(p.index, p.prompt_tokens, p.output_tokens) for p in plan]
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    async def run(p: PlannedRequest, prompt: list[int], record: RequestRecord) -> None:
        try:
            delay = p.send_at_s - (time.perf_counter() - started)
            if p.send_at_s >= deadline_s:
                record.error = "not sent: benchmark deadline"
                return
            await asyncio.sleep(max(delay, 0.0))
            left = deadline_s - (time.perf_counter() - started)
            await asyncio.wait_for(_one(client, url, model, p, prompt, record, started), left)
        except TimeoutError:
            record.error = "cut at the benchmark deadline"
        except (httpx.HTTPError, json.JSONDecodeError, OSError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            if on_done is not None:
                on_done(record)

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(None)) as client:
        await asyncio.gather(*(run(p, prompt, r)
                               for p, prompt, r in zip(plan, prompts, records, strict=True)))
    return records
