"""Scale from zero and to zero (replicas.min 0). Pure: the zero rule as a table, the gateway's
PromQL, the idle memory over passes, and the NoData handling of a deployment at zero. Against
kmock: the real loop, with its Prometheus snapshot replaced (as in
test_operator_autoscaling_modes.py) by what the gateway and the engines would report, scales a
Deployment 0 -> 1 on held requests and back to 0 once idle."""

from __future__ import annotations

import os
import time as real_time
from typing import Any

# Read when the operator starts; kopf keeps the first timer intervals of the process (as in
# test_operator_autoscaling_modes.py): SLO passes every 2 s.
os.environ.setdefault("SPECSERVE_SLO_INTERVAL_S", "2")

import pytest

from specserve_engine.policy.params import Policy
from specserve_operator import autoscale, handlers, prometheus, slo_loop, tuning
from specserve_operator.config import LoopConfig
from specserve_operator.names import Owner
from specserve_operator.prometheus import SloSnapshot
from specserve_operator.spec import parse_spec
from specserve_operator.status import no_data_condition, snapshot_status
from tests.kits.operator_kit import (
    DEPLOYMENTS,
    SSD,
    create,
    events,
    eventually,
    live,
    running_operator,
    ssd,
)

AFTER = 600.0
IDLE: dict[str, Any] = {"state": "ok", "pods_scraped": 1, "request_rate": 0.0, "running": 0.0,
                        "waiting": 0.0, "engine_requests_idle": 0.0, "gateway_held": 0.0,
                        "gateway_holds": 0.0, "gateway_requests_idle": 0.0}


def snap(**fields: Any) -> SloSnapshot:
    return SloSnapshot(namespace="ns", name="m", time=0.0, window="2m", **fields)


AT_ZERO: dict[str, Any] = {"state": "noData", "no_data_reason": "NoTargets",
                           "reasons": ["no target"]}


@pytest.mark.parametrize(("fields", "current", "idle_since", "want"), [
    # At zero: only the gateway's held requests wake it.
    ({**AT_ZERO, "gateway_held": 2.0, "gateway_holds": 0.0}, 0, None, 1),
    ({**AT_ZERO, "gateway_held": 0.0, "gateway_holds": 1.0}, 0, None, 1),  # held between passes
    ({**AT_ZERO, "gateway_held": 0.0, "gateway_holds": 0.0}, 0, None, 0),
    (AT_ZERO, 0, None, 0),  # no gateway series: nothing to go by, stay
    # Above zero: idle for the whole window -> 0; anything in use, or unknown -> capacity rule.
    (IDLE, 1, 1000.0 - AFTER, 0),
    (IDLE, 3, 1000.0 - AFTER, 0),
    (IDLE, 1, 1000.0 - AFTER + 1, None),  # not long enough yet
    (IDLE, 1, None, None),  # first idle pass: the window starts now
    ({**IDLE, "request_rate": 0.01}, 1, 0.0, None),
    ({**IDLE, "running": 1.0}, 1, 0.0, None),  # a long request, nothing finished yet
    ({**IDLE, "waiting": 1.0}, 1, 0.0, None),
    ({**IDLE, "engine_requests_idle": 1.0}, 1, 0.0, None),
    ({**IDLE, "gateway_requests_idle": 3.0}, 1, 0.0, None),
    ({**IDLE, "gateway_requests_idle": None}, 1, 0.0, 0),  # the gateway never saw a request
    ({**IDLE, "gateway_held": 1.0}, 1, 0.0, None),
    ({**IDLE, "gateway_held": None, "gateway_holds": None}, 1, 0.0, None),  # no way back
    ({**IDLE, "engine_requests_idle": None}, 1, 0.0, None),
    ({**IDLE, "state": "noData", "reasons": ["x"]}, 1, 0.0, None),  # missing data never shrinks
])
def test_zero_rule(fields: dict[str, Any], current: int, idle_since: float | None,
                   want: int | None) -> None:
    d = autoscale.decide_zero(snap(**fields), current, 0, 4, AFTER, idle_since, 1000.0, "chat")
    assert d.desired == want, d.reason


def test_without_an_idle_time_it_never_goes_to_zero_but_still_wakes() -> None:
    assert autoscale.decide_zero(snap(**IDLE), 1, 0, 4, None, 0.0, 1e6, "chat").desired is None
    wake = autoscale.decide_zero(snap(**AT_ZERO, gateway_held=1.0), 0, 0, 4, None, None, 0.0,
                                 "chat")
    assert wake.desired == 1
    assert "1 requests held at the gateway for model 'chat': 0 -> 1" in wake.reason


def test_idle_memory_starts_at_the_first_idle_pass_and_resets_on_use() -> None:
    first = autoscale.decide_zero(snap(**IDLE), 1, 0, 4, AFTER, None, 100.0, "m")
    assert (first.desired, first.idle_since) == (None, 100.0)
    later = autoscale.decide_zero(snap(**IDLE), 1, 0, 4, AFTER, first.idle_since, 400.0, "m")
    assert (later.desired, later.idle_since) == (None, 100.0)
    assert "idle for 300s of 600s" in later.reason
    used = autoscale.decide_zero(snap(**{**IDLE, "request_rate": 0.5}), 1, 0, 4, AFTER,
                                 later.idle_since, 500.0, "m")
    assert used.idle_since is None
    assert "in use (0.5 requests/s finished)" in used.reason


def test_gateway_queries_select_the_served_model() -> None:
    q = prometheus.build_queries(prometheus.selector("ns", "r"), "2m", 'a"b', "600s")
    assert q["gateway_held"] == (
        'sum(max_over_time(specserve_gateway_held_requests{model="a\\"b"}[2m]))')
    assert q["gateway_holds"] == 'sum(increase(specserve_gateway_holds_total{model="a\\"b"}[2m]))'
    assert q["gateway_requests_idle"] == (
        'sum(increase(specserve_gateway_requests_total{model="a\\"b"}[600s]))')
    assert q["engine_requests_idle"].startswith(
        'sum(increase(vllm:e2e_request_latency_seconds_count{namespace="ns",')
    assert q["engine_requests_idle"].endswith("[600s]))")
    # Without a model (and idle window), none of them.
    plain = prometheus.build_queries(prometheus.selector("ns", "r"), "2m")
    assert not {k for k in plain if "gateway" in k or k.endswith("_idle")}
    no_idle = prometheus.build_queries(prometheus.selector("ns", "r"), "2m", "m")
    assert {"gateway_held", "gateway_holds"} <= set(no_idle)
    assert "gateway_requests_idle" not in no_idle


def vec(value: float) -> dict[str, Any]:
    return {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(value)]}]}


EMPTY: dict[str, Any] = {"resultType": "vector", "result": []}


def test_a_deployment_at_zero_keeps_its_gateway_demand_in_the_snapshot() -> None:
    keys = prometheus.build_queries(prometheus.selector("n", "m"), "2m", "m", "600s")
    results = dict.fromkeys(keys, EMPTY) | {"gateway_held": vec(3), "gateway_holds": vec(0)}
    s = prometheus.assemble("n", "m", 1.0, "2m", results, 0.05, 2.0)
    assert (s.state, s.no_data_reason) == ("noData", "NoTargets")
    assert (s.gateway_held, s.gateway_holds, s.gateway_requests_idle) == (3.0, 0.0, None)
    zero = slo_loop.at_zero(s, 0)
    assert zero.no_data_reason == "ScaledToZero"
    assert zero.gateway_held == 3.0
    assert slo_loop.at_zero(s, 1) is s  # with pods, no targets is a fault
    # NoData False, no event, no no-data metric while at zero on purpose.
    cond = no_data_condition(snapshot_status(zero, "t"))
    assert (cond["status"], cond["reason"]) == ("False", "ScaledToZero")
    assert slo_loop.no_data_event(zero, {}) is None


def spec_zero(after: int | None = 600, mode: str = "builtin") -> Any:
    return parse_spec({"model": {"target": "org/t", "draft": "org/d", "servedName": "chat"},
                       "replicas": {"min": 0, "max": 3, "initial": 0},
                       "autoscaling": {"mode": mode, "scaleToZeroAfterSeconds": after}})


def status_at(desired: int, idle_since: float | None = None,
              mode: str = "builtin") -> dict[str, Any]:
    return {"autoscale": {"mode": mode, "desired": desired, "idleSince": idle_since,
                          "recommendations": [{"time": 990.0, "replicas": 0}]}}


def test_decide_scale_wakes_from_zero_and_forgets_the_zero_recommendation() -> None:
    s = snap(**AT_ZERO, gateway_held=1.0, gateway_holds=0.0)
    d = slo_loop.decide_scale(spec_zero(), s, Policy(), status_at(0), LoopConfig(), 1000.0)
    assert (d.current, d.desired, d.history) == (0, 1, [])
    ext = slo_loop.decide_scale(spec_zero(mode="external"), s, Policy(), {}, LoopConfig(), 1000.0)
    assert ext.desired == 1
    assert ext.reason.startswith("external (the HPA/KEDA applies it): at zero")


def test_decide_scale_above_zero_keeps_one_until_idle_long_enough() -> None:
    s = snap(**IDLE)
    busy = slo_loop.decide_scale(spec_zero(), s, Policy(), status_at(1, 900.0), LoopConfig(),
                                 1000.0)
    assert busy.desired == 1  # the capacity rule's floor is 1, even with replicas.min 0
    assert busy.idle_since == 900.0
    assert "idle for 100s of 600s" in busy.reason
    done = slo_loop.decide_scale(spec_zero(), s, Policy(), status_at(1, 300.0), LoopConfig(),
                                 1000.0)
    assert (done.desired, done.history) == (0, [])
    never = slo_loop.decide_scale(spec_zero(None), s, Policy(), status_at(1, 0.0), LoopConfig(),
                                  1e6)
    assert never.desired == 1


# ------------------------------------------------------------------------- kmock, real loop


class Clock:
    """slo_loop's `time` module, running `offset` seconds ahead (the idle window passes at once)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return real_time.time() + self.offset


async def test_held_requests_scale_a_deployment_at_zero_to_one_and_idle_back_to_zero(
        cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "cold"
    phase = {"now": "quiet"}
    seen_models: list[str | None] = []
    by_phase: dict[str, dict[str, Any]] = {
        "quiet": {**AT_ZERO, "gateway_held": 0.0, "gateway_holds": 0.0},
        "held": {**AT_ZERO, "gateway_held": 3.0, "gateway_holds": 0.0},
        "serving": {**IDLE, "request_rate": 0.5, "tpot_p90_s": 0.02, "engine_requests_idle": 3.0,
                    "gateway_requests_idle": 3.0},
        "idle": IDLE,
    }

    async def snapshot(owner: Owner, spec: Any, *_: Any, **__: Any) -> SloSnapshot:
        seen_models.append(spec.model.served_name)
        return SloSnapshot(namespace=owner.namespace, name=owner.name, time=0.0, window="2m",
                           **by_phase[phase["now"]])

    clock = Clock()
    monkeypatch.setattr(slo_loop, "take_snapshot", snapshot)
    monkeypatch.setattr(slo_loop, "time", clock)
    monkeypatch.setattr(handlers.RUNTIME, "loop_override", LoopConfig(
        retries=1, push_timeout_s=1.0, tuning=tuning.TuningConfig(cooldown_s=0.0)))

    def replicas() -> int:
        return int(live(cluster, DEPLOYMENTS, name)["spec"]["replicas"])  # type: ignore[index]

    def autoscale_status() -> dict[str, Any]:
        return ((live(cluster, SSD, name) or {}).get("status") or {}).get("autoscale") or {}

    def condition(kind: str) -> dict[str, Any]:
        conds = ((live(cluster, SSD, name) or {}).get("status") or {}).get("conditions") or []
        return next((c for c in conds if c["type"] == kind), {})

    spec = {"model": {"target": "org/t", "draft": "org/d", "servedName": "chat"},
            "replicas": {"min": 0, "max": 2, "initial": 0},
            "autoscaling": {"scaleToZeroAfterSeconds": 60}}
    async with running_operator():
        await create(cluster, ssd(name, spec))
        # At zero with no demand: stays at zero, and that is not "no data".
        await eventually(lambda: "at zero: no request held" in autoscale_status()["reason"], 30)
        assert replicas() == 0
        assert (condition("NoData")["status"], condition("NoData")["reason"]) == (
            "False", "ScaledToZero")
        assert not [e for e in events(cluster, name) if e.get("reason") == "NoData"]

        phase["now"] = "held"  # a client waits at the gateway
        await eventually(lambda: replicas() == 1, 10, explain=lambda: str(autoscale_status()))
        assert "3 requests held at the gateway for model 'chat': 0 -> 1" in (
            autoscale_status()["reason"])
        assert any(e.get("reason") == "Scaled" for e in events(cluster, name))

        phase["now"] = "serving"  # the pod came up and serves
        await eventually(lambda: "in use" in autoscale_status()["reason"], 10)
        assert replicas() == 1

        phase["now"] = "idle"
        await eventually(lambda: autoscale_status().get("idleSince") is not None, 10)
        assert replicas() == 1  # idle, but not for 60 s yet
        clock.offset = 120.0  # the idle window has passed
        await eventually(lambda: replicas() == 0, 10, explain=lambda: str(autoscale_status()))
        assert "idle for" in autoscale_status()["reason"]
        assert live(cluster, SSD, name)["spec"]["replicas"]["initial"] == 0  # type: ignore[index]

        phase["now"] = "held"  # and back
        await eventually(lambda: replicas() == 1, 10)
    assert set(seen_models) == {"chat"}
