"""The step's prefill tokens in every decision: K, the stop rule, trimming, the cycle prediction.

The numbers: a target that processes 64 tokens for the price of one (bandwidth-bound) and pays
0.1 ms per token beyond (compute-bound), a draft at 1 ms per step. A decode batch of 4 with
K=3 verifies 16 tokens, under the knee: drafts are nearly free. A 512-token prefill chunk in the
same step puts every verified draft token past the knee, so each costs 0.1 ms x 4 requests;
a long chunk also makes the step long, so the step's goodput is low and one more draft position
is cheap against it. K moves both ways with the prefill, and only pricing it can tell which.
"""

from __future__ import annotations

import pytest

from specserve_engine.policy import AcceptanceModel, EfficiencyModel, Policy, SloTargets
from specserve_engine.policy.drafting import stop_rule
from specserve_engine.policy.driver import (
    StepDriver,
    prefill_tokens,
    step_observations,
    upcoming_prefill_tokens,
)
from specserve_engine.policy.params import ModelParams, TimingCoefficients
from specserve_engine.policy.timing import StepTimeModel

TARGET = TimingCoefficients(overhead_s=0.020, per_token_s=1e-4, knee_tokens=64)
DRAFT = TimingCoefficients(overhead_s=0.001, per_token_s=2e-6)
CONFIDENT = [[0.55, 0.3, 0.16, 0.09, 0.05]] * 4  # cumulative acceptance, 4 requests


def _model(**policy: object) -> EfficiencyModel:
    p = Policy.model_validate({"k_max": 5, "model": ModelParams(target=TARGET, draft=DRAFT),
                               **policy})
    return EfficiencyModel(p, StepTimeModel(TARGET, DRAFT), AcceptanceModel(p.model),
                           draft_steps_when_off=1)


def test_prefill_tokens_are_the_step_s_tokens_beyond_its_decodes() -> None:
    # Two decodes verifying 3 and 0 drafts, a last prefill chunk of 40 (emits its first token),
    # an earlier chunk of 100 (emits nothing, so it is not among the emitting requests).
    total = (1 + 3) + 1 + 40 + 100
    assert prefill_tokens(total, [3, 0, 0]) == 139
    assert prefill_tokens(4, [3]) == 0
    assert prefill_tokens(0, []) == 0


def test_upcoming_prefill_is_what_prompts_need_within_the_budget_decodes_leave() -> None:
    assert upcoming_prefill_tokens(900, token_budget=2048, decode_tokens=24) == 900
    assert upcoming_prefill_tokens(5000, token_budget=2048, decode_tokens=48) == 2000
    assert upcoming_prefill_tokens(100, token_budget=32, decode_tokens=40) == 0


def test_k_falls_when_prefill_pushes_the_verify_past_the_knee() -> None:
    model = _model()
    alone = model.choose_k(CONFIDENT, 128.0)
    past_knee = model.choose_k(CONFIDENT, 128.0, extra_tokens=64)
    assert past_knee.k < alone.k  # each verified draft token now costs 0.1 ms x 4 requests
    # The prediction is of the step that will run: it carries the chunk's verify cost.
    expected_verify = model.timing.verify_seconds(4, 4 * (past_knee.k + 1) + 64, 128.0)
    assert past_knee.verify_seconds == pytest.approx(expected_verify)


def test_k_rises_when_a_long_chunk_dominates_the_step() -> None:
    # Every decoding request waits for the chunk anyway: one more draft position adds little
    # to a long step and its expected tokens are worth more than the step's (low) goodput.
    model = _model()
    past_knee = model.choose_k(CONFIDENT, 128.0, extra_tokens=64)
    long_chunk = model.choose_k(CONFIDENT, 128.0, extra_tokens=1024)
    assert long_chunk.k > past_knee.k
    assert long_chunk.goodput < past_knee.goodput


def test_the_tpot_slo_sees_the_prefill_every_decoding_request_waits_for() -> None:
    # A bound the decode-only step meets at its best K and the step with 1k prefill tokens
    # does not: the prediction says so (and the fallback picks the lowest TPOT).
    model = _model(slo=SloTargets(tpot_seconds=0.02))
    alone = model.choose_k(CONFIDENT, 128.0)
    chunk = model.choose_k(CONFIDENT, 128.0, extra_tokens=1024)
    limit = model.policy.tpot_limit_seconds
    assert limit is not None
    assert alone.tpot_seconds <= limit < chunk.tpot_seconds
    every_k = model.predict_all(CONFIDENT, 128.0, 1024)
    assert chunk.tpot_seconds == min(p.tpot_seconds for p in every_k)


def test_the_draft_s_first_forward_is_priced_over_the_prefill() -> None:
    model = _model()
    timing = model.timing
    one = timing.draft_seconds(4, 128.0, 1)
    assert timing.draft_seconds(4, 128.0, 3, extra_tokens=500) == pytest.approx(
        3 * one + 500 * DRAFT.per_token_s)
    assert timing.draft_seconds(4, 128.0, 0, extra_tokens=500) == 0.0
    # K=0 on an engine that drafts anyway pays the first forward, prefill included.
    assert model.draft_seconds(4, 128.0, 0, 500) == pytest.approx(one + 500 * DRAFT.per_token_s)


def test_the_stop_rule_follows_the_step_s_prefill() -> None:
    model = _model()

    def threshold(extra: int) -> float:
        prediction = model.predict_all(CONFIDENT, 128.0, extra, k_max=3, k_min=3)[0]
        rule = stop_rule(model, prediction, 128.0, extra_tokens=extra)
        assert rule is not None
        return rule.gain_threshold

    # Past the knee a position costs its verify tokens too: drafting stops sooner; a long
    # chunk makes the step's goodput low and a position cheap against it: later.
    assert threshold(48) > threshold(0) > threshold(512)


def test_trimming_drops_the_low_tail_once_the_next_step_is_past_the_knee() -> None:
    model = _model()
    rows = [[0.9, 0.6, 0.3, 0.03, 0.01]] * 4
    assert model.trim(rows, 128.0) == [5] * 4  # 24 tokens: under the knee, drafts are free
    assert sum(model.trim(rows, 128.0, extra_tokens=64)) < 20


def test_the_driver_carries_the_prefill_into_the_cycle_and_its_observations() -> None:
    driver = StepDriver(Policy(k_max=4, model=ModelParams(target=TARGET, draft=DRAFT)),
                        engine_k_max=4)
    driver.begin_step()
    k = driver.decide(["a", "b", "c", "d"], 128.0, extra_tokens=300)
    assert driver.extra_tokens == 300
    cycle = driver.open_cycle(0.0, 5, 4 * (1 + k) + 300)
    assert cycle is not None and cycle.extra_tokens == 300
    timing = driver.model.timing
    assert cycle.predicted_seconds == pytest.approx(
        driver.model.draft_seconds(5, 128.0, k, 300)
        + timing.verify_seconds(5, 4 * (1 + k) + 300, 128.0) + timing.host_seconds(5, 128.0))
    driver.forwards_done(0.05)
    recorded = driver.record_step(0.006, 3)
    assert recorded is not None
    draft = [o for o in recorded.observations if o.role == "draft"]
    assert draft and draft[0].num_tokens == 5 + 100  # 300 prefill tokens over 3 forwards
    driver.begin_step()
    assert driver.extra_tokens == 0


def test_a_draft_observation_without_prefill_is_one_token_per_request() -> None:
    (target, draft) = step_observations(4, 16, 64.0, 0.03, 0.006, 3)
    assert target.seconds == pytest.approx(0.024)
    assert draft.num_tokens == 4 and draft.seconds == pytest.approx(0.002)


def test_price_prefill_false_decides_as_if_the_step_had_none_but_predicts_the_cycle_with_it(
) -> None:
    model = ModelParams(target=TARGET, draft=DRAFT)
    priced = StepDriver(Policy(k_max=4, model=model), engine_k_max=4)
    unpriced = StepDriver(Policy(k_max=4, model=model, price_prefill=False), engine_k_max=4)
    ids = ["a", "b", "c", "d"]
    for driver in (priced, unpriced):
        driver.begin_step()
    assert unpriced.decide(ids, 128.0, extra_tokens=64) == unpriced.model.choose_k_for(
        ids, 128.0).k
    priced.decide(ids, 128.0, extra_tokens=64)
    assert priced.prediction is not None and unpriced.prediction is not None
    assert priced.prediction.verify_seconds > unpriced.prediction.verify_seconds
    cycle = unpriced.open_cycle(0.0, 4, 4 * (1 + unpriced.k) + 64)
    assert cycle is not None and cycle.extra_tokens == 64
    assert cycle.predicted_seconds > unpriced.model.timing.verify_seconds(
        4, 4 * (1 + unpriced.k) + 64, 128.0)
