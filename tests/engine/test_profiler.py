"""`specserve profile` measures real engine steps and produces a profile the timing model fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from specserve_contract import ENV_PROFILE_FILE
from specserve_engine import tiny
from specserve_engine.machine import this_machine
from specserve_engine.policy import Policy, Profile, StepTimeModel
from specserve_engine.profiler import aggregate, run_profile
from specserve_engine.serving import engine_dtype
from specserve_engine.vllm.scheduler import with_profile


def _record(role: str, b: int, n: int, ctx: float, s: float) -> dict:
    return {"role": role, "num_requests": b, "num_tokens": n, "context_len": ctx, "seconds": s}


def test_aggregate_takes_the_median_per_cell_and_drops_lonely_cells() -> None:
    records = [_record("target", 4, 8, 100, s) for s in (0.010, 0.012, 0.500)]
    records += [_record("target", 4, 8, 600, 0.02)]  # another context bucket, seen once
    records += [_record("draft", 4, 4, 101, 0.002), _record("draft", 4, 4, 99, 0.004)]
    points = aggregate(records)
    by_role = {(p.role, p.context_len > 300): p for p in points}
    assert len(points) == 2
    target = by_role[("target", False)]
    assert target.seconds == pytest.approx(0.012) and target.repeats == 3
    assert by_role[("draft", False)].seconds == pytest.approx(0.003)


@pytest.mark.engine
def test_profile_command_measures_both_models(tiny_models: tiny.TinyModels, tmp_path: Path,
                                              engines: dict) -> None:
    # `engines` first: the session engines are up before this third one starts (2 cores).
    out = tmp_path / "profile.json"
    messages: list[str] = []
    run_profile(tiny_models.target, tiny_models.draft, out,
                prompt_text=tiny_models.heldout.read_text(), batch_sizes=(1, 3),
                k_values=(0, 2), context_lens=(48,), new_tokens=8, calibration_prompts=8,
                calibration_tokens=24, extra_args=("--", "--enforce-eager"),
                raw_records=tmp_path / "raw", progress=messages.append)
    profile = Profile.load(out)
    assert profile.for_role("target") and profile.for_role("draft")
    # It records where it was measured, and an engine here would load it without a warning.
    assert profile.machine == this_machine()
    assert profile.dtype == engine_dtype(tiny_models.target) != "auto"
    assert profile.mismatch(this_machine(), profile.dtype) is None
    assert any(f"in {profile.dtype}" in m for m in messages)
    assert any("[4/4]" in m for m in messages), "progress is reported per cell"
    # Acceptance: 8 greedy prompts drafted at K=2, every verification recorded and fitted.
    acceptance = profile.acceptance
    assert acceptance is not None and acceptance.k == 2
    assert acceptance.outcomes >= 8 * 24 // 3, "about one verification per request and step"
    assert acceptance.calibration and 0 < acceptance.prior_acceptance < 1
    assert any("acceptance: 8/8 prompts" in m for m in messages)
    # An engine given this profile starts with that calibration and acceptance prior.
    policy = with_profile(Policy(), {ENV_PROFILE_FILE: str(out)})
    assert policy.model.calibration == acceptance.calibration
    assert policy.model.prior_acceptance == acceptance.prior_acceptance
    assert policy.model.target == StepTimeModel.from_profile(profile).target
    # Engine cycles were measured too: the host time around the forwards, fitted and loaded.
    assert profile.for_role("host"), "the profile has host (cycle minus forwards) points"
    assert policy.model.host == StepTimeModel.from_profile(profile).host
    assert StepTimeModel.from_profile(profile).host_seconds(3, 48) > 0
    # The raw records are kept for the simulator: every step of each role, every verification.
    raw = tmp_path / "raw"
    steps = [json.loads(line) for line in (raw / "steps.jsonl").read_text().splitlines()]
    assert {s["role"] for s in steps} == {"target", "draft", "host"}
    verifications = (raw / "verifications.jsonl").read_text().splitlines()
    assert len(verifications) >= acceptance.outcomes
    # Verify steps of K=2 carry 3 tokens per request.
    assert any(p.num_tokens == 3 * p.num_requests for p in profile.for_role("target"))
    timing = StepTimeModel.from_profile(profile)
    one, six = timing.verify_seconds(1, 1, 48), timing.verify_seconds(3, 9, 48)
    assert 0 < one <= six, "a bigger step is never predicted faster"
