"""AcceptanceModel: calibrated c_ij, per-request rates with a prior, calibration fitting."""

from __future__ import annotations

import math
import random
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specserve_engine.policy.acceptance import AcceptanceModel, fit_acceptance, fit_logistic
from specserve_engine.policy.params import LogisticCalibration, ModelParams


def test_identity_calibration_multiplies_draft_probabilities() -> None:
    model = AcceptanceModel()
    assert model.cumulative([0.9, 0.5, 0.8]) == pytest.approx([0.9, 0.45, 0.36])
    assert model.cumulative([]) == []


def test_per_position_calibration_and_last_entry_reuse() -> None:
    calibration = [LogisticCalibration(slope=1.0, intercept=0.0),
                   LogisticCalibration(slope=2.0, intercept=-1.0)]
    model = AcceptanceModel(ModelParams(calibration=calibration))

    def expected(q: float, s: float, b: float) -> float:
        return 1 / (1 + math.exp(-(s * math.log(q / (1 - q)) + b)))

    a1, a2, a3 = expected(0.8, 1, 0), expected(0.7, 2, -1), expected(0.6, 2, -1)
    assert model.calibrate(1, 0.8) == pytest.approx(a1)
    assert model.calibrate(3, 0.6) == pytest.approx(a3)  # past the list: last entry
    assert model.cumulative([0.8, 0.7, 0.6]) == pytest.approx([a1, a1 * a2, a1 * a2 * a3])


def test_new_request_gets_the_prior_and_history_moves_it() -> None:
    model = AcceptanceModel(ModelParams(prior_acceptance=0.6, prior_strength=4.0), decay=1.0)
    assert model.rate("new") == pytest.approx(0.6)
    # 3 drafted, 1 accepted: positions 1 (accepted) and 2 (rejected) were judged.
    model.observe(3, 1, "r")
    all_rate = (0.6 * 4 + 1) / (4 + 2)
    assert model.mean_acceptance == pytest.approx(all_rate)
    assert model.rate("r") == pytest.approx((4 * all_rate + 1) / (4 + 2))
    assert model.rate("never-seen") == pytest.approx(all_rate)
    model.forget("r")
    assert model.rate("r") == pytest.approx(all_rate)


def test_lookahead_is_a_geometric_row_per_request() -> None:
    model = AcceptanceModel(ModelParams(prior_acceptance=0.5, prior_strength=2.0), decay=1.0)
    for _ in range(20):
        model.observe(4, 4, "easy")
    easy, new = model.lookahead(["easy", "new"], 3)
    r = model.rate("easy")
    assert easy == pytest.approx([r, r**2, r**3])
    assert new == pytest.approx([model.mean_acceptance ** j for j in (1, 2, 3)])
    assert easy[0] > new[0]


def test_fit_logistic_recovers_known_parameters_from_binned_outcomes() -> None:
    truth_slope, truth_intercept = 1.8, -0.7
    xs = [x / 4 for x in range(-12, 13)]
    totals = [4000.0] * len(xs)
    accepted = [n / (1 + math.exp(-(truth_slope * x + truth_intercept)))
                for x, n in zip(xs, totals, strict=True)]
    fit = fit_logistic(xs, totals, accepted, LogisticCalibration(), ridge=1e-3)
    assert fit.slope == pytest.approx(truth_slope, rel=1e-3)
    assert fit.intercept == pytest.approx(truth_intercept, abs=1e-3)


def overconfident_outcomes(n: int, k: int, seed: int) -> list[tuple[list[float], int, int]]:
    """(draft probabilities, drafted, accepted) of a draft that says q where the target accepts
    with q**2; the first rejection ends a draft."""
    rng = random.Random(seed)
    outcomes = []
    for _ in range(n):
        probs = [rng.uniform(0.05, 0.99) for _ in range(k)]
        accepted = 0
        for q in probs:
            if rng.random() >= q * q:
                break
            accepted += 1
        outcomes.append((probs, k, accepted))
    return outcomes


def test_calibration_learns_an_overconfident_draft() -> None:
    """The draft says q, the target accepts with q**2 (overconfident): the fit corrects it."""
    model = AcceptanceModel()
    for probs, drafted, accepted in overconfident_outcomes(3000, 3, seed=0):
        model.observe(drafted, accepted, probs=probs)
    calibration = model.fit_calibration()
    assert len(calibration) >= 2
    for q in (0.3, 0.6, 0.9):
        assert model.calibrate(1, q) == pytest.approx(q * q, abs=0.06)
    params = model.to_params(ModelParams())
    assert params.calibration == calibration
    assert 0 < params.prior_acceptance < 1


def test_fit_acceptance_from_recorded_verifications() -> None:
    """What `specserve profile` stores: calibration and mean acceptance from recorded outcomes."""
    outcomes = overconfident_outcomes(2000, 4, seed=1)
    accepted_total = sum(a for _, _, a in outcomes)
    verified_total = sum(min(k, a + 1) for _, k, a in outcomes)  # positions the target judged
    calibration, mean, count = fit_acceptance(outcomes)
    assert count == 2000 and len(calibration) >= 3
    model = AcceptanceModel(ModelParams(calibration=calibration))
    for q in (0.3, 0.6, 0.9):
        assert model.calibrate(1, q) == pytest.approx(q * q, abs=0.06)
    assert mean == pytest.approx(accepted_total / verified_total, abs=0.01)


def test_fit_acceptance_with_nothing_recorded() -> None:
    calibration, mean, count = fit_acceptance([])
    assert (calibration, count) == ([LogisticCalibration()], 0) and 0 < mean < 1


def test_too_few_outcomes_leave_calibration_unchanged() -> None:
    model = AcceptanceModel()
    model.observe(2, 2, probs=[0.9, 0.8])
    assert model.fit_calibration() == [LogisticCalibration()]


@settings(max_examples=150, deadline=None)
@given(
    probs=st.lists(st.floats(0, 1), max_size=16),
    slope=st.floats(0, 20), intercept=st.floats(-20, 20),
)
def test_cumulative_is_a_non_increasing_probability(
    probs: list[float], slope: float, intercept: float
) -> None:
    calibration = [LogisticCalibration(slope=slope, intercept=intercept)]
    row = AcceptanceModel(ModelParams(calibration=calibration)).cumulative(probs)
    assert len(row) == len(probs)
    assert all(0 <= c <= 1 for c in row)
    assert all(later <= earlier for earlier, later in pairwise(row))


@settings(max_examples=100, deadline=None)
@given(outcomes=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), max_size=40))
def test_rates_stay_probabilities_whatever_is_observed(outcomes: list[tuple[int, int]]) -> None:
    model = AcceptanceModel()
    for drafted, accepted in outcomes:
        model.observe(drafted, accepted, "r")
    assert 0 < model.mean_acceptance < 1
    assert 0 <= model.rate("r") <= 1


def test_fit_logistic_survives_degenerate_bins() -> None:
    """One bin, every token accepted (seen live): no division by zero, parameters in the box."""
    from specserve_engine.policy.acceptance import fit_logistic
    from specserve_engine.policy.params import LogisticCalibration

    for xs, totals, accepted in (([13.8], [1e6], [1e6]), ([0.0], [50.0], [0.0]),
                                 ([2.0, 2.0], [1e9, 1e9], [1e9, 0.0])):
        fit = fit_logistic(xs, totals, accepted, LogisticCalibration())
        assert 0.0 <= fit.slope <= 20.0
        assert -20.0 <= fit.intercept <= 20.0
