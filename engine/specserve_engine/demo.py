"""`specserve demo`: serve the tiny models with speculation, ask a few things, show the stats."""

from __future__ import annotations

import sys
import time

import httpx

from specserve_engine import tiny
from specserve_engine.launcher import ServerFailed, ServerProcess
from specserve_engine.vllm_counters import spec_decode_stats


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(port: int, requests: int, max_tokens: int) -> int:
    from openai import OpenAI

    models = tiny.build()
    prompts = tiny.heldout_prompts(models, requests, chars=160)
    server = ServerProcess(["--k-max", "5"], port=port, name="demo")
    _say(f"starting `specserve serve` on {server.url} (log: {server.log_path}) ...")
    started = time.monotonic()
    try:
        server.start().wait_ready()
    except ServerFailed as exc:
        print(f"specserve demo: the engine did not start:\n{exc}", file=sys.stderr)
        return 1
    try:
        _say(f"engine ready in {time.monotonic() - started:.0f}s\n")
        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        t0 = time.monotonic()
        out_tokens = 0
        for i, prompt in enumerate(prompts):
            resp = client.completions.create(
                model="specserve-tiny", prompt=prompt, max_tokens=max_tokens, temperature=0
            )
            out_tokens += resp.usage.completion_tokens if resp.usage else 0
            _say(f"--- request {i + 1}: prompt (last line) {prompt.splitlines()[-1]!r}")
            _say(resp.choices[0].text)
        _say("--- chat, streamed:")
        stream = client.chat.completions.create(
            model="specserve-tiny",
            messages=[{"role": "user", "content": "def fibonacci(n):"}],
            max_tokens=max_tokens, temperature=0, stream=True,
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        elapsed = time.monotonic() - t0
        stats = spec_decode_stats(httpx.get(f"{server.url}/metrics", timeout=10).text)
        _say("\n\n=== speculation stats (from vLLM's /metrics)")
        _say(f"draft steps: {stats.drafts:.0f}, draft tokens: {stats.draft_tokens:.0f}, "
             f"accepted: {stats.accepted_tokens:.0f} "
             f"(acceptance rate {stats.acceptance_rate:.2f}, "
             f"{stats.mean_accepted_per_draft:.2f} accepted per step)")
        _say(f"{out_tokens} completion tokens in {elapsed:.1f}s")
        return 0
    finally:
        server.stop()
