"""The SLO loop's steps one at a time, against an in-memory API (no kopf, no emulator), and the
environment the operator reads at start-up."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from specserve_contract import KIND, POLICY_KEY, TOKEN_KEY
from specserve_contract.metrics import OPERATOR_DESIRED_REPLICAS
from specserve_engine.policy.params import Policy
from specserve_operator import metrics, slo_loop
from specserve_operator.config import LoopConfig, OperatorConfig
from specserve_operator.manifests import deployment_replicas
from specserve_operator.metrics import NoDataTracker
from specserve_operator.names import (
    Owner,
    configmap_name,
    owner_reference,
    secret_name,
    selector_labels,
)
from specserve_operator.prometheus import SloSnapshot
from specserve_operator.spec import (
    SpecServeDeploymentSpec,
    SpecServeDeploymentStatus,
    parse_spec,
)
from specserve_operator.status import loop_failed_status, snapshot_status

OWNER = Owner("m", "ns", "uid-m")
SPEC = parse_spec({"model": {"target": "tiny", "draft": "tiny"},
                   "replicas": {"min": 1, "max": 4, "initial": 1}})


class FakeKube:
    """get/patch/request on a dict of objects keyed by (kind, name); records every patch."""

    def __init__(self, objects: dict[tuple[str, str], dict[str, Any]] | None = None,
                 pods: list[dict[str, Any]] | None = None) -> None:
        self.objects = objects or {}
        self.pods = pods or []
        self.patches: list[tuple[str, str, dict[str, Any]]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        return self.objects.get((kind, name))

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              body: dict[str, Any]) -> Any:
        self.patches.append((kind, name, body))
        return body

    def request(self, method: str, path: str) -> Any:
        return {"items": self.pods}


MINE = {"ownerReferences": [owner_reference(OWNER)]}  # a child of OWNER (else never written)


def configmap_with(policy: Policy) -> dict[str, Any]:
    return {"metadata": MINE, "data": {POLICY_KEY: policy.model_dump_json()}}


def ready_pod(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": selector_labels(OWNER)},
            "status": {"phase": "Running", "podIP": "10.0.0.9",
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def no_data(**fields: Any) -> SloSnapshot:
    return SloSnapshot(namespace="ns", name="m", time=100.0, window="2m", state="noData",
                       **fields)


async def test_read_policy_waits_for_the_configmap() -> None:
    assert await slo_loop.read_policy(FakeKube(), OWNER) is None
    api = FakeKube({("ConfigMap", configmap_name(OWNER)): configmap_with(Policy(version=3))})
    assert (await slo_loop.read_policy(api, OWNER)).version == 3


async def test_snapshot_without_prometheus_says_where_to_set_one() -> None:
    snap = await slo_loop.take_snapshot(OWNER, SPEC, LoopConfig(window="60s"), 100.0)
    assert (snap.state, snap.window) == ("noData", "60s")
    assert "SPECSERVE_PROMETHEUS_URL" in snap.reasons[0]


def test_tuning_state_comes_from_the_last_status() -> None:
    state = slo_loop.tuning_state({"tuning": {"over": 2, "under": 0, "lastChange": 5.0}})
    assert (state.over, state.under, state.last_change) == (2, 0, 5.0)
    assert slo_loop.tuning_state({}).over == 0


async def test_decide_without_data_changes_nothing_and_writes_nothing() -> None:
    api = FakeKube()
    decision = await slo_loop.decide_policy(api, OWNER, no_data(), Policy(version=1), {},
                                            LoopConfig(), 100.0)
    assert not decision.changed and decision.policy.version == 1
    assert api.patches == []


async def test_push_without_a_token_reports_every_ready_pod() -> None:
    api = FakeKube(pods=[ready_pod("m-0"), ready_pod("m-1")])
    policy, result, ready = await slo_loop.push(api, OWNER, Policy(version=2), LoopConfig())
    assert (policy.version, ready, result.acknowledged) == (2, 2, [])
    assert {a.error for a in result.failed} == {"no control token Secret"}


async def test_push_with_a_token_but_no_pods_acknowledges_nothing() -> None:
    token = {"data": {TOKEN_KEY: base64.b64encode(b"tok").decode()}}
    api = FakeKube({("Secret", secret_name(OWNER)): token})
    _, result, ready = await slo_loop.push(api, OWNER, Policy(version=2), LoopConfig())
    assert (ready, result.acks) == (0, [])


def busy() -> SloSnapshot:
    return SloSnapshot(namespace="ns", name="m", time=100.0, window="2m", state="ok",
                       request_rate=500.0, attainment=0.2, tpot_p90_s=1.0, ttft_p90_s=10.0)


def with_mode(mode: str) -> SpecServeDeploymentSpec:
    return parse_spec({"model": {"target": "tiny", "draft": "tiny"}, "autoscaling": {"mode": mode},
                       "replicas": {"min": 1, "max": 4, "initial": 1}})


def decided(mode: str, desired: int) -> dict[str, Any]:
    return {"autoscale": {"mode": mode, "desired": desired}}


@pytest.mark.parametrize(("mode", "status", "replicas"), [
    ("builtin", {}, 1),                        # before the loop's first decision: initial
    ("builtin", decided("builtin", 3), 3),     # then the loop's last decision
    ("builtin", decided("builtin", 9), 4),     # ... within the spec's bounds now
    ("builtin", decided("external", 3), 1),    # a recommendation made in external mode: not
    ("external", decided("builtin", 3), 1),    # external follows initial (the HPA's count)
    ("external", decided("external", 3), 1),
    ("off", decided("builtin", 3), 1),
])
def test_the_deployment_count_comes_from_the_mode_and_the_last_decision(
        mode: str, status: dict[str, Any], replicas: int) -> None:
    assert deployment_replicas(with_mode(mode), status) == replicas


def test_scale_without_data_keeps_the_count_the_pods_have() -> None:
    fresh = slo_loop.decide_scale(SPEC, no_data(), Policy(), {}, LoopConfig(), 100.0)
    assert (fresh.current, fresh.desired, fresh.changed) == (1, 1, False)
    later = slo_loop.decide_scale(SPEC, no_data(), Policy(), decided("builtin", 2),
                                  LoopConfig(), 100.0)
    assert (later.current, later.desired, later.changed) == (2, 2, False)


async def test_builtin_scale_up_goes_to_the_deployment_never_to_the_spec() -> None:
    api = FakeKube({("Deployment", "m"): {"metadata": MINE, "spec": {"replicas": 1}}})
    decision = slo_loop.decide_scale(SPEC, busy(), Policy(), {}, LoopConfig(), 100.0)
    assert decision.desired > 1 and api.patches == []
    status = decided("builtin", decision.desired)
    assert await slo_loop.apply_scale(api, OWNER, SPEC, status) == decision.desired
    assert api.patches == [("Deployment", "m", {"spec": {"replicas": decision.desired}})]
    api.objects[("Deployment", "m")] = {"spec": {"replicas": decision.desired}}
    assert await slo_loop.apply_scale(api, OWNER, SPEC, status) is None  # already there
    assert await slo_loop.apply_scale(api, OWNER, SPEC, {"sloSnapshot": {}}) is None  # failed
    assert len(api.patches) == 1 and all(kind != KIND for kind, _, _ in api.patches)


async def test_external_mode_recommends_and_never_scales() -> None:
    spec = with_mode("external")
    api = FakeKube({("Deployment", "m"): {"metadata": MINE, "spec": {"replicas": 1}}})
    # The HPA's count (spec.replicas.initial) is the base, whatever the last decision said.
    decision = slo_loop.decide_scale(spec, busy(), Policy(), decided("external", 3),
                                     LoopConfig(), 100.0)
    assert decision.current == 1 and decision.desired > 1
    assert decision.reason.startswith("external (the HPA/KEDA applies it): ")
    assert await slo_loop.apply_scale(api, OWNER, spec, decided("external", 3)) is None
    assert api.patches == []


def test_off_mode_decides_nothing() -> None:
    decision = slo_loop.decide_scale(with_mode("off"), busy(), Policy(), decided("builtin", 3),
                                     LoopConfig(), 100.0)
    assert (decision.current, decision.desired, decision.raw, decision.history) == (1, 1, None,
                                                                                    [])
    assert "autoscaling off" in decision.reason


async def test_one_iteration_returns_status_the_crd_schema_accepts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    posted: list[dict[str, Any]] = []
    monkeypatch.setattr(slo_loop.kopf, "event", lambda body, **kw: posted.append(kw))
    api = FakeKube({("ConfigMap", configmap_name(OWNER)): configmap_with(Policy(version=1)),
                    ("Deployment", "m"): {"metadata": MINE, "spec": {"replicas": 1}}})

    class Log:
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, line: str) -> None:
            self.lines.append(line)

    log = Log()
    new = await slo_loop.slo_iteration(api, OWNER, SPEC, {}, {}, log, LoopConfig(), "T")
    assert set(new) == {"sloSnapshot", "slo", "tuning", "policy", "autoscale", "conditions"}
    assert new["policy"] == {"version": 1, "appliedPods": 0, "failedPods": 0, "pushedAt": "T",
                             "message": "policy v1 acknowledged by 0/0"}
    SpecServeDeploymentStatus.model_validate(new)  # camelCase keys, as the CRD declares them
    record = json.loads(log.lines[-1].removeprefix("slo loop: "))
    assert record["deployment"] == "ns/m" and record["scale"]["desired"] == 1
    assert new["autoscale"]["mode"] == "builtin" and new["autoscale"]["desired"] == 1
    assert metrics.REGISTRY.get_sample_value(OPERATOR_DESIRED_REPLICAS,
                                             {"namespace": "ns", "name": "m"}) == 1
    assert api.patches == []  # nothing to scale: no Deployment patch, and never the spec
    no_data = next(c for c in new["conditions"] if c["type"] == "NoData")
    assert (no_data["status"], no_data["reason"]) == ("True", "NoPrometheusUrl")
    assert [(e["type"], e["reason"]) for e in posted] == [("Warning", "NoData")]
    # The next pass, seeing that condition, posts nothing more.
    await slo_loop.slo_iteration(api, OWNER, SPEC, {}, new, log, LoopConfig(), "T2")
    assert len(posted) == 1


@pytest.mark.parametrize(("state", "cause", "prev", "want"), [
    ("noData", "NoTargets", None, ("Warning", "NoData")),
    ("noData", "NoTargets", ("True", "NoTargets"), None),
    ("noData", "EmptySeries", ("True", "NoTargets"), ("Warning", "NoData")),  # a new cause
    ("error", None, ("False", "DataPresent"), ("Warning", "NoData")),
    ("ok", None, ("True", "QueryError"), ("Normal", "DataRestored")),
    ("ok", None, ("False", "DataPresent"), None),
    ("ok", None, None, None),
])
def test_no_data_events_only_on_a_change(state: str, cause: str | None,
                                         prev: tuple[str, str] | None,
                                         want: tuple[str, str] | None) -> None:
    snap = SloSnapshot(namespace="ns", name="m", time=1.0, window="2m", state=state,
                       no_data_reason=cause, reasons=["why"] if state != "ok" else [])
    old = {"conditions": [{"type": "NoData", "status": prev[0], "reason": prev[1]}]} if prev \
        else {}
    event = slo_loop.no_data_event(snap, old)
    assert (event[:2] if event else None) == want
    if want == ("Warning", "NoData"):
        assert event is not None and event[2] == f"{cause or 'QueryError'}: why"


def test_snapshot_status_has_every_field_in_milliseconds() -> None:
    snap = no_data(reasons=["a", "b"], tpot_p90_s=0.0123456, request_rate=0.123456)
    out = snapshot_status(snap, "T")
    assert out["tpotP90Ms"] == 12.346 and out["requestRate"] == 0.1235
    assert out["reason"] == "a; b" and out["ttftP50Ms"] is None and len(out) == 17


def test_a_failed_pass_keeps_the_last_snapshot_and_says_why() -> None:
    old = {"sloSnapshot": {"state": "ok", "attainment": 0.5}}
    out = loop_failed_status(old, RuntimeError("boom"), "T")
    assert out == {"sloSnapshot": {"state": "error", "attainment": 0.5, "time": "T",
                                   "reason": "SLO loop failed: RuntimeError: boom",
                                   "noDataReason": None}}


def test_operator_settings_are_read_from_the_environment() -> None:
    cfg = OperatorConfig.from_environ({
        "SPECSERVE_STATUS_INTERVAL_S": "3", "SPECSERVE_SLO_INTERVAL_S": "7",
        "SPECSERVE_PROMETHEUS_URL": "http://prom:9090", "SPECSERVE_SLO_WINDOW": "5m"})
    assert (cfg.status_interval_s, cfg.slo_interval_s) == (3.0, 7.0)
    assert (cfg.loop.prometheus_url, cfg.loop.window) == ("http://prom:9090", "5m")
    assert cfg.loop.tuning.cooldown_s == 14.0
    default = OperatorConfig.from_environ({})
    assert (default.status_interval_s, default.slo_interval_s) == (15.0, 30.0)
    assert default.loop.prometheus_url is None and default.loop.window == "2m"


@pytest.mark.parametrize("url", ["", None])
def test_an_empty_prometheus_url_means_none(url: str | None) -> None:
    env = {} if url is None else {"SPECSERVE_PROMETHEUS_URL": url}
    assert OperatorConfig.from_environ(env).loop.prometheus_url is None


def test_monitor_labels_are_a_json_object_of_kubernetes_labels() -> None:
    env = {"SPECSERVE_MONITOR_LABELS": '{"release": "kube-prometheus-stack"}'}
    assert OperatorConfig.from_environ(env).monitor_labels == {"release": "kube-prometheus-stack"}
    assert OperatorConfig.from_environ({}).monitor_labels == {}
    assert OperatorConfig.from_environ({"SPECSERVE_MONITOR_LABELS": "{}"}).monitor_labels == {}
    for bad, why in (("release=x", "not JSON"), ('["x"]', "JSON object"),
                     ('{"release": "a b"}', "not a valid label value")):
        with pytest.raises(ValueError, match=why):
            OperatorConfig.from_environ({"SPECSERVE_MONITOR_LABELS": bad})


def test_the_no_data_gauge_forgets_resources_whose_passes_stopped() -> None:
    tracker = NoDataTracker(ttl_s=10.0)
    tracker.observe("ns", "a", "NoTargets", now=100.0)
    tracker.observe("ns", "b", None, now=100.0)  # has data: not listed
    tracker.observe("ns", "c", "QueryError", now=105.0)
    assert tracker.current(now=109.0) == {("ns", "a"): "NoTargets", ("ns", "c"): "QueryError"}
    assert tracker.current(now=112.0) == {("ns", "c"): "QueryError"}  # a: deleted, say
    tracker.observe("ns", "c", None, now=113.0)
    assert tracker.current(now=113.0) == {}
