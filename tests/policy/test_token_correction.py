"""token_correction: the step-time model's multiplicative correction over the token count, and
the per-(batch, K) error report that shows where a linear fit misses."""

from __future__ import annotations

import math
import random
from itertools import pairwise
from pathlib import Path

import pytest
from pydantic import ValidationError

from specserve_engine.policy import EfficiencyModel, Policy, Profile, ProfilePoint
from specserve_engine.policy.model_error import markdown, role_error, verify_k
from specserve_engine.policy.params import MAX_CORRECTION_POINTS, ModelParams, TimingCoefficients
from specserve_engine.policy.timing import (
    CORRECTION_TOLERANCE,
    StepObservation,
    StepTimeModel,
    correction_factor,
    fit_coefficients,
    fit_token_correction,
    predict_seconds,
)
from tests.policy.lengths import predict_lengths

ZEN4_EAGER = Path(__file__).parents[1] / "data" / "profile-amd-epyc-zen4-bf16-eager.json"
LINEAR = TimingCoefficients(overhead_s=0.004, per_token_s=3e-5, per_kv_token_s=2e-8,
                            per_request_s=1e-4)
DRAFT = TimingCoefficients(overhead_s=0.0015, per_token_s=4e-6)


def amx_like_factor(num_tokens: int) -> float:
    """A synthetic AMX-shaped kernel effect (no AMX machine here): the bf16 GEMM blocking
    chosen for 16-31 tokens is 45% slower than the line, the one for 32-63 is on it (so a step
    of 24 tokens costs more than one of 40), and 64-127 tokens again 25% slower."""
    if 16 <= num_tokens < 32:
        return 1.45
    if 64 <= num_tokens < 128:
        return 1.25
    return 1.0


def synthetic(factor=lambda n: 1.0, noise: float = 0.0, seed: int = 0) -> Profile:
    """The (batch x context x tokens per request) grid `specserve profile` measures."""
    rng = random.Random(seed)
    points = []
    for b in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64):
        for ctx in (64.0, 512.0):
            for k in range(6):
                n = b * (k + 1)
                t = predict_seconds(LINEAR, b, n, ctx) * factor(n) * (1 + rng.gauss(0, noise))
                points.append(ProfilePoint(role="target", num_requests=b, num_tokens=n,
                                           context_len=ctx, seconds=t))
            points.append(ProfilePoint(role="draft", num_requests=b, num_tokens=b,
                                       context_len=ctx, seconds=predict_seconds(DRAFT, b, b, ctx)))
    return Profile(points=points, meta={"k_values": ",".join(map(str, range(6)))})


def rows(profile: Profile, role: str = "target") -> list[tuple[int, int, float, float]]:
    return [(p.num_requests, p.num_tokens, p.context_len, p.seconds)
            for p in profile.for_role(role)]  # type: ignore[arg-type]


def test_correction_recovers_a_non_monotonic_profile_where_the_line_misses() -> None:
    profile = synthetic(amx_like_factor, noise=0.02)
    report = role_error(profile, "target")
    assert report.extended.token_correction, "a 45% systematic bump must be corrected"
    missed = report.beyond("linear")
    assert len(missed) >= 5, "the synthetic profile must defeat the linear fit"
    for cell in report.cells:
        assert abs(cell.extended_error) <= CORRECTION_TOLERANCE, (cell.num_requests, cell.k)
    # The corrected model is non-monotonic where the truth is: 24 tokens cost more than 40.
    c = report.extended
    assert predict_seconds(c, 8, 24, 64.0) > predict_seconds(c, 8, 40, 64.0)


def test_linear_profile_with_noise_gets_no_correction() -> None:
    for seed in range(5):
        fitted = fit_coefficients(rows(synthetic(noise=0.04, seed=seed)))
        assert fitted.token_correction == [], seed


def test_a_few_slow_points_do_not_make_a_correction() -> None:
    """A shared machine: a quarter of one bucket's points are 60% slow, the rest on the line."""
    points = rows(synthetic())
    bucket = [i for i, (_, n, _, _) in enumerate(points) if 16 <= n <= 22]
    assert len(bucket) >= 8
    for i in bucket[::4]:
        b, n, ctx, t = points[i]
        points[i] = (b, n, ctx, 1.6 * t)
    assert fit_coefficients(points).token_correction == []


def test_correction_factor_interpolates_between_breakpoints_and_is_flat_outside() -> None:
    corr = [(8, 1.0), (16, 1.4), (31, 1.4), (32, 1.0)]
    assert correction_factor(corr, 1) == 1.0
    assert correction_factor(corr, 12) == pytest.approx(1.2)
    assert correction_factor(corr, 20) == 1.4
    assert correction_factor(corr, 32) == 1.0
    assert correction_factor(corr, 10_000) == 1.0
    assert correction_factor([], 5) == 1.0
    c = LINEAR.model_copy(update={"token_correction": corr})
    assert predict_seconds(c, 4, 20, 64.0) == pytest.approx(
        1.4 * predict_seconds(LINEAR, 4, 20, 64.0))


def test_fitted_correction_is_valid_and_bounded() -> None:
    corr = fit_token_correction(rows(synthetic(amx_like_factor)), LINEAR)
    TimingCoefficients(token_correction=corr)  # validates: sorted, positive, bounded
    assert 0 < len(corr) <= MAX_CORRECTION_POINTS
    assert all(a < b for (a, _), (b, _) in pairwise(corr))


@pytest.mark.parametrize(("correction", "expected"), [
    ([(16, 1.2), (8, 1.0)], "strictly increase"),
    ([(8, 1.0), (8, 1.2)], "strictly increase"),
    ([(0, 1.0)], ">= 1"),
    ([(8, 0.0)], "factors must be in"),
    ([(8, -1.0)], "factors must be in"),
    ([(8, 11.0)], "factors must be in"),
    ([(8, math.nan)], "factors must be in"),
    ([(n + 1, 1.0) for n in range(MAX_CORRECTION_POINTS + 1)], "at most"),
])
def test_bad_corrections_are_rejected(correction: list, expected: str) -> None:
    with pytest.raises(ValidationError, match=expected):
        TimingCoefficients(token_correction=correction)


def test_correction_round_trips_through_policy_json() -> None:
    corr = [(8, 1.0), (16, 1.45), (31, 1.45), (32, 1.0)]
    policy = Policy(model=ModelParams(
        target=LINEAR.model_copy(update={"token_correction": corr})))
    again = Policy.model_validate_json(policy.model_dump_json())
    assert again == policy
    assert again.model.target.token_correction == corr
    # A policy written before the field existed still loads, with no correction.
    old = policy.model_dump(mode="json")
    del old["model"]["target"]["token_correction"]
    assert Policy.model_validate(old).model.target.token_correction == []


def test_refit_keeps_the_profile_correction_and_follows_live_speed() -> None:
    profile = synthetic(amx_like_factor)
    model = StepTimeModel.from_profile(profile)
    corr = model.target.token_correction
    assert corr
    # Live hardware runs 30% slower everywhere, at the few token counts the policy uses.
    live = [StepObservation("target", b, b * 4, 256.0, 1.3 * predict_seconds(model.target, b,
                                                                             b * 4, 256.0))
            for b in (2, 4, 6, 8, 16) for _ in range(40)]
    before = model.verify_seconds(8, 24, 256.0)
    model.refit(live)
    assert model.target.token_correction == corr
    assert model.verify_seconds(8, 24, 256.0) > 1.15 * before


def trim_brute_force(model: EfficiencyModel, rows_: list[list[float]], ctx: float) -> float:
    """Best goodput over every number of lowest-c drops (exhaustive)."""
    values = sorted(v for row in rows_ for v in row)
    b = len(rows_)
    draft = model.timing.draft_seconds(b, ctx, max(len(r) for r in rows_))
    best = 0.0
    for m in range(len(values) + 1):
        t = draft + model.timing.verify_seconds(b, b + len(values) - m, ctx)
        best = max(best, (b + sum(values[m:])) / t)
    return best


def test_trim_with_a_correction_finds_the_best_drop_count() -> None:
    """With a correction a step can get slower when tokens are dropped (40 -> 24 tokens crosses
    the slow blocking): trim must score every drop count, not binary-search a monotone one."""
    corr = [(16, 1.45), (31, 1.45), (32, 1.0)]
    timing = StepTimeModel(LINEAR.model_copy(update={"token_correction": corr}), DRAFT)
    model = EfficiencyModel(Policy(k_max=5), timing)
    rng = random.Random(3)
    for _ in range(50):
        b = rng.choice((4, 6, 8))
        batch = [sorted((rng.random() for _ in range(rng.randint(1, 5))), reverse=True)
                 for _ in range(b)]
        lengths = model.trim(batch, 64.0)
        pred = predict_lengths(model, batch, lengths, 64.0,
                               draft_steps=max(len(r) for r in batch))
        assert pred.goodput == pytest.approx(trim_brute_force(model, batch, 64.0), rel=1e-9)


def test_verify_k_reads_verify_steps_and_leaves_prefill_mixed() -> None:
    def point(b: int, n: int, role: str = "target") -> ProfilePoint:
        return ProfilePoint(role=role, num_requests=b, num_tokens=n, context_len=0.0,
                            seconds=0.01)  # type: ignore[arg-type]
    assert verify_k(point(4, 12), {0, 2, 4}) == 2
    assert verify_k(point(9, 72), {0, 2, 4}) is None  # K=7 was not run: a prefill chunk
    assert verify_k(point(2, 65)) is None
    assert verify_k(point(3, 3, "draft")) == 0


def test_report_on_the_zen4_profile_matches_the_models_own_predictions() -> None:
    profile = Profile.load(ZEN4_EAGER)
    text = markdown(profile, name=ZEN4_EAGER.name)
    for role in ("target", "draft"):
        report = role_error(profile, role)  # type: ignore[arg-type]
        model = StepTimeModel.from_profile(profile)
        assert report.extended == model.coefficients(role)  # type: ignore[arg-type]
        assert len(report.cells) + len(report.mixed) > 0
        k_values = {0, 2, 4}
        for cell in report.cells:
            members = [p for p in profile.for_role(role)  # type: ignore[arg-type]
                       if p.num_requests == cell.num_requests and verify_k(p, k_values) == cell.k]
            assert len(members) == cell.points
            errors = sorted(
                model.step_seconds(role, p.num_requests, p.num_tokens, p.context_len)  # type: ignore[arg-type]
                / p.seconds - 1 for p in members)
            assert sorted(cell.extended) == pytest.approx(errors)
            assert f"{cell.extended_error * 100:+.0f}" in text
        assert f"**{role}**" in text
    assert "cells beyond 10%" in text


def test_model_error_script_prints_a_table_per_profile(capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    script = Path(__file__).parents[2] / "bench" / "model_error.py"
    spec = importlib.util.spec_from_file_location("model_error_script", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(ZEN4_EAGER), str(ZEN4_EAGER)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"### {ZEN4_EAGER.name}") == 2
    assert "| batch | K=0 | K=2 | K=4 |" in out
