"""Policy is the operator -> engine contract: defaults, round trip, and readable rejections."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from specserve_engine.policy.params import Policy, validation_message


def _message(data: dict) -> str:
    with pytest.raises(ValidationError) as info:
        Policy.model_validate(data)
    return validation_message(info.value)


def test_defaults_are_valid_and_round_trip_through_json() -> None:
    policy = Policy(version=3, slo={"tpot_seconds": 0.05})
    again = Policy.model_validate_json(policy.model_dump_json())
    assert again == policy
    assert again.tpot_limit_seconds == pytest.approx(0.05 * policy.tpot_headroom)


def test_no_tpot_slo_means_no_limit() -> None:
    assert Policy().tpot_limit_seconds is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"k_max": -1}, "k_max: Input should be greater than or equal to 0 (got -1)"),
        ({"k_max": 17}, "k_max: Input should be less than or equal to 16 (got 17)"),
        ({"k_max": 2, "static_k": 3}, "static_k (3) must be <= k_max (2)"),
        ({"mode": "fast"},
         "mode: Input should be 'adaptive', 'static', 'off' or 'threshold' (got 'fast')"),
        ({"slo": {"tpot_seconds": 0}}, "slo.tpot_seconds: Input should be greater than 0"),
        ({"slo": {"ttft_seconds": -1.0}}, "slo.ttft_seconds: Input should be greater than 0"),
        ({"tpot_headroom": 0}, "tpot_headroom: Input should be greater than 0"),
        ({"confidence_floor": 1.0}, "confidence_floor: Input should be less than 1"),
        ({"kmax": 3}, "kmax: Extra inputs are not permitted"),
        ({"version": -2}, "version: Input should be greater than or equal to 0"),
        ({"model": {"target": {"per_token_s": -1e-3}}},
         "model.target.per_token_s: Input should be greater than or equal to 0"),
        ({"model": {"prior_acceptance": 1.0}},
         "model.prior_acceptance: Input should be less than 1"),
    ],
)
def test_invalid_policies_are_rejected_with_a_field_path(data: dict, expected: str) -> None:
    assert expected in _message(data)


def test_several_problems_are_reported_together() -> None:
    message = _message({"k_max": -1, "mode": "fast"})
    assert "k_max:" in message
    assert "mode:" in message


def test_policy_is_immutable_so_it_can_be_shared_between_threads() -> None:
    policy = Policy()
    with pytest.raises(ValidationError):
        policy.k_max = 3  # type: ignore[misc]
    assert policy.model_copy(update={"k_max": 3}).k_max == 3
