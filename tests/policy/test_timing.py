"""StepTimeModel: profile schema, coefficient recovery, robust online refit, monotonicity."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from specserve_engine.policy.params import LogisticCalibration, TimingCoefficients
from specserve_engine.policy.profile import AcceptanceProfile, Profile, ProfilePoint
from specserve_engine.policy.timing import (
    StepObservation,
    StepTimeModel,
    fit_coefficients,
    predict_seconds,
)

TARGET = TimingCoefficients(overhead_s=0.004, per_token_s=3e-5, per_kv_token_s=2e-8,
                            per_request_s=1e-4)
DRAFT = TimingCoefficients(overhead_s=0.0015, per_token_s=4e-6, per_kv_token_s=1e-9)


def synthetic_profile(target: TimingCoefficients, draft: TimingCoefficients,
                      noise: float = 0.0, seed: int = 0) -> Profile:
    """The grid `specserve profile` measures: batch sizes x contexts x tokens per request."""
    rng = random.Random(seed)
    points = []
    for b in (1, 2, 4, 8, 16, 32, 64, 128):
        for ctx in (64.0, 512.0, 2048.0):
            for per_request in (1, 2, 4, 6):  # verify steps carry K+1 tokens per request
                n = b * per_request
                t = predict_seconds(target, b, n, ctx) * (1 + rng.gauss(0, noise))
                points.append(ProfilePoint(role="target", num_requests=b, num_tokens=n,
                                           context_len=ctx, seconds=t, repeats=5))
            t = predict_seconds(draft, b, b, ctx) * (1 + rng.gauss(0, noise))
            points.append(ProfilePoint(role="draft", num_requests=b, num_tokens=b,
                                       context_len=ctx, seconds=t, repeats=5))
    return Profile(target_model="t", draft_model="d", device="test", points=points)


def assert_close(fitted: TimingCoefficients, truth: TimingCoefficients, rel: float) -> None:
    for name in ("overhead_s", "per_token_s", "per_kv_token_s", "per_request_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=rel, abs=1e-12), \
            name
    assert fitted.knee_tokens == truth.knee_tokens


def test_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = synthetic_profile(TARGET, DRAFT)
    profile.save(tmp_path / "profile.json")
    assert Profile.load(tmp_path / "profile.json") == profile
    calibrated = profile.model_copy(update={"acceptance": AcceptanceProfile(
        calibration=[LogisticCalibration(slope=0.4, intercept=2.0)], prior_acceptance=0.6,
        outcomes=500, k=4)})
    calibrated.save(tmp_path / "calibrated.json")
    assert Profile.load(tmp_path / "calibrated.json") == calibrated


def test_profile_point_needs_a_token_per_request() -> None:
    with pytest.raises(ValidationError, match="num_tokens"):
        ProfilePoint(role="target", num_requests=4, num_tokens=2, context_len=0, seconds=0.1)


def test_exact_profile_recovers_known_coefficients() -> None:
    model = StepTimeModel.from_profile(synthetic_profile(TARGET, DRAFT))
    assert_close(model.target, TARGET, rel=1e-6)
    # Draft steps always carry one token per request: tokens and requests are the same feature,
    # so only their sum is identifiable; predictions must still match.
    for b, ctx in ((1, 64.0), (7, 300.0), (128, 2048.0)):
        assert model.step_seconds("draft", b, b, ctx) == pytest.approx(
            predict_seconds(DRAFT, b, b, ctx), rel=1e-6)


def test_knee_is_found_among_profiled_token_counts() -> None:
    kneed = TARGET.model_copy(update={"knee_tokens": 64})
    model = StepTimeModel.from_profile(synthetic_profile(kneed, DRAFT))
    assert_close(model.target, kneed, rel=1e-6)


def test_noisy_profile_with_outliers_still_fits_within_a_few_percent() -> None:
    profile = synthetic_profile(TARGET, DRAFT, noise=0.02, seed=1)
    # A few grossly slow steps (a GC pause, a preempted core).
    spoiled = [p.model_copy(update={"seconds": p.seconds * 5}) if i % 17 == 0 else p
               for i, p in enumerate(profile.points)]
    model = StepTimeModel.from_profile(profile.model_copy(update={"points": spoiled}))
    for b, n, ctx in ((1, 4, 512.0), (32, 128, 512.0), (128, 768, 2048.0)):
        assert model.verify_seconds(b, n, ctx) == pytest.approx(
            predict_seconds(TARGET, b, n, ctx), rel=0.05)


def test_from_profile_needs_both_roles() -> None:
    profile = synthetic_profile(TARGET, DRAFT)
    only_target = profile.model_copy(update={"points": profile.for_role("target")})
    with pytest.raises(ValueError, match="draft"):
        StepTimeModel.from_profile(only_target)


def test_fit_needs_points() -> None:
    with pytest.raises(ValueError, match="no points"):
        fit_coefficients([])


def test_no_draft_steps_cost_nothing() -> None:
    model = StepTimeModel(TARGET, DRAFT)
    assert model.draft_seconds(32, 512.0, 0) == 0.0
    assert model.draft_seconds(32, 512.0, 3) == pytest.approx(
        3 * predict_seconds(DRAFT, 32, 32, 512.0))


def test_refit_follows_live_hardware_and_ignores_outliers() -> None:
    """Live steps are 30% slower than profiled (another tenant, thermal): refit follows them."""
    model = StepTimeModel.from_profile(synthetic_profile(TARGET, DRAFT))
    live = TimingCoefficients(**{**TARGET.model_dump(), "overhead_s": 0.0052,
                                 "per_token_s": 3.9e-5})
    rng = random.Random(2)
    observations = []
    for i in range(300):
        b = rng.choice((4, 8, 16, 32, 48))
        n = b * rng.choice((1, 3, 4))
        ctx = rng.uniform(100, 1500)
        t = predict_seconds(live, b, n, ctx) * (1 + rng.gauss(0, 0.01))
        if i % 25 == 0:
            t *= 8  # outlier
        observations.append(StepObservation("target", b, n, ctx, t))
    before = model.verify_seconds(32, 128, 800.0)
    model.refit(observations)
    after = model.verify_seconds(32, 128, 800.0)
    truth = predict_seconds(live, 32, 128, 800.0)
    assert abs(after - truth) / truth < 0.03
    assert abs(before - truth) / truth > 0.15
    assert model.draft == StepTimeModel.from_profile(synthetic_profile(TARGET, DRAFT)).draft


def test_refit_without_profile_keeps_coefficients_when_live_data_agree() -> None:
    model = StepTimeModel(TARGET, DRAFT)
    model.refit(StepObservation("draft", b, b, 256.0, predict_seconds(DRAFT, b, b, 256.0))
                for b in (1, 8, 64))
    assert model.step_seconds("draft", 16, 16, 256.0) == pytest.approx(
        predict_seconds(DRAFT, 16, 16, 256.0), rel=1e-3)


coefficient = st.floats(min_value=0, max_value=1e-2, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(
    c=st.builds(TimingCoefficients, overhead_s=coefficient, per_token_s=coefficient,
                per_kv_token_s=coefficient, per_request_s=coefficient,
                knee_tokens=st.integers(0, 512)),
    b=st.integers(1, 256), n=st.integers(1, 4096), extra=st.integers(0, 512),
    ctx=st.floats(0, 8192), more_ctx=st.floats(0, 1024),
)
def test_bigger_steps_never_predict_faster(
    c: TimingCoefficients, b: int, n: int, extra: int, ctx: float, more_ctx: float
) -> None:
    # The linear part only: a `token_correction` may make a bigger step faster (by design).
    base = predict_seconds(c, b, n, ctx)
    assert base >= 0
    assert predict_seconds(c, b, n + extra, ctx) >= base
    assert predict_seconds(c, b, n, ctx + more_ctx) >= base
    assert predict_seconds(c, b + 1, n, ctx) >= base


def test_refit_without_a_profile_learns_the_real_costs() -> None:
    """Default coefficients far from the truth (seen live on a CPU): live steps must win."""
    from specserve_engine.policy import ModelParams, StepObservation, StepTimeModel

    model = StepTimeModel.from_params(ModelParams())
    observations = []
    for b in (1, 2, 4, 8, 16, 32, 64):
        for k in (0, 1, 2, 3):
            n = b * (k + 1)
            observations += [StepObservation("target", b, n, 100.0, 0.02 + 0.006 * n)] * 3
    model.refit(observations)
    assert model.target.per_token_s == pytest.approx(0.006, rel=0.05)
    assert model.verify_seconds(64, 128, 100.0) > 1.8 * model.verify_seconds(64, 64, 100.0)


HOST = TimingCoefficients(overhead_s=0.003, per_token_s=0.0, per_request_s=4e-4)


def test_host_time_is_zero_until_measured_then_learned_from_cycles() -> None:
    """The cycle around the forwards: none predicted without data, fitted from live cycles
    once there are enough, and read from a profile's host points when it has them."""
    model = StepTimeModel(TARGET, DRAFT)
    assert model.host_seconds(16, 256.0) == 0.0
    assert model.host_seconds(0, 256.0) == 0.0
    cycles = [StepObservation("host", b, b, 256.0, predict_seconds(HOST, b, b, 256.0))
              for b in (1, 2, 4, 8, 16, 32) for _ in range(8)]
    model.refit(cycles[:8])  # too few to fit host time from nothing
    assert model.host_seconds(16, 256.0) == 0.0
    model.refit(cycles[8:])
    assert model.host_seconds(16, 256.0) == pytest.approx(
        predict_seconds(HOST, 16, 16, 256.0), rel=1e-3)
    profile = synthetic_profile(TARGET, DRAFT)
    assert StepTimeModel.from_profile(profile).host_seconds(16, 256.0) == 0.0  # older profiles
    with_host = profile.model_copy(update={"points": [
        *profile.points,
        *(ProfilePoint(role="host", num_requests=o.num_requests, num_tokens=o.num_tokens,
                       context_len=o.context_len, seconds=o.seconds) for o in cycles)]})
    fitted = StepTimeModel.from_profile(with_host)
    assert fitted.host_seconds(16, 256.0) == pytest.approx(
        predict_seconds(HOST, 16, 16, 256.0), rel=1e-3)
