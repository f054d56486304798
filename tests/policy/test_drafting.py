"""The adaptive drafter's stop rule (policy/drafting.py), without vLLM."""

from __future__ import annotations

import math

import pytest

from specserve_engine.policy import (
    AcceptanceModel,
    EfficiencyModel,
    LogisticCalibration,
    ModelParams,
    Policy,
    TimingCoefficients,
)
from specserve_engine.policy.drafting import DraftProgress, DraftStopRule, stop_rule

CALIBRATION = [LogisticCalibration(slope=0.5, intercept=1.8), LogisticCalibration(slope=0.7)]


def _model(mode: str = "adaptive", **policy: object) -> EfficiencyModel:
    params = ModelParams(
        target=TimingCoefficients(overhead_s=0.010, per_token_s=1e-4),
        draft=TimingCoefficients(overhead_s=0.002, per_token_s=1e-5),
        calibration=CALIBRATION, prior_acceptance=0.7)
    return EfficiencyModel(Policy(mode=mode, k_max=5, model=params, **policy))  # type: ignore[arg-type]


def test_the_rule_calibrates_as_the_acceptance_model_does() -> None:
    rule = DraftStopRule(0.0, 0.0, tuple((c.slope, c.intercept) for c in CALIBRATION))
    model = AcceptanceModel(ModelParams(calibration=CALIBRATION))
    probs = [0.0, 1e-9, 0.2, 0.5, 0.93, 1.0]
    for position in (1, 2, 3):  # positions past the last entry use the last one
        assert rule.acceptance(position, probs) == pytest.approx(
            [model.calibrate(position, q) for q in probs])
    identity = DraftStopRule(0.0, 0.0, ())
    assert identity.acceptance(1, [0.3]) == pytest.approx([0.3])


def test_stop_threshold_is_goodput_times_the_cost_of_one_more_position_over_the_rate() -> None:
    model = _model(confidence_floor=0.1)
    b, ctx = 4, 100.0
    prediction = model.choose_k([[0.9, 0.8, 0.7, 0.6, 0.5]] * b, ctx)
    assert prediction.k >= 2
    rule = stop_rule(model, prediction, ctx)
    assert rule is not None
    timing = model.timing
    dt = (timing.draft_seconds(b, ctx, 1) + timing.verify_seconds(b, b * (prediction.k + 2), ctx)
          - timing.verify_seconds(b, b * (prediction.k + 1), ctx))
    assert rule.gain_threshold == pytest.approx(prediction.goodput * dt / 0.7)
    assert rule.floor == 0.1 and rule.calibration == ((0.5, 1.8), (0.7, 0.0))


def test_no_rule_where_drafting_all_k_is_the_decision() -> None:
    model = _model()
    one = model.predict_all([[0.9]], 50.0, k_min=1, k_max=1)[0]
    assert stop_rule(model, one, 50.0) is None  # K <= 1: nothing to stop early
    for mode in ("static", "off"):
        static = _model(mode)
        assert stop_rule(static, static.choose_k([[0.9] * 5], 50.0), 50.0) is None
    threshold = _model("threshold", threshold_probability=0.6)
    rule = stop_rule(threshold, threshold.choose_k([[0.9] * 5], 50.0), 50.0)
    assert rule is not None and rule.token_floor == 0.6


def test_progress_stops_when_the_summed_cumulative_acceptance_falls_below_the_threshold() -> None:
    rule = DraftStopRule(gain_threshold=1.0, floor=0.0, calibration=((1.0, 0.0),))
    progress = DraftProgress(rule)
    assert not progress.stop_after([0.9, 0.8])  # sum 1.7
    assert progress.cumulative == pytest.approx([0.9, 0.8])
    assert progress.stop_after([0.5, 0.5])  # 0.45 + 0.40 = 0.85 < 1.0
    assert progress.cumulative == pytest.approx([0.45, 0.40])


def test_progress_stops_when_every_request_is_below_the_floor() -> None:
    progress = DraftProgress(DraftStopRule(0.0, floor=0.3, calibration=((1.0, 0.0),)))
    assert not progress.stop_after([0.9, 0.2])  # one request still above the floor
    assert progress.stop_after([0.3, 0.9])  # 0.27 and 0.18
    assert math.isclose(progress.cumulative[0], 0.27)


def test_threshold_mode_stops_once_every_request_met_an_unsure_token() -> None:
    progress = DraftProgress(DraftStopRule(0.0, 0.0, (), token_floor=0.6))
    assert not progress.stop_after([0.9, 0.5])
    assert not progress.stop_after([0.95, 0.99])  # the second request stays done
    assert progress.drafting == [True, False]
    assert progress.stop_after([0.1, 0.99])
