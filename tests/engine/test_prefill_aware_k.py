"""Inside a real vLLM engine, K is priced with the prefill the scheduler put into the step.

The engine is given a frozen model (`online_refit` false) in which every verified token costs
1 s past a knee of 0 tokens. Then a decode-only step never pays for a draft (K tokens cost K
seconds and bring fewer than K tokens), while a step that carries a prefill chunk of P tokens
is long anyway, and a draft token pays as soon as its acceptance exceeds B / (B + P). So the K
the scheduler chooses tells which steps it saw prefill in: K > 0 exactly there. Before the
scheduler priced the prefill (it passed no prefill to the policy) every step got K = 0.
"""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from specserve_contract import POLICY_PATH
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.policy import ModelParams, TimingCoefficients
from tests.kits.engine_kit import Control

pytestmark = pytest.mark.engine

DECODE_TOKENS_COST_SECONDS = ModelParams(
    target=TimingCoefficients(overhead_s=0.01, per_token_s=1.0, knee_tokens=0),
    draft=TimingCoefficients(overhead_s=1e-4, per_token_s=0.0),
    prior_acceptance=0.7, source="test: every verified token costs 1 s")


def _counters(control: Control) -> dict[tuple[str, str], float]:
    """(metric, k) -> value for the steps-by-K counters."""
    out: dict[tuple[str, str], float] = {}
    text = httpx.get(control.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in ("specserve_steps_by_batch_total", "specserve_steps_with_prefill_total"):
                key = (s.name, s.labels["k"])
                out[key] = out.get(key, 0.0) + s.value
    return out


def _complete(server: ServerProcess, prompt: str, max_tokens: int) -> list[int]:
    r = httpx.post(f"{server.url}/v1/completions", timeout=300, json={
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True})
    r.raise_for_status()
    return r.json()["choices"][0]["token_ids"]


def test_k_follows_the_prefill_the_step_carries(
    control: Control, spec_engine: ServerProcess, plain_engine: ServerProcess,
    tiny_models: tiny.TinyModels,
) -> None:
    state = httpx.get(control.url + POLICY_PATH, timeout=10).json()
    fitted = ModelParams.model_validate(state["fitted"])
    control.set_policy(mode="adaptive", k_max=4, online_refit=False,
                       model=DECODE_TOKENS_COST_SECONDS.model_dump())
    try:
        decoding = tiny.heldout_prompts(tiny_models, 1, chars=120, seed=7)[0]
        long_prompts = tiny.heldout_prompts(tiny_models, 3, chars=1500, seed=8)
        before = _counters(control)
        out: dict[str, list[int]] = {}
        worker = threading.Thread(
            target=lambda: out.update(decode=_complete(spec_engine, decoding, 64)))
        worker.start()
        for prompt in long_prompts:  # each one's prefill lands in a step with the decode
            time.sleep(0.3)
            _complete(spec_engine, prompt, 1)
        worker.join(timeout=300)
        after = _counters(control)
    finally:
        control.set_policy(mode="adaptive", k_max=4, online_refit=True,
                           model=fitted.model_copy(update={"source": "restored"}).model_dump())

    def delta(metric: str) -> dict[int, float]:
        return {int(k): v - before.get((m, k), 0.0) for (m, k), v in after.items()
                if m == metric and v - before.get((m, k), 0.0) > 0}

    every_step, prefill_steps = (delta("specserve_steps_by_batch_total"),
                                 delta("specserve_steps_with_prefill_total"))
    decode_only = {k: n - prefill_steps.get(k, 0) for k, n in every_step.items()}
    print(f"\nsteps by K: all {every_step}, with prefill {prefill_steps}")
    # The decoding request's own prompt and the three long ones each put prefill into a step.
    assert sum(n for k, n in prefill_steps.items() if k > 0) >= 4
    assert not prefill_steps.get(0), f"a step with prefill got K=0: {prefill_steps}"
    assert all(n == 0 for k, n in decode_only.items() if k > 0), (
        f"decode-only steps must not draft under this model: {decode_only}")
    assert decode_only.get(0, 0) >= 32  # the 64-token decode ran mostly alone
    # K moving with the prefill changes nothing the request receives.
    assert out["decode"] == _complete(plain_engine, decoding, 64)
