"""Draft-model speculation in real vLLM must not change greedy output, token for token."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from engine_kit import Control

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.vllm_metrics import spec_decode_stats

N_PROMPTS = 24
MAX_TOKENS = 40


def _greedy(server: ServerProcess, prompt: str) -> list[int]:
    resp = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": "tiny", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
              "ignore_eos": True, "return_token_ids": True},
        timeout=120,
    )
    resp.raise_for_status()
    choice = resp.json()["choices"][0]
    return choice.get("token_ids") or choice["text"]


@pytest.fixture
def static_k3(control: Control) -> Iterator[None]:
    """Static K=3: drafts on every step, whatever the adaptive policy would choose here (every
    mode is compared in test_adaptive_engine)."""
    control.set_policy(mode="static", k_max=4, static_k=3)
    yield
    control.set_policy(mode="adaptive", k_max=4)


@pytest.mark.usefixtures("static_k3")
def test_greedy_output_identical_with_and_without_speculation(
    tiny_models: tiny.TinyModels, spec_engine: ServerProcess, plain_engine: ServerProcess
) -> None:
    prompts = tiny.heldout_prompts(tiny_models, N_PROMPTS, seed=7)
    before = spec_decode_stats(httpx.get(f"{spec_engine.url}/metrics").text)
    # Concurrent requests so verification runs on real batches, not only batch size 1.
    with ThreadPoolExecutor(8) as pool:
        spec = list(pool.map(lambda p: _greedy(spec_engine, p), prompts))
        plain = list(pool.map(lambda p: _greedy(plain_engine, p), prompts))
    mismatches = [i for i, (a, b) in enumerate(zip(spec, plain, strict=True)) if a != b]
    assert not mismatches, f"speculation changed greedy output for prompts {mismatches}"
    stats = spec_decode_stats(httpx.get(f"{spec_engine.url}/metrics").text).minus(before)
    # The comparison only means something if drafts were really proposed and accepted.
    assert stats.draft_tokens > 0
    assert stats.accepted_tokens > 0
