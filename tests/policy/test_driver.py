"""StepDriver: the per-step policy glue the vLLM scheduler and the simulated replica share,
built directly (as vLLM's own scheduler tests build a scheduler) and driven through steps."""

from __future__ import annotations

import pytest

from specserve_engine.policy import Policy, SloTargets
from specserve_engine.policy.driver import EARLY_REFITS, StepDriver


def _driver(**policy: object) -> StepDriver:
    return StepDriver(Policy(**policy), engine_k_max=4)  # type: ignore[arg-type]


def _step(driver: StepDriver, now: float, *, ids: list[str], context_len: float = 64.0,
          forward_s: float = 0.02, draft_s: float = 0.004, work_left: bool = True) -> int:
    """One engine step as AdaptiveScheduler drives it; returns the K decided."""
    driver.close_cycle(now, work_left)
    driver.begin_step()
    k = driver.decide(ids, context_len)
    driver.open_cycle(now, len(ids), len(ids) * (1 + k))
    driver.forwards_done(forward_s)
    driver.record_step(draft_s, k)
    return k


def test_k_is_clamped_to_the_engine_k_max() -> None:
    driver = StepDriver(Policy(mode="static", k_max=6, static_k=6), engine_k_max=2)
    assert driver.decide(["a"], 32.0) == 2
    assert driver.prediction is not None and driver.prediction.k == 6
    assert driver.k == 2


def test_a_pushed_policy_is_adopted_once() -> None:
    driver = _driver(version=1)
    pushed = Policy(version=2, mode="off")
    assert driver.sync(pushed)
    assert not driver.sync(pushed)
    assert driver.policy.mode == "off"
    assert driver.decide(["a", "b"], 32.0) == 0


def test_the_cycle_prices_the_k_decided_and_closes_into_a_host_observation() -> None:
    driver = _driver(mode="static", k_max=4, static_k=3)
    driver.begin_step()
    k = driver.decide(["a", "b"], 100.0)
    cycle = driver.open_cycle(10.0, 2, 2 * (1 + k))
    assert cycle is not None
    timing, model = driver.model.timing, driver.model
    assert cycle.predicted_seconds == pytest.approx(
        model.draft_seconds(2, 100.0, 3) + timing.verify_seconds(2, 8, 100.0)
        + timing.host_seconds(2, 100.0))
    driver.forwards_done(0.030)
    closed = driver.close_cycle(10.045, work_left=True)
    assert closed is cycle and closed.seconds == pytest.approx(0.045)
    assert closed.host is not None and closed.host.role == "host"
    assert closed.host.seconds == pytest.approx(0.015)
    assert driver.observations[-1] is closed.host


def test_no_cycle_after_an_idle_engine_or_an_empty_step() -> None:
    driver = _driver()
    driver.begin_step()
    driver.decide(["a"], 10.0)
    driver.open_cycle(0.0, 1, 1)
    driver.forwards_done(0.01)
    assert driver.close_cycle(5.0, work_left=False) is None  # the gap was waiting
    assert driver.open_cycle(5.0, 0, 0) is None
    assert driver.close_cycle(6.0, work_left=True) is None
    assert not driver.observations


def test_a_step_teaches_target_and_draft_and_refits_on_the_schedule() -> None:
    driver = _driver(mode="static", k_max=4, static_k=2)
    refits = []
    for i in range(EARLY_REFITS[0]):
        driver.close_cycle(i * 0.03, True)
        driver.begin_step()
        k = driver.decide(["a", "b"], 50.0)
        driver.open_cycle(i * 0.03, 2, 2 * (1 + k))
        driver.forwards_done(0.02 + 0.001 * (i % 3))
        recorded = driver.record_step(0.004, k)
        assert recorded is not None
        roles = [o.role for o in recorded.observations]
        assert roles == ["target", "draft"]
        assert recorded.observations[1].seconds == pytest.approx(0.002)  # per draft position
        refits.append(recorded.refitted)
    assert driver.steps == EARLY_REFITS[0]
    assert refits == [False] * (EARLY_REFITS[0] - 1) + [True]
    assert driver.model.timing.target != Policy().model.target


def test_nothing_is_recorded_without_a_decision_or_a_measurement() -> None:
    driver = _driver()
    driver.begin_step()
    driver.open_cycle(0.0, 1, 1)
    driver.forwards_done(0.01)
    assert driver.record_step(0.001, 1) is None  # K was never decided (no K lookup)
    driver.begin_step()
    driver.decide(["a"], 10.0)
    driver.open_cycle(0.0, 1, 1)
    assert driver.record_step(0.001, 1) is None  # the forwards never reported
    assert driver.steps == 0


def test_a_refit_on_degenerate_data_keeps_the_models(monkeypatch: pytest.MonkeyPatch) -> None:
    driver = _driver()

    def fail(observations: object) -> None:
        raise ValueError("singular")

    monkeypatch.setattr(driver.model.timing, "refit", fail)
    before = driver.model.timing.target
    results = [_step(driver, i * 0.03, ids=["a"]) for i in range(EARLY_REFITS[0])]
    assert len(results) == EARLY_REFITS[0]
    assert driver.refit_failures == 1
    assert driver.model.timing.target == before


def test_trim_keeps_confident_drafts_and_drops_hopeless_tails() -> None:
    driver = _driver(mode="adaptive", k_max=4, slo=SloTargets(tpot_seconds=1.0))
    driver.begin_step()
    driver.decide(["a", "b"], 32.0)
    lengths, rows = driver.trim([[0.99, 0.99, 0.99, 0.99], [0.99, 0.01, 0.01, 0.01]])
    assert len(rows) == 2 and all(len(r) == 4 for r in rows)
    assert rows[0] == sorted(rows[0], reverse=True)  # cumulative: non-increasing
    assert lengths[0] >= lengths[1]
    assert lengths[1] <= 2


def test_threshold_mode_verifies_up_to_the_first_unconfident_draft() -> None:
    driver = _driver(mode="threshold", k_max=4, threshold_probability=0.6)
    driver.begin_step()
    driver.decide(["a"], 32.0)
    lengths, _ = driver.trim([[0.9, 0.7, 0.5, 0.9]])
    assert lengths == [2]


def test_verifications_feed_acceptance_and_finished_requests_are_forgotten() -> None:
    driver = _driver()
    before = driver.model.acceptance.mean_acceptance
    for _ in range(20):
        driver.verified("a", 4, 0, [0.9, 0.9, 0.9, 0.9])
    assert driver.model.acceptance.mean_acceptance < before
    driver.finished("a")
    rows_forgotten = driver.model.acceptance.lookahead(["a"], 4)
    rows_new = driver.model.acceptance.lookahead(["never-seen"], 4)
    assert rows_forgotten == rows_new
