"""EfficiencyModel: G(K) by hand, K choice under the SLO, look-ahead stop, per-request trim."""

from __future__ import annotations

import itertools
from itertools import accumulate
from operator import mul

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from specserve_engine.policy.acceptance import AcceptanceModel
from specserve_engine.policy.cost import decision_cost_seconds
from specserve_engine.policy.goodput import EfficiencyModel, lengths_above_threshold
from specserve_engine.policy.params import ModelParams, Policy, TimingCoefficients
from specserve_engine.policy.timing import StepTimeModel
from tests.policy.lengths import predict_lengths

# Round numbers so every expectation below can be checked on paper: a verify step costs
# 10 ms + 1 ms per token, a draft step 2 ms, whatever the context.
TARGET = TimingCoefficients(overhead_s=0.010, per_token_s=0.001)
DRAFT = TimingCoefficients(overhead_s=0.002, per_token_s=0.0)


def make_model(**policy: object) -> EfficiencyModel:
    model = ModelParams(target=TARGET, draft=DRAFT)
    return EfficiencyModel(Policy.model_validate({"k_max": 3, "model": model, **policy}))


def geometric(rate: float, k: int) -> list[float]:
    return list(accumulate([rate] * k, mul))


ROWS = [[0.8, 0.6, 0.3], [0.5, 0.2, 0.1]]


def test_goodput_matches_hand_computed_values() -> None:
    predictions = make_model().predict_all(ROWS, context_len=100.0)
    # K: expected tokens, draft s, verify s (B=2 requests, B*(K+1) verify tokens)
    by_hand = [
        (2.0, 0.000, 0.010 + 0.001 * 2),
        (2.0 + 0.8 + 0.5, 0.002, 0.010 + 0.001 * 4),
        (2.0 + 0.8 + 0.5 + 0.6 + 0.2, 0.004, 0.010 + 0.001 * 6),
        (2.0 + 0.8 + 0.5 + 0.6 + 0.2 + 0.3 + 0.1, 0.006, 0.010 + 0.001 * 8),
    ]
    assert [p.k for p in predictions] == [0, 1, 2, 3]
    for p, (tokens, draft, verify) in zip(predictions, by_hand, strict=True):
        assert p.expected_tokens == pytest.approx(tokens)
        assert p.draft_seconds == pytest.approx(draft)
        assert p.verify_seconds == pytest.approx(verify)
        assert p.goodput == pytest.approx(tokens / (draft + verify))
    # G = 166.7, 206.25, 205.0, 187.5 tokens/s: K=1 wins.
    assert make_model().choose_k(ROWS, 100.0).k == 1
    # Worst-request TPOT at K=1: the second request gains 0.5 tokens: 16 ms / 1.5.
    assert predictions[1].tpot_seconds == pytest.approx(0.016 / 1.5)


def test_mean_tpot_aggregate_averages_per_request_tpot() -> None:
    p = make_model(tpot_aggregate="mean").predict_all(ROWS, 100.0)[2]
    assert p.tpot_seconds == pytest.approx(0.020 / 2 * (1 / 2.4 + 1 / 1.7))


def test_speculation_pays_at_batch_1_and_switches_off_when_verification_dominates() -> None:
    model = make_model()
    assert model.choose_k([geometric(0.7, 3)], 100.0).k > 0
    big_batch = [geometric(0.7, 3)] * 64
    decision = model.choose_k(big_batch, 100.0)
    assert decision.k == 0
    assert decision.expected_tokens == 64
    assert decision.draft_seconds == 0.0


def test_tpot_slo_binds_when_one_request_gains_nothing() -> None:
    rows = [[0.95, 0.9, 0.85], [0.01, 0.0, 0.0]]
    free = make_model().choose_k(rows, 100.0)
    assert free.k == 3  # G = 2/0.012=167, 2.96/0.016=185, 3.86/0.020=193, 4.71/0.024=196
    # Worst-request TPOT = T(K) / 1.01: 12, 15.8, 19.8, 23.8 ms. Allow 20 ms: K=2 fits, 3 not.
    bound = make_model(slo={"tpot_seconds": 0.020}, tpot_headroom=1.0).choose_k(rows, 100.0)
    assert bound.k == 2
    assert bound.tpot_seconds <= 0.020
    # Allow 11 ms: every K misses it; the batch drains soonest at the highest goodput, K=3 (the
    # worst TPOT alone would say K=0, which starves the confident request and the queue).
    assert make_model(slo={"tpot_seconds": 0.011}, tpot_headroom=1.0).choose_k(rows, 100.0).k == 3


def test_when_no_k_meets_the_slo_the_highest_goodput_wins() -> None:
    rows = [[0.95, 0.9, 0.85]]
    # One confident request: TPOT = T(K) / tokens(K) = 11/1, 14/1.95, 17/2.85, 20/3.7 ms
    # = 11.0, 7.18, 5.96, 5.41 ms; G rises with K too, so unconstrained K=3 anyway.
    model = make_model(slo={"tpot_seconds": 0.004}, tpot_headroom=1.0)  # nothing meets 4 ms
    decision = model.choose_k(rows, 100.0)
    assert decision.k == 3 and decision.tpot_seconds == pytest.approx(0.020 / 3.7)
    # A confident request next to one that gains nothing: the worst TPOT T(K) / 1.01 grows
    # with K, but it misses at every K; the highest goodput serves the other one best.
    mixed = [[0.95, 0.9, 0.85], [0.01, 0.0, 0.0]]
    assert model.choose_k(mixed, 100.0).k == make_model().choose_k(mixed, 100.0).k == 3
    # Where G and TPOT disagree: G = 2/12, 3.3/16, 4.2/20, 4.9/24 ms peaks at K=2 (210/s), the
    # worst TPOT = T(K) / (1 + c_2) = 12/1, 16/1.4, 20/1.5, 24/1.5 ms is least at K=1 (11.4 ms):
    # infeasible everywhere, so the peak of G.
    rows = [[0.9, 0.8, 0.7], [0.4, 0.1, 0.0]]
    assert make_model().choose_k(rows, 100.0).k == 2
    assert model.choose_k(rows, 100.0).k == 2
    # Feasible for some K: the constraint still binds (11.5 ms allows only K=1).
    bound = make_model(slo={"tpot_seconds": 0.0115}, tpot_headroom=1.0).choose_k(rows, 100.0)
    assert bound.k == 1 and bound.tpot_seconds == pytest.approx(0.016 / 1.4)


def test_headroom_tightens_the_slo() -> None:
    rows = [[0.95, 0.9, 0.85], [0.01, 0.0, 0.0]]
    model = make_model(slo={"tpot_seconds": 0.020}, tpot_headroom=0.85)  # 17 ms
    assert model.choose_k(rows, 100.0).k == 1


def test_modes_off_and_static() -> None:
    rows = [geometric(0.9, 3)]
    assert make_model(mode="off").choose_k(rows, 100.0).k == 0
    assert make_model(mode="static", static_k=2).choose_k(rows, 100.0).k == 2
    assert make_model().choose_k([], 100.0).k == 0  # nothing decoding (prefill only)


def test_threshold_mode_drafts_k_max_and_cuts_each_request_at_its_first_unsure_token() -> None:
    model = make_model(mode="threshold", threshold_probability=0.6)
    assert model.choose_k([geometric(0.1, 3)], 100.0).k == 3  # the drafter decides, not G
    # Raw probabilities, not cumulative: 0.7 after 0.9 still passes 0.6.
    raw = [[0.9, 0.7, 0.95], [0.5, 0.99, 0.99], [0.9, 0.59, 0.9], []]
    assert lengths_above_threshold(raw, 0.6) == [3, 0, 1, 0]


def test_prefill_tokens_share_the_verify_step() -> None:
    rows = [geometric(0.6, 3)] * 4
    decision = make_model().choose_k(rows, 100.0, extra_tokens=2000)
    assert decision.verify_seconds == pytest.approx(0.010 + 0.001 * (4 * (decision.k + 1) + 2000))
    # A step that is long anyway makes a few more verify tokens relatively cheap.
    assert decision.k >= make_model().choose_k(rows, 100.0).k


def test_choose_k_for_uses_request_history() -> None:
    model = make_model(k_max=4)
    for _ in range(50):
        model.acceptance.observe(4, 0, "hard")
        model.acceptance.observe(4, 4, "easy")
    assert model.choose_k_for(["easy"], 100.0).k > model.choose_k_for(["hard"], 100.0).k


def test_trim_drops_low_confidence_tails_by_hand() -> None:
    rows = [[0.9, 0.8, 0.7], [0.3, 0.05, 0.01]]
    # E = 4.76, T = 6 ms draft + 18 ms verify: G = 198.3. Dropping 0.01 -> 206.5, 0.05 -> 213.6,
    # 0.3 would give 4.40 / 21 ms = 209.5: stop.
    assert make_model().trim(rows, 100.0) == [3, 1]


def test_trim_respects_the_confidence_floor_and_mode() -> None:
    rows = [[0.9, 0.8, 0.7], [0.3, 0.05, 0.01]]
    cheap = ModelParams(target=TARGET.model_copy(update={"per_token_s": 0.0}), draft=DRAFT)
    # Free verify tokens: nothing is worth dropping, except what the floor forbids.
    assert make_model(model=cheap).trim(rows, 100.0) == [3, 3]
    assert make_model(model=cheap, confidence_floor=0.75).trim(rows, 100.0) == [2, 0]
    assert make_model(mode="static").trim(rows, 100.0) == [3, 3]


def test_trim_below_the_knee_keeps_everything() -> None:
    kneed = ModelParams(target=TARGET.model_copy(update={"knee_tokens": 64}), draft=DRAFT)
    rows = [[0.9, 0.1, 0.01]] * 4  # 16 verify tokens: all under the knee, all free
    assert make_model(model=kneed).trim(rows, 100.0) == [3, 3, 3, 3]


def test_set_policy_keeps_online_fits_unless_the_model_changes() -> None:
    model = make_model()
    model.acceptance.observe(3, 3, "r")
    learned = model.acceptance
    model.set_policy(model.policy.model_copy(update={"version": 2, "k_max": 4}))
    assert model.acceptance is learned
    assert model.policy.version == 2
    new_model = ModelParams(target=TARGET, draft=DRAFT, prior_acceptance=0.4)
    model.set_policy(model.policy.model_copy(update={"version": 3, "model": new_model}))
    assert model.acceptance is not learned
    assert model.acceptance.mean_acceptance == pytest.approx(0.4)


def test_fitted_params_carry_online_learning_and_validate() -> None:
    model = make_model()
    for _ in range(30):
        model.acceptance.observe(3, 0, "r")
    fitted = model.fitted_params()
    assert fitted.target == TARGET
    assert fitted.prior_acceptance < model.policy.model.prior_acceptance
    assert Policy(model=fitted.model_dump()).model == fitted


def test_decision_cost_is_reported_for_each_decision() -> None:
    cost = decision_cost_seconds(32, k_max=8, repeats=5)
    assert set(cost) == {"choose_k", "calibrate", "trim"}
    assert all(0 < seconds < 0.05 for seconds in cost.values())


# -- properties --------------------------------------------------------------------------------

coefficient = st.floats(min_value=0, max_value=0.01, allow_nan=False)
timings = st.builds(TimingCoefficients, overhead_s=coefficient, per_token_s=coefficient,
                    per_kv_token_s=st.floats(0, 1e-6), per_request_s=coefficient,
                    knee_tokens=st.integers(0, 16))
# Rows as AcceptanceModel builds them: running products of per-token probabilities.
rows_strategy = st.lists(
    st.lists(st.floats(0, 1), max_size=3).map(lambda a: list(accumulate(a, mul))),
    min_size=1, max_size=3)


def model_with(target: TimingCoefficients, draft: TimingCoefficients, **policy: object
               ) -> EfficiencyModel:
    p = Policy.model_validate({"k_max": 3, **policy})
    return EfficiencyModel(p, StepTimeModel(target, draft), AcceptanceModel(p.model))


@settings(max_examples=150, deadline=None)
@given(target=timings, draft=timings, rows=rows_strategy, ctx=st.floats(0, 4096),
       extra=st.integers(0, 64))
def test_trim_is_optimal_and_never_predicts_a_slower_step(
    target: TimingCoefficients, draft: TimingCoefficients, rows: list[list[float]],
    ctx: float, extra: int,
) -> None:
    assume(target.overhead_s + draft.overhead_s > 0)
    model = model_with(target, draft)
    lengths = model.trim(rows, ctx, extra)
    full = [len(r) for r in rows]
    steps = max(full)
    assert all(0 <= k <= n for k, n in zip(lengths, full, strict=True))
    trimmed = predict_lengths(model, rows, lengths, ctx, extra, draft_steps=steps)
    untrimmed = predict_lengths(model, rows, full, ctx, extra, draft_steps=steps)
    assert trimmed.step_seconds <= untrimmed.step_seconds + 1e-15
    # Brute force over every per-request length: trim is the best (3 requests x 4 lengths).
    best = max(predict_lengths(model, rows, list(ks), ctx, extra, draft_steps=steps).goodput
               for ks in itertools.product(*(range(n + 1) for n in full)))
    assert trimmed.goodput == pytest.approx(best, rel=1e-9)


@settings(max_examples=150, deadline=None)
@given(target=timings, draft=timings, rows=rows_strategy, ctx=st.floats(0, 4096),
       tpot=st.none() | st.floats(1e-4, 0.1), aggregate=st.sampled_from(["worst", "mean"]))
def test_choose_k_is_the_best_feasible_k(
    target: TimingCoefficients, draft: TimingCoefficients, rows: list[list[float]],
    ctx: float, tpot: float | None, aggregate: str,
) -> None:
    assume(target.overhead_s + draft.overhead_s > 0)
    model = model_with(target, draft, slo={"tpot_seconds": tpot}, tpot_aggregate=aggregate)
    decision = model.choose_k(rows, ctx)
    assert 0 <= decision.k <= 3
    limit = model.policy.tpot_limit_seconds
    predictions = model.predict_all(rows, ctx)
    if limit is not None and all(p.tpot_seconds > limit for p in predictions):
        assert decision.goodput == max(p.goodput for p in predictions)
    else:
        assert limit is None or decision.tpot_seconds <= limit
    # Same numbers through the per-request path (every request drafts K, rows padded with 0).
    for p in model.predict_all(rows, ctx):
        padded = [[*r, 0.0, 0.0, 0.0][:3] for r in rows]
        again = predict_lengths(model, padded, [p.k] * len(rows), ctx)
        assert p.goodput == pytest.approx(again.goodput, rel=1e-9)
        assert p.tpot_seconds == pytest.approx(again.tpot_seconds, rel=1e-9)
        if limit is None or p.tpot_seconds <= limit:
            assert decision.goodput >= p.goodput * (1 - 1e-12)


def test_host_time_is_part_of_every_step_and_makes_speculation_pay_sooner() -> None:
    """A cycle costs the forwards plus host time (output processing, IPC) per step whatever
    K is, so amortising it over more tokens per step favours longer drafts."""
    rows = [geometric(0.6, 3)] * 8
    plain = make_model()
    host = TimingCoefficients(overhead_s=0.030, per_token_s=0.0)
    hosted = EfficiencyModel(Policy(k_max=3, model=ModelParams(target=TARGET, draft=DRAFT,
                                                               host=host)))
    for p, q in zip(plain.predict_all(rows, 100.0), hosted.predict_all(rows, 100.0), strict=True):
        assert q.host_seconds == pytest.approx(0.030)
        assert q.step_seconds == pytest.approx(p.step_seconds + 0.030)
        assert q.tpot_seconds > p.tpot_seconds
    assert plain.choose_k(rows, 100.0).k < hosted.choose_k(rows, 100.0).k
    lengths = [3] * 8
    assert predict_lengths(hosted, rows, lengths, 100.0).step_seconds == pytest.approx(
        predict_lengths(plain, rows, lengths, 100.0).step_seconds + 0.030)


def test_k0_is_priced_at_the_draft_forward_the_engine_still_runs() -> None:
    """vLLM's draft-model proposer drafts one position even when K=0 is verified: the model of
    such an engine charges K=0 one draft step, so K=1 costs no more drafting than K=0."""
    model = ModelParams(target=TARGET, draft=DRAFT)
    free = EfficiencyModel(Policy(k_max=3, model=model))
    paid = EfficiencyModel(Policy(k_max=3, model=model), draft_steps_when_off=1)
    rows = [geometric(0.6, 3)] * 4
    k0_free, k0_paid = free.predict_all(rows, 100.0)[0], paid.predict_all(rows, 100.0)[0]
    assert k0_free.draft_seconds == 0.0
    assert k0_paid.draft_seconds == pytest.approx(0.002)
    assert paid.predict_all(rows, 100.0)[1].draft_seconds == pytest.approx(0.002)
    assert paid.draft_seconds(4, 100.0, 0) == pytest.approx(0.002)
    assert predict_lengths(paid, rows, [0] * 4, 100.0).draft_seconds == pytest.approx(0.002)
