"""Issue #24, the SLO loop's cost at many resources: one grouped Prometheus round shared by
every resource's pass (O(1) queries in N), and no status patch for a pass that changed nothing.

Prometheus here is an httpx MockTransport that answers every query with one series per resource
(labelled as the monitors label them), counting the queries; the real-Prometheus check that a
grouped answer gives the same snapshot as a resource's own queries is in
test_operator_monitors.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from specserve_contract import POLICY_KEY
from specserve_engine.policy.params import Policy
from specserve_operator import prometheus, slo_loop
from specserve_operator.config import LoopConfig
from specserve_operator.names import Owner, configmap_name
from specserve_operator.spec import parse_spec
from specserve_operator.status import SLO_LOOP, owned_patch
from tests.operator.test_operator_slo_steps import FakeKube

SPEC = parse_spec({"model": {"target": "tiny", "draft": "tiny"},
                   "replicas": {"min": 1, "max": 4, "initial": 1}})
CFG = LoopConfig(prometheus_url="http://prometheus:9090", retries=0)


def configmap_of(owner: Owner) -> dict[str, Any]:
    """The policy ConfigMap as reconcile creates it: owned by the resource."""
    return {"metadata": {"ownerReferences": [{"uid": owner.uid, "controller": True}]},
            "data": {POLICY_KEY: Policy(version=1).model_dump_json()}}


class Log:
    def info(self, line: str) -> None:
        return None


def fake_prometheus(owners: list[Owner], queries: list[str]) -> httpx.MockTransport:
    """Every query: one series per resource, value = 1 + its index (labels for every grouping:
    namespace + instance, model, le)."""
    def answer(request: httpx.Request) -> httpx.Response:
        queries.append(request.url.params["query"])
        result = [{"metric": {"namespace": o.namespace, "app_kubernetes_io_instance": o.name,
                              "model": o.name, "le": "+Inf"},
                   "value": [0, str(i + 1)]} for i, o in enumerate(owners)]
        return httpx.Response(200, json={"status": "success",
                                         "data": {"resultType": "vector", "result": result}})
    return httpx.MockTransport(answer)


async def one_pass(monkeypatch: pytest.MonkeyPatch, n: int,
                   snapshots: prometheus.GroupedSnapshots | None) -> tuple[list[str], list]:
    owners = [Owner(f"m{i}", f"ns{i}", f"uid-{i}") for i in range(n)]
    queries: list[str] = []
    transport = fake_prometheus(owners, queries)
    real = prometheus.PrometheusClient
    monkeypatch.setattr(slo_loop, "PrometheusClient",
                        lambda *a, **kw: real(*a, **kw, transport=transport))
    monkeypatch.setattr(slo_loop.kopf, "event", lambda body, **kw: None)
    api = FakeKube({("ConfigMap", configmap_name(o)): configmap_of(o) for o in owners})
    statuses = await asyncio.gather(*(
        slo_loop.slo_iteration(api, o, SPEC, {}, {}, Log(), CFG, "T", None, snapshots)
        for o in owners))
    return queries, statuses


async def test_a_pass_over_n_resources_makes_o1_prometheus_queries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = {}
    for n in (10, 100):
        queries, statuses = await one_pass(monkeypatch, n, prometheus.GroupedSnapshots(60.0))
        counts[n] = len(queries)
        # each resource read its own series out of the shared answer
        assert [s["sloSnapshot"]["targets"] for s in statuses] == list(range(1, n + 1))
    assert counts[10] == counts[100] == len(prometheus.grouped_queries(CFG.window))
    legacy, _ = await one_pass(monkeypatch, 10, None)  # each resource its own queries
    assert len(legacy) == 10 * len(prometheus.build_queries("x", CFG.window, model="m"))


async def test_grouped_rounds_are_shared_until_max_age() -> None:
    now = [0.0]
    grouped = prometheus.GroupedSnapshots(15.0, clock=lambda: now[0])
    owners = [Owner("a", "ns", "u")]
    queries: list[str] = []
    client = prometheus.PrometheusClient("http://p", retries=0,
                                         transport=fake_prometheus(owners, queries))
    for t in (0.0, 5.0, 14.9, 15.0):
        now[0] = t
        snap = await grouped.snapshot(client, "ns", "a", "2m", 100.0 + t, 0.05, 0.5)
        assert snap.targets == 1
    assert grouped.rounds == 2  # at 0 and at 15
    assert snap.time == 115.0


def test_grouped_queries_group_by_the_series_labels() -> None:
    queries = prometheus.grouped_queries("2m", "600s")
    assert queries["targets"] == (
        'count by (namespace, app_kubernetes_io_instance) '
        '(up{app_kubernetes_io_name="specserve-engine"})')
    assert "by (namespace, app_kubernetes_io_instance, le)" in queries["tpot_p90_s"]
    assert queries["gateway_held"].startswith("sum by (model) (max_over_time(")
    assert set(queries) == set(prometheus.build_queries("x", "2m", "m", "600s"))


async def test_a_pass_that_changed_nothing_sends_no_status_patch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Prometheus URL: every pass measures the same nothing. The second pass must not
    differ from the first by its time stamps alone."""
    monkeypatch.setattr(slo_loop.kopf, "event", lambda body, **kw: None)
    owner = Owner("m", "ns", "uid-m")
    api = FakeKube({("ConfigMap", configmap_name(owner)): configmap_of(owner)})
    first = await slo_loop.slo_iteration(api, owner, SPEC, {}, {}, Log(), LoopConfig(), "T1")
    assert owned_patch(SLO_LOOP, {}, first)  # the first pass writes
    second = await slo_loop.slo_iteration(api, owner, SPEC, {}, first, Log(), LoopConfig(),
                                          "T2")
    assert owned_patch(SLO_LOOP, first, second)  # before: every pass patched its stamps
    stored = slo_loop._set_fields(first)  # as the API server keeps it: no null fields
    second = slo_loop.keep_stamps(stored, second)  # what the timer (handlers.slo_loop) writes
    assert owned_patch(SLO_LOOP, stored, second) == {}


def test_keep_stamps_keeps_only_the_stamps_of_unchanged_sections() -> None:
    old = {"policy": {"version": 1, "pushedAt": "T1"}, "tuning": {"over": 0, "time": "T1"}}
    new = {"policy": {"version": 2, "pushedAt": "T2"}, "tuning": {"over": 0, "time": "T2"}}
    assert slo_loop.keep_stamps(old, new) == {"policy": {"version": 2, "pushedAt": "T2"},
                                              "tuning": {"over": 0, "time": "T1"}}
    # the API server stores no nulls (a merge patch's null deletes): still unchanged
    stored = {"tuning": {"over": 0, "time": "T1"}}
    new = {"tuning": {"over": 0, "lastChange": None, "time": "T2"}}
    assert slo_loop.keep_stamps(stored, new) == stored


class CountingKube(FakeKube):
    """FakeKube that records every call as (verb, kind): a pod LIST, a Secret GET."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str]] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        self.calls.append(("get", kind))
        return super().get(api_version, kind, namespace, name)

    def request(self, method: str, path: str) -> Any:
        self.calls.append(("list", path.split("?")[0].rsplit("/", 1)[-1]))
        return super().request(method, path)


async def test_a_steady_pass_reads_pods_and_token_from_the_indexes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue #24: with kopf's pod and Secret indexes (children.PODS, SECRETS) a pass makes no
    pod LIST and no Secret GET, and still pushes to the ready pod with the token; an index that
    has not seen the pod (the Deployment reports it ready) or the Secret yet falls back to a
    LIST or a GET."""
    import base64
    import socket

    from specserve_contract import TOKEN_KEY
    from specserve_operator.children import Children
    from specserve_operator.names import deployment_name, secret_name, selector_labels

    monkeypatch.setattr(slo_loop.kopf, "event", lambda body, **kw: None)
    owner = Owner("m", "ns", "uid-m")
    mine = {"ownerReferences": [{"uid": owner.uid, "controller": True}]}
    pod = {"metadata": {"name": "m-0", "namespace": "ns", "labels": selector_labels(owner)},
           "status": {"phase": "Running", "podIP": "10.0.0.9",
                      "conditions": [{"type": "Ready", "status": "True"}]}}
    secret = {"metadata": mine, "data": {TOKEN_KEY: base64.b64encode(b"tok").decode()}}
    deployment = {"metadata": mine, "spec": {"replicas": 1}, "status": {"readyReplicas": 1}}
    objects = {("ConfigMap", configmap_name(owner)): configmap_of(owner),
               ("Secret", secret_name(owner)): secret,
               ("Deployment", deployment_name(owner)): deployment}
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: the push is refused at once
    cfg = LoopConfig(retries=0, push_timeout_s=1.0,
                     address=lambda p: f"http://127.0.0.1:{sock.getsockname()[1]}")

    def indexes(pods: list[dict[str, Any]], with_secret: bool) -> dict[str, Any]:
        out = {"specserve_configmaps": {("ns", configmap_name(owner)): [objects[
                   ("ConfigMap", configmap_name(owner))]]},
               "specserve_deployments": {("ns", deployment_name(owner)): [deployment]},
               "specserve_pods": {("ns", "m"): pods} if pods else {}}
        if with_secret:
            out["specserve_secrets"] = {("ns", secret_name(owner)): [secret]}
        return out

    async def one(pods: list[dict[str, Any]], with_secret: bool) -> tuple[list, dict]:
        api = CountingKube(dict(objects), pods=[pod])
        status = await slo_loop.slo_iteration(api, owner, SPEC, {}, {}, Log(), cfg, "T",
                                              Children(api, indexes(pods, with_secret)))
        return api.calls, status

    try:
        calls, status = await one([pod], True)
        assert calls == []  # no pod LIST, no Secret GET, not even the ConfigMap
        assert status["policy"]["failedPods"] == 1  # pushed (refused port), token found
        assert "no control token" not in status["policy"]["message"]
        calls, status = await one([], False)  # neither index has seen them yet
        assert sorted(calls) == [("get", "Secret"), ("list", "pods")]
        assert status["policy"]["failedPods"] == 1
        calls, _ = await one([], True)
        assert calls == [("list", "pods")]  # the Deployment has a ready pod the index lacks
        api = CountingKube(dict(objects), pods=[pod])  # no indexes (event handlers, tests)
        await slo_loop.slo_iteration(api, owner, SPEC, {}, {}, Log(), cfg, "T", Children(api))
        assert ("list", "pods") in api.calls and ("get", "Secret") in api.calls
    finally:
        sock.close()
