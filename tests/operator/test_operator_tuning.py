"""Pure tests of tuning.decide: refit, tighten/relax with hysteresis, no data, versioning."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from specserve_engine.policy.params import (
    LogisticCalibration,
    ModelParams,
    Policy,
    SloTargets,
    TimingCoefficients,
)
from specserve_operator import tuning
from specserve_operator.prometheus import SloSnapshot

TARGET = 0.100  # TPOT SLO, seconds
CFG = tuning.TuningConfig(over_patience=2, under_patience=3, cooldown_s=0.0, min_steps=50)
# What a pod reports it runs: its profile (timing and acceptance calibration) plus online fits.
MEASURED = ModelParams(
    target=TimingCoefficients(overhead_s=0.024, per_token_s=0.0076, knee_tokens=4),
    draft=TimingCoefficients(overhead_s=0.0012, per_token_s=4.5e-5),
    calibration=[LogisticCalibration(slope=0.5, intercept=1.9)], prior_acceptance=0.77,
    source="profile specserve-profile.json")


def policy(**kw: Any) -> Policy:
    return Policy(version=kw.pop("version", 4), slo=SloTargets(tpot_seconds=TARGET), **kw)


def snap(tpot_p90: float | None = 0.08, *, state: str = "ok", predicted: float | None = None,
         observed: float | None = None, step_rate: float = 10.0) -> SloSnapshot:
    return SloSnapshot(
        namespace="ns", name="m", time=0.0, window="30s", state=state,  # type: ignore[arg-type]
        reasons=[] if state == "ok" else ["Prometheus answered no query"],
        pods_scraped=1, request_rate=1.0, tpot_p90_s=tpot_p90,
        step_predicted_mean_s=predicted, step_observed_mean_s=observed, step_rate=step_rate)


def run(seq: list[SloSnapshot], p: Policy, cfg: tuning.TuningConfig = CFG
        ) -> tuple[Policy, list[tuning.TuningDecision]]:
    state, out = tuning.TuningState(), []
    for i, s in enumerate(seq):
        d = tuning.decide(s, p, state, now=float(i * 10), config=cfg)
        out.append(d)
        p, state = d.policy, d.state
    return p, out


OVER, INSIDE, BAND = 0.150, 0.050, 0.085  # TPOT p90 over target, well inside, in the dead band


@pytest.mark.parametrize(("name", "tpots", "headroom", "floor", "changes"), [
    ("one over is not enough", [OVER], 0.9, 0.0, 0),
    ("two over tighten headroom", [OVER, OVER], 0.8, 0.0, 1),
    ("four over tighten twice", [OVER] * 4, 0.7, 0.0, 2),
    ("headroom floor then confidence floor", [OVER] * 10, 0.5, 0.1, 5),
    ("alternating over/inside never moves", [OVER, INSIDE] * 6, 0.9, 0.0, 0),
    ("over, band, over never moves", [OVER, BAND] * 6, 0.9, 0.0, 0),
    ("dead band never moves", [BAND] * 10, 0.9, 0.0, 0),
    ("inside at full relax stays", [INSIDE] * 9, 0.9, 0.0, 0),
    ("tighten then relax after three inside", [OVER, OVER, INSIDE, INSIDE, INSIDE], 0.9, 0.0, 2),
    ("two inside do not relax yet", [OVER, OVER, INSIDE, INSIDE], 0.8, 0.0, 1),
])
def test_tpot_knobs_table(name: str, tpots: list[float], headroom: float, floor: float,
                          changes: int) -> None:
    start = policy()
    final, decisions = run([snap(t) for t in tpots], start)
    assert final.tpot_headroom == pytest.approx(headroom), name
    assert final.confidence_floor == pytest.approx(floor), name
    assert sum(d.changed for d in decisions) == changes, name
    assert final.version == start.version + changes, name  # every change is a new version


def test_relax_undoes_confidence_floor_before_headroom() -> None:
    p = policy(tpot_headroom=0.5, confidence_floor=0.2)
    final, decisions = run([snap(INSIDE)] * 3, p)
    assert (final.confidence_floor, final.tpot_headroom) == (pytest.approx(0.1), 0.5)
    assert "confidence_floor 0.2 -> 0.1" in decisions[-1].summary


@pytest.mark.parametrize("state", ["noData", "error"])
def test_no_data_keeps_policy_and_counters(state: str) -> None:
    p = policy(tpot_headroom=0.7)
    st = tuning.TuningState(over=1, under=0, last_change=5.0)
    d = tuning.decide(snap(OVER, state=state, predicted=0.01, observed=0.05), p, st, now=100.0,
                  config=CFG)
    assert d.policy == p and not d.changed
    assert d.state == st
    assert "no data" in d.reasons[0] and "policy kept" in d.reasons[0]


def test_idle_window_keeps_knobs_and_counters() -> None:
    st = tuning.TuningState(over=1)
    d = tuning.decide(snap(None), policy(), st, now=0.0, config=CFG)
    assert not d.changed and d.state.over == 1


@pytest.mark.parametrize(("predicted", "observed", "steps_per_s", "factor"), [
    (0.010, 0.040, 10.0, 2.0 ** 0.5),     # 4x slower: clamped to 2x, damped to sqrt(2)
    (0.010, 0.0121, 10.0, 1.21 ** 0.5),   # 21% off: refit by sqrt(1.21) = 1.1
    (0.040, 0.010, 10.0, 0.5 ** 0.5),     # 4x faster: clamped to 1/2, damped
    (0.010, 0.0110, 10.0, None),          # 10%: inside the tolerance
    (0.010, 0.040, 1.0, None),            # 30 steps in the window < min_steps
    (None, 0.040, 10.0, None),            # no prediction series
])
def test_timing_refit_table(predicted: float | None, observed: float, steps_per_s: float,
                            factor: float | None) -> None:
    p = policy()
    d = tuning.decide(snap(BAND, predicted=predicted, observed=observed, step_rate=steps_per_s), p,
                  tuning.TuningState(), now=0.0, config=CFG, measured=MEASURED)
    if factor is None:
        assert not d.changed and d.policy == p
        return
    assert d.changed and d.policy.version == p.version + 1
    for role in ("target", "draft"):
        old, new = getattr(MEASURED, role), getattr(d.policy.model, role)
        assert new.overhead_s == pytest.approx(old.overhead_s * factor)
        assert new.per_token_s == pytest.approx(old.per_token_s * factor)
        assert new.knee_tokens == old.knee_tokens
    # The pods' acceptance calibration travels with the refitted timing.
    assert d.policy.model.calibration == MEASURED.calibration
    assert d.policy.model.source.startswith("operator refit")


def test_refit_keeps_the_token_correction_and_scales_every_prediction() -> None:
    from specserve_engine.policy.timing import predict_seconds

    corr = [(8, 1.0), (16, 1.4), (31, 1.4), (32, 1.0)]
    measured = MEASURED.model_copy(update={
        "target": MEASURED.target.model_copy(update={"token_correction": corr})})
    d = tuning.decide(snap(BAND, predicted=0.010, observed=0.0121), policy(),
                      tuning.TuningState(), now=0.0, config=CFG, measured=measured)
    assert d.changed
    scaled = d.policy.model.target
    assert scaled.token_correction == corr
    for n in (4, 12, 20, 40):
        assert predict_seconds(scaled, 4, n, 256.0) == pytest.approx(
            predict_seconds(measured.target, 4, n, 256.0) * 1.21 ** 0.5)


def test_no_refit_of_the_builtin_defaults() -> None:
    """No pod reported its model and none was refitted before: scaling the built-in defaults
    and pushing them would replace every pod's profile, so nothing is refitted."""
    p = policy()
    d = tuning.decide(snap(BAND, predicted=0.010, observed=0.040), p, tuning.TuningState(), 0.0,
                      CFG)
    assert not d.changed and "no model measured by the pods" in d.summary
    # A model the operator refitted earlier is scaled again when the pods are unreachable.
    refitted = policy(model=MEASURED.model_copy(update={"source": "operator refit x1.100"}))
    d = tuning.decide(snap(BAND, predicted=0.010, observed=0.040), refitted,
                      tuning.TuningState(), 0.0, CFG)
    assert d.changed
    assert d.policy.model.target.overhead_s == pytest.approx(0.024 * 2.0 ** 0.5)


def test_refit_converges_instead_of_oscillating() -> None:
    """Observed stays at 30 ms; predictions follow the refitted model: the ratio shrinks
    monotonically and the refits stop inside the tolerance."""
    p, st = policy(), tuning.TuningState()
    ratios = []
    for i in range(12):
        predicted = p.model.target.overhead_s  # this test's engine predicts its overhead
        ratios.append(0.030 / predicted)
        # The pods run what was pushed last, and report it back.
        d = tuning.decide(snap(BAND, predicted=predicted, observed=0.030), p, st, float(i), CFG,
                      measured=p.model)
        p, st = d.policy, d.state
    assert ratios[0] == pytest.approx(3.0)
    assert all(b <= a for a, b in itertools.pairwise(ratios))
    assert abs(ratios[-1] - 1) <= CFG.refit_tolerance
    assert ratios[-1] == ratios[-2]  # stopped changing


def test_cooldown_defers_changes() -> None:
    cfg = CFG.model_copy(update={"cooldown_s": 60.0})
    st = tuning.TuningState(over=1, last_change=100.0)
    d = tuning.decide(snap(OVER), policy(), st, now=130.0, config=cfg)
    assert not d.changed and "cooldown" in d.summary
    later = tuning.decide(snap(OVER), policy(), d.state, now=170.0, config=cfg)
    assert later.changed and later.policy.tpot_headroom == pytest.approx(0.8)


def test_spec_owned_fields_are_never_tuned() -> None:
    p = policy(k_max=4, static_k=2)
    final, _ = run([snap(OVER, predicted=0.01, observed=0.03)] * 12, p)
    assert (final.k_max, final.static_k, final.mode, final.slo) == (4, 2, "adaptive", p.slo)


def test_static_mode_only_refits_timing() -> None:
    p = policy(mode="static", static_k=2)
    d = tuning.decide(snap(OVER), p, tuning.TuningState(over=5), 0.0, CFG)
    assert not d.changed and "no knobs" in d.summary


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30.0), ("2m", 120.0), ("500ms", 0.5),
                                                ("1h", 3600.0)])
def test_duration_seconds(text: str, seconds: float) -> None:
    assert tuning.duration_seconds(text) == seconds


def test_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        tuning.duration_seconds("soon")
