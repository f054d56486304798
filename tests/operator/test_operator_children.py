"""The children the timers read from memory (`children`): no GET for what an index holds, a GET
for what it lacks, unwatched children rechecked every few passes; and against the emulator: a
settled resource's status passes read no child, yet a deleted or edited one is repaired."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from specserve_operator import children, names, reconcile
from specserve_operator.kube_client import KubeClient
from specserve_operator.spec import parse_spec
from tests.kits.apiserver import MemoryApiServer
from tests.kits.malformed_specs import VALID
from tests.kits.operator_kit import (
    DEPLOYMENTS,
    NS,
    SERVICES,
    create,
    eventually,
    live,
    running_operator,
    ssd,
)

OWNER = names.Owner(name="chat", namespace="prod", uid="uid-chat")
SPEC = parse_spec(VALID)


class Log:
    def info(self, *_: Any) -> None:
        pass

    def warning(self, *_: Any) -> None:
        pass


class Counting(MemoryApiServer):
    def __init__(self) -> None:
        super().__init__(defaulting=True)
        self.gets: list[str] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        self.gets.append(kind)
        return super().get(api_version, kind, namespace, name)


def _indexes(api: MemoryApiServer) -> dict[str, dict[tuple[str, str], list[dict[str, Any]]]]:
    """What kopf's indexes would hold: every watched child, as stored."""
    out: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {
        w.index: {} for w in children.WATCHED}
    for (kind, name), obj in api.objects.items():
        for w in children.WATCHED:
            if w.kind == kind:
                out[w.index][(OWNER.namespace, name)] = [children.cached_object(obj)]
    return out


def test_a_timer_pass_over_indexed_children_reads_nothing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = Counting()
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log())  # type: ignore[arg-type]
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Secret"} <= set(
        api.gets)  # the create handler reads everything
    checked = children.CheckedRecently(60.0)
    checked.mark(("Secret", OWNER.namespace, names.secret_name(OWNER)))
    api.gets.clear()
    api.writes.clear()
    reads = children.Children(api, _indexes(api), checked)  # type: ignore[arg-type]
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log(), reads=reads)  # type: ignore[arg-type]
    assert api.gets == [] and api.writes == []


def test_a_child_missing_from_its_index_is_read_and_recreated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = Counting()
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log())  # type: ignore[arg-type]
    del api.objects[("Service", names.service_name(OWNER))]
    indexes = _indexes(api)
    api.gets.clear()
    api.writes.clear()
    reads = children.Children(api, indexes, children.CheckedRecently(60.0))  # type: ignore[arg-type]
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log(), reads=reads)  # type: ignore[arg-type]
    assert "Service" in api.gets and ("apply", "Service") in {(v, k) for v, k, *_ in api.writes}


def test_an_edit_the_index_shows_is_patched_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = Counting()
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log())  # type: ignore[arg-type]
    api.objects[("Deployment", names.deployment_name(OWNER))]["spec"]["replicas"] = 9
    api.writes.clear()
    reads = children.Children(api, _indexes(api), children.CheckedRecently(60.0))  # type: ignore[arg-type]
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Log(), reads=reads)  # type: ignore[arg-type]
    assert [(v, k) for v, k, *_ in api.writes] == [("apply", "Deployment")]


def test_unwatched_children_are_rechecked_once_the_check_is_old() -> None:
    now = [0.0]
    checked = children.CheckedRecently(60.0, clock=lambda: now[0])
    key = ("Secret", "prod", "chat-control")
    reads = children.Children(Counting(), {"specserve_deployments": {}}, checked)  # type: ignore[arg-type]
    assert not reads.recently_checked(*key)
    reads.mark_checked(*key)
    now[0] = 59.0
    assert reads.recently_checked(*key)
    now[0] = 61.0
    assert not reads.recently_checked(*key)
    # Without indexes (create, update, resume) every check is made.
    reads.mark_checked(*key)
    assert not children.Children(Counting(), None, checked).recently_checked(*key)  # type: ignore[arg-type]


def test_discovery_is_asked_again_only_when_old() -> None:
    class Discovery(KubeClient):
        def __init__(self) -> None:
            super().__init__(None, discovery_ttl_s=300.0)  # type: ignore[arg-type]
            self.asked = 0

        def request(self, method: str, path: str, body: Any = None,
                    content_type: str | None = None) -> dict[str, Any]:
            self.asked += 1
            return {"resources": [{"name": "servicemonitors"}]}

    api = Discovery()
    assert all(api.serves("monitoring.coreos.com/v1", "servicemonitors") for _ in range(5))
    assert api.asked == 1
    api._served = {k: (t - 301.0, v) for k, (t, v) in api._served.items()}
    assert api.serves("monitoring.coreos.com/v1", "servicemonitors") and api.asked == 2


SPEC_RAW: dict[str, Any] = {"model": {"target": "org/t", "draft": "org/d"},
                            "autoscaling": {"mode": "off"}}
CHILD_GETS = ("/deployments/", "/services/", "/configmaps/", "/poddisruptionbudgets/")


@pytest.mark.asyncio
async def test_settled_status_passes_get_no_watched_child_and_still_repair(cluster: Any) -> None:
    async with running_operator():
        await create(cluster, ssd("chat", SPEC_RAW))
        await eventually(lambda: live(cluster, SERVICES, "chat")
                         and (live(cluster, "specserve.io/v1alpha1/specservedeployments", "chat")
                              or {}).get("status", {}).get("phase"))
        await asyncio.sleep(1.5)  # the create handler's own reads are done
        mark = len(list(cluster))
        await asyncio.sleep(3.5)  # three status passes (1 s apart in tests)
        reads = [r.url.path for r in list(cluster)[mark:] if r.method.value == "GET"
                 and any(p in r.url.path for p in CHILD_GETS)]
        assert reads == []
        response = await cluster.delete(f"/api/v1/namespaces/{NS}/services/chat")
        assert response.status < 300
        await eventually(lambda: live(cluster, SERVICES, "chat"))
        response = await cluster.patch(
            f"/apis/apps/v1/namespaces/{NS}/deployments/chat", json={"spec": {"replicas": 7}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert response.status < 300
        await eventually(lambda: live(cluster, DEPLOYMENTS, "chat")["spec"]["replicas"] == 1)
