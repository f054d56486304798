"""The published GPU model: the target is the paper's formula, the draft a cheaper forward."""

import pytest

from specserve_sim.hardware import HardwareModel, grid_profile


def test_target_and_host_are_the_published_fit() -> None:
    hw = HardwareModel()
    b, n, ctx = 32, 96, 1500.0
    # SpecDecode-Bench, Llama-3.1-8B on H100: 3.93e-8 s/KV token + 2.10e-5 s/token + 5.89 ms,
    # plus 1.21 ms per step.
    assert hw.step_seconds("target", b, n, ctx) == pytest.approx(
        3.93e-8 * b * ctx + 2.10e-5 * n + 5.89e-3)
    assert hw.step_seconds("host", b, n, ctx) == pytest.approx(1.21e-3)
    assert hw.step_seconds("anything else", b, n, ctx) == 0.0


def test_the_draft_is_cheaper_and_every_role_grows_with_the_step() -> None:
    hw = HardwareModel()
    for b, ctx in ((1, 100.0), (64, 2000.0)):
        assert 0 < hw.step_seconds("draft", b, b, ctx) < hw.step_seconds("target", b, b, ctx)
        for role in ("target", "draft"):
            assert hw.step_seconds(role, b, 2 * b, ctx) > hw.step_seconds(role, b, b, ctx)
            assert hw.step_seconds(role, b, b, 2 * ctx) > hw.step_seconds(role, b, b, ctx)


def test_the_grid_profile_is_what_a_profiler_would_measure() -> None:
    hw = HardwareModel()
    profile = grid_profile(hw, batch_sizes=(1, 8), tokens_per_request=(1, 4),
                           context_lens=(128.0,))
    for p in profile.points:
        assert p.seconds == pytest.approx(
            hw.step_seconds(p.role, p.num_requests, p.num_tokens, p.context_len))
    assert len(profile.for_role("draft")) == len(profile.for_role("host")) == 2
