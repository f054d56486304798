"""SpecServe deciding speculation inside a real vLLM engine, steered through its control port."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scipy.stats import chi2_contingency

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.policy import EfficiencyModel, ModelParams, Policy
from specserve_engine.vllm_counters import metric_totals
from tests.kits.engine_kit import POLICY, Control

pytestmark = pytest.mark.engine


def _metrics(control: Control) -> dict[str, float]:
    return metric_totals(httpx.get(control.url + "/metrics", timeout=10).text)


def _complete(server: ServerProcess, prompt: str, max_tokens: int, **extra: object) -> dict:
    r = httpx.post(f"{server.url}/v1/completions", timeout=300, json={
        "model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "return_token_ids": True, **extra})
    r.raise_for_status()
    return r.json()


def _greedy_ids(server: ServerProcess, prompts: list[str], max_tokens: int) -> list[list[int]]:
    """One request at a time: the arithmetic is batch-invariant, so outputs must be identical
    (test_speculation_lossless covers concurrent requests, where batching alone moves near
    ties in bf16)."""
    return [_complete(server, p, max_tokens)["choices"][0]["token_ids"] for p in prompts]


@pytest.fixture(autouse=True)
def _back_to_adaptive(control: Control):
    yield
    control.set_policy(mode="adaptive", k_max=4)


def test_put_changes_the_k_of_the_next_steps(control: Control, spec_engine: ServerProcess,
                                             tiny_models: tiny.TinyModels) -> None:
    prompt = tiny.heldout_prompts(tiny_models, 1, seed=11)[0]
    for mode, k in (("static", 1), ("static", 3), ("off", 0)):
        version = control.set_policy(mode=mode, k_max=4, static_k=min(k, 4))
        before = _metrics(control)
        _complete(spec_engine, prompt, 16)
        after = _metrics(control)
        assert after["specserve_policy_version"] == version
        assert after["specserve_speculative_k_last"] == k
        steps = after["specserve_speculative_k_count"] - before["specserve_speculative_k_count"]
        k_sum = after["specserve_speculative_k_sum"] - before["specserve_speculative_k_sum"]
        assert steps > 0 and k_sum == k * steps, f"every step of mode {mode} uses K={k}"
    assert after["specserve_steps_speculation_off_total"] >= steps


def test_control_port_errors_over_http(control: Control) -> None:
    url = control.url + POLICY
    version = control.policy_version()
    assert httpx.put(url, json={"version": version + 1}).status_code == 401
    wrong = httpx.put(url, json={"version": version + 1},
                      headers={"Authorization": "Bearer wrong"})
    assert wrong.status_code == 401
    bad = httpx.put(url, json={"version": version + 1, "k_max": -2}, headers=control.auth)
    assert bad.status_code == 422 and "k_max" in bad.json()["error"]
    stale = httpx.put(url, json={"version": 0, "mode": "off", "k_max": 4}, headers=control.auth)
    assert (stale.status_code == 409) == (version > 0)
    assert control.policy_version() == version, "a refused PUT must change nothing"


def test_greedy_output_identical_in_every_mode(
    control: Control, spec_engine: ServerProcess, plain_engine: ServerProcess,
    tiny_models: tiny.TinyModels,
) -> None:
    prompts = tiny.heldout_prompts(tiny_models, 6, seed=21)
    reference = _greedy_ids(plain_engine, prompts, 32)
    for fields in ({"mode": "adaptive"}, {"mode": "adaptive", "confidence_floor": 0.5},
                   {"mode": "static", "static_k": 1}, {"mode": "static", "static_k": 4},
                   {"mode": "threshold", "threshold_probability": 0.6}, {"mode": "off"}):
        control.set_policy(k_max=4, **fields)
        assert _greedy_ids(spec_engine, prompts, 32) == reference, fields


def test_greedy_output_identical_under_policy_changes_mid_generation(
    control: Control, spec_engine: ServerProcess, plain_engine: ServerProcess,
    tiny_models: tiny.TinyModels,
) -> None:
    prompts = tiny.heldout_prompts(tiny_models, 6, seed=31)
    reference = _greedy_ids(plain_engine, prompts, 64)
    done = threading.Event()
    changes = 0

    def churn() -> None:
        nonlocal changes
        cycle = [{"mode": "static", "static_k": 4}, {"mode": "off"},
                 {"mode": "adaptive"}, {"mode": "static", "static_k": 1}]
        while not done.is_set():
            control.set_policy(k_max=4, **cycle[changes % len(cycle)])
            changes += 1
            time.sleep(0.2)

    churner = threading.Thread(target=churn)
    churner.start()
    try:
        outputs = _greedy_ids(spec_engine, prompts, 64)
    finally:
        done.set()
        churner.join()
    assert changes >= 3, "the policy must really change while requests are generating"
    assert outputs == reference


def test_sampled_tokens_follow_the_same_distribution(
    control: Control, spec_engine: ServerProcess, plain_engine: ServerProcess
) -> None:
    """Temperature 1: speculation must not change what gets sampled.

    On vLLM's CPU build SpecServe keeps sampled requests out of verification, because vLLM's
    CPU rejection sampler fails this very test (p < 1e-14 with vLLM's own fixed-K speculation);
    on GPU they are verified as usual.
    """
    control.set_policy(mode="static", k_max=4, static_k=3)
    prompt = "import os\nimport sys\n\n\ndef main("

    def sample(server: ServerProcess, seed: int) -> list[int]:
        # One sequence per request, each with its own seed: `n` > 1 with one seed repeats it.
        r = httpx.post(f"{server.url}/v1/completions", timeout=300, json={
            "model": "tiny", "prompt": prompt, "max_tokens": 4, "temperature": 1.0,
            "seed": seed, "ignore_eos": True, "return_token_ids": True})
        r.raise_for_status()
        return r.json()["choices"][0]["token_ids"][1:]  # position 0 comes from prefill alone

    def tokens(server: ServerProcess) -> Counter[int]:
        counts: Counter[int] = Counter()
        with ThreadPoolExecutor(16) as pool:
            for ids in pool.map(lambda seed: sample(server, seed), range(240)):
                counts.update(ids)
        return counts

    spec, plain = tokens(spec_engine), tokens(plain_engine)
    # The vocabulary slice: tokens seen at least 10 times in all; the rest pooled as one cell.
    common = sorted(t for t in spec | plain if spec[t] + plain[t] >= 10)
    assert len(common) >= 3, "too few distinct tokens for a meaningful test"
    rows = [[c[t] for t in common] + [sum(c.values()) - sum(c[t] for t in common)]
            for c in (spec, plain)]
    if rows[0][-1] + rows[1][-1] == 0:
        rows = [row[:-1] for row in rows]
    p_value = chi2_contingency(rows).pvalue
    assert p_value > 0.01, f"sampled distributions differ (p={p_value:.4f}): {rows}"


def _steps_by_batch_and_k(control: Control) -> Counter[tuple[str, int]]:
    counts: Counter[tuple[str, int]] = Counter()
    text = httpx.get(control.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "specserve_steps_by_batch_total":
                counts[(sample.labels["batch"], int(sample.labels["k"]))] += sample.value
    return counts


def _k_the_model_predicts(control: Control, batch_sizes: range, contexts: tuple[float, ...],
                          tolerance: float) -> set[int]:
    """Every K whose goodput, as predicted by the model this engine has fitted on this machine,
    is within `tolerance` of the best at one of these batch sizes and contexts (requests at the
    engine's running acceptance, no history of their own)."""
    state = httpx.get(control.url + POLICY, timeout=10).json()
    fitted = ModelParams.model_validate(state["fitted"])
    policy = Policy.model_validate(state["policy"]).model_copy(update={"model": fitted})
    model = EfficiencyModel(policy)
    allowed = set()
    for b in batch_sizes:
        rows = model.acceptance.lookahead(range(b), policy.k_max)
        for ctx in contexts:
            predictions = model.predict_all(rows, ctx)
            best = model.choose_k(rows, ctx).goodput
            allowed |= {p.k for p in predictions if p.goodput >= (1 - tolerance) * best}
    return allowed


def test_burst_takes_the_k_the_fitted_model_predicts_and_every_request_finishes(
    control: Control, spec_engine: ServerProcess, tiny_models: tiny.TinyModels
) -> None:
    """At 64 concurrent requests the engine runs the K its own model, fitted on this machine,
    predicts best there: K=0 where verification is compute-bound (fp32 on AVX2), K > 0 where a
    batch of 64 is still cheap to verify (bf16 on AMX). Not one machine's numbers."""
    control.set_policy(mode="adaptive", k_max=4)
    prompts = tiny.heldout_prompts(tiny_models, 64, chars=120, seed=41)
    # Long enough that the 64 requests overlap: the HTTP arrivals spread over a few hundred ms,
    # and where drafts are accepted well (bf16 on AVX-512 BF16) a 24-token request finished
    # in about six K=4 steps, before the batch reached 33.
    tokens = 64

    def burst() -> Counter[tuple[str, int]]:
        before = _steps_by_batch_and_k(control)
        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(lambda p: _complete(spec_engine, p, tokens), prompts))
        assert all(len(r["choices"][0]["token_ids"]) == tokens for r in results)
        prompt_tokens.update(r["usage"]["prompt_tokens"] for r in results)
        return _steps_by_batch_and_k(control) - before

    prompt_tokens: set[int] = set()
    burst()  # the engine refits its timing model on this machine's steps (25, 50, 100, ...)
    contexts = (min(prompt_tokens), max(prompt_tokens) + float(tokens))
    allowed = _k_the_model_predicts(control, range(33, 65), contexts, tolerance=0.05)
    steps = burst()
    allowed |= _k_the_model_predicts(control, range(33, 65), contexts, tolerance=0.05)
    large = {k: n for (batch, k), n in steps.items() if batch == "33-64"}
    total = sum(large.values())
    assert total >= 5, f"the burst must run steps at batch 33-64: {dict(steps)}"
    print(f"\nburst at batch 33-64: steps by K {large}; the fitted model predicts {allowed}")
    agreeing = sum(n for k, n in large.items() if k in allowed)
    assert agreeing >= 0.8 * total, (
        f"K chosen at batch 33-64 {large} (steps by K), the fitted model predicts {allowed}")


def test_threshold_mode_cuts_drafts_at_the_first_unsure_token(
    control: Control, spec_engine: ServerProcess, tiny_models: tiny.TinyModels
) -> None:
    """The confidence-threshold baseline: a high threshold verifies few drafts, a low one all."""
    prompts = tiny.heldout_prompts(tiny_models, 4, seed=51)

    def verified_and_trimmed(threshold: float) -> tuple[float, float]:
        control.set_policy(mode="threshold", k_max=4, threshold_probability=threshold)
        before = _metrics(control)
        _greedy_ids(spec_engine, prompts, 24)
        after = _metrics(control)
        return tuple(after[k] - before[k] for k in (  # type: ignore[return-value]
            "specserve_draft_tokens_verified_total", "specserve_draft_tokens_trimmed_total"))

    low_verified, low_trimmed = verified_and_trimmed(0.001)
    high_verified, high_trimmed = verified_and_trimmed(0.999)
    assert low_verified > 0 and low_trimmed == 0
    assert high_verified < low_verified / 2 and high_trimmed > 0
