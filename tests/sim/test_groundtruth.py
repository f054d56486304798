"""Ground truth: the step-time table interpolates raw records; the verification sampler."""

import json
import random

import pytest

from specserve_engine.policy import Profile, ProfilePoint
from specserve_sim.groundtruth import StepTimeTable, VerificationSampler, cut, then
from tests.sim.helpers import table_from


def _linear(b: int, n: int, ctx: float) -> float:
    return 0.02 + 1.5e-4 * n + 3e-7 * b * ctx + 1e-4 * b


def test_table_is_exact_for_a_piecewise_linear_truth_between_and_beyond_cells() -> None:
    # Linear in tokens per request and context at fixed batch, linear in batch at fixed
    # (tokens per request, context): the interpolation must reproduce it, off the grid too.
    table = table_from(_linear, (1, 4, 16, 32), (1, 2, 4, 6), (64.0, 256.0, 512.0))
    for b, n, ctx in [(4, 8, 64.0), (3, 9, 100.0), (20, 70, 300.0), (48, 96, 700.0),
                      (32, 320, 512.0)]:
        assert table.step_seconds("target", b, n, ctx) == pytest.approx(_linear(b, n, ctx),
                                                                        rel=1e-9)


def test_table_never_extrapolates_a_falling_slope() -> None:
    def falling(b: int, n: int, ctx: float) -> float:
        return 0.05 - 1e-5 * ctx  # noise can make a measured curve fall; a bigger step is
        # still not faster

    table = table_from(falling, (1, 8), (1, 4), (64.0, 512.0))
    inside = table.step_seconds("target", 1, 1, 512.0)
    assert table.step_seconds("target", 1, 1, 4096.0) == pytest.approx(inside)


def test_table_uses_medians_of_noisy_records_and_missing_roles_cost_nothing() -> None:
    rng = random.Random(0)
    records = []
    for b in (1, 8):
        for u in (1, 4):
            for _ in range(21):
                seconds = _linear(b, b * u, 128.0)
                # A third of the records are outliers (a GC pause): the median ignores them.
                records.append(("target", b, b * u, 128.0,
                                seconds * (10 if rng.random() < 0.3 else 1)))
    table = StepTimeTable(records)
    assert table.step_seconds("target", 8, 32, 128.0) == pytest.approx(_linear(8, 32, 128.0))
    assert table.roles == ["target"]
    assert table.step_seconds("host", 8, 32, 128.0) == 0.0


def test_table_reads_step_records_and_profiles(tmp_path) -> None:
    lines = [{"role": role, "num_requests": 2, "num_tokens": 2 * u, "context_len": 100.0,
              "seconds": 0.01 * u + (0.001 if role == "host" else 0)}
             for role in ("target", "draft", "host") for u in (1, 3)]
    path = tmp_path / "steps.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    table = StepTimeTable.from_jsonl(path)
    assert table.roles == ["draft", "host", "target"]
    assert table.step_seconds("target", 2, 4, 100.0) == pytest.approx(0.02)
    profile = Profile(points=[ProfilePoint(role="target", num_requests=1, num_tokens=n,
                                           context_len=64.0, seconds=0.01 * n)
                              for n in (1, 2)])
    assert StepTimeTable.from_profile(profile).step_seconds("target", 1, 2, 64.0) == \
        pytest.approx(0.02)
    with pytest.raises(ValueError, match="target"):
        StepTimeTable([("draft", 1, 1, 1.0, 0.01)])


def test_a_verification_cut_to_k_keeps_acceptance_up_to_k() -> None:
    v = ((0.9, 0.8, 0.7, 0.6, 0.5), 3)
    assert cut(v, 5) == v
    assert cut(v, 2) == ((0.9, 0.8), 2)
    assert cut(v, 4) == ((0.9, 0.8, 0.7, 0.6), 3)
    # Continued by another draft: its acceptances count only if all of the first passed.
    assert then(((0.9,), 1), ((0.5, 0.4), 1)) == ((0.9, 0.5, 0.4), 2)
    assert then(((0.9,), 0), ((0.5, 0.4), 2)) == ((0.9, 0.5, 0.4), 0)


def test_streams_follow_one_recorded_request_and_extend_short_records() -> None:
    records = [([0.9, 0.9], 2, 2, "easy")] * 5 + [([0.2, 0.2], 2, 0, "hard")] * 5
    sampler = VerificationSampler(records)
    assert len(sampler.streams) == 2
    rng = random.Random(1)
    for _ in range(10):
        stream = sampler.stream(rng)
        draws = [stream.draw(2) for _ in range(7)]
        # A request keeps its recorded request's character for its whole life.
        assert len({a for _, a in draws}) == 1
    long = sampler.stream(random.Random(2)).draw(5)
    assert len(long[0]) == 5 and long[1] in (0, 5)


def test_without_request_ids_records_are_drawn_iid_and_acceptance_is_counted_as_the_engine() -> \
        None:
    records = [([0.9, 0.8, 0.7], 3, a, None) for a in (0, 1, 2, 3)]
    sampler = VerificationSampler(records)
    assert not sampler.streams
    # Accepted over verified positions (min(drafted, accepted + 1)), as AcceptanceModel counts.
    assert sampler.mean_acceptance == pytest.approx((0 + 1 + 2 + 3) / (1 + 2 + 3 + 3))
    stream = sampler.stream(random.Random(0))
    seen = {stream.draw(3)[1] for _ in range(200)}
    assert seen == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        VerificationSampler([([], 0, 0, None)])
