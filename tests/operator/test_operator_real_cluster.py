"""What a real cluster does and kmock does not, made explicit: RBAC that refuses a resource
(403), deletion through finalizers and the garbage collector, an operator that is down."""

from __future__ import annotations

from typing import Any

import pytest

from specserve_contract import ENV_MANAGE_SERVICEMONITORS, FINALIZER, GROUP, PLURAL
from specserve_operator.kube_client import API_CALLS, KubeClient
from tests.kits.operator_kit import (
    CONFIGMAPS,
    DEPLOYMENTS,
    PDBS,
    SECRETS,
    SERVICEMONITORS,
    SERVICES,
    SSD,
    SSD_PATH,
    add_servicemonitor_crd,
    collect_garbage,
    create,
    eventually,
    forbid,
    live,
    running_operator,
    ssd,
)

pytestmark = pytest.mark.asyncio

SPEC: dict[str, Any] = {"model": {"target": "org/target-1b", "draft": "org/draft-100m"}}
NAME, UID = "chat", "uid-chat"
CHILDREN = [(DEPLOYMENTS, NAME), (SERVICES, NAME), (SECRETS, f"{NAME}-control"),
            (CONFIGMAPS, f"{NAME}-policy"), (PDBS, NAME)]


def _status(kmock: Any) -> dict[str, Any]:
    return (live(kmock, SSD, NAME) or {}).get("status") or {}


async def _delete_and_collect(kmock: Any) -> None:
    response = await kmock.delete(f"{SSD_PATH}/{NAME}")
    assert response.status < 300
    await eventually(lambda: live(kmock, SSD, NAME) is None)
    await collect_garbage(kmock)
    assert all(live(kmock, r, n) is None for r, n in CHILDREN)


async def test_unmanaged_servicemonitors_are_never_touched(
        cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """manageServiceMonitors: false with the monitoring CRD installed: the chart's RBAC grants no
    servicemonitors (403); the operator must not even read them, and status and deletion work."""
    monkeypatch.setenv(ENV_MANAGE_SERVICEMONITORS, "false")
    add_servicemonitor_crd(cluster)
    refused = forbid(cluster, SERVICEMONITORS)
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: all(live(cluster, r, n) for r, n in CHILDREN))
        await eventually(lambda: _status(cluster).get("phase") == "Progressing")
        await _delete_and_collect(cluster)
    assert list(refused) == []


async def test_forbidden_servicemonitors_block_neither_status_nor_deletion(
        cluster: Any) -> None:
    """Managed, but the RBAC lacks servicemonitors (or the CRD went away): the ServiceMonitor is
    skipped, everything else is reconciled and reported, and the resource can be deleted."""
    add_servicemonitor_crd(cluster)
    refused = forbid(cluster, SERVICEMONITORS)
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: all(live(cluster, r, n) for r, n in CHILDREN))
        st = await eventually(lambda: (s := _status(cluster)).get("phase") and s)
        assert st["phase"] == "Progressing" and st["policy"]["version"] == 1
        assert list(refused)  # it tried, got 403, went on
        await _delete_and_collect(cluster)


async def test_deletion_waits_only_for_the_operator_and_then_completes(cluster: Any) -> None:
    """kopf's finalizer (it stops the resource's timers) holds a deletion while the operator is
    down; when it comes back the resource is released at once, with nothing to do first. A
    resource that carries the finalizer of an older operator is released the same way."""
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: all(live(cluster, r, n) for r, n in CHILDREN))
        await eventually(lambda: FINALIZER in live(cluster, SSD, NAME)["metadata"]["finalizers"])
    response = await cluster.delete(f"{SSD_PATH}/{NAME}")
    assert response.status < 300
    held = live(cluster, SSD, NAME)
    assert held is not None and held["metadata"]["deletionTimestamp"]
    async with running_operator():
        await eventually(lambda: live(cluster, SSD, NAME) is None)
    assert [r.url.path for r in cluster[cluster.method.DELETE]] == [f"{SSD_PATH}/{NAME}"]
    assert await collect_garbage(cluster) == len(CHILDREN)


async def test_a_resource_under_deletion_with_the_old_finalizer_is_released(
        cluster: Any) -> None:
    """Created by an older operator (finalizer set, being deleted, children in place)."""
    body = ssd(NAME, SPEC, UID)
    body["metadata"]["finalizers"] = [FINALIZER]
    await create(cluster, body)
    response = await cluster.delete(f"{SSD_PATH}/{NAME}")
    assert response.status < 300 and live(cluster, SSD, NAME) is not None
    async with running_operator():
        await eventually(lambda: live(cluster, SSD, NAME) is None)


async def test_the_operator_makes_only_calls_its_rbac_grants(cluster: Any) -> None:
    """A lifecycle (create, ServiceMonitor, a spec edit, a repaired child, status, a
    PodDisruptionBudget turned off) through the
    real client: every call is in API_CALLS (the client refuses others, and tests/chart checks
    that the chart grants exactly API_CALLS and kopf's calls), and the reconcile used every
    call of the table except the SLO loop's own (tests/operator/test_operator_slo_loop.py)."""
    KubeClient.issued.clear()
    add_servicemonitor_crd(cluster)
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: live(cluster, SERVICEMONITORS, NAME))
        await eventually(lambda: all(live(cluster, r, n) for r, n in CHILDREN))
        response = await cluster.patch(
            f"{SSD_PATH}/{NAME}", json={"spec": {"speculation": {"kMax": 7}}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert response.status < 300
        await eventually(lambda: '"k_max": 7' in live(cluster, CONFIGMAPS, f"{NAME}-policy")[
            "data"]["policy.json"])
        for resource in (SERVICES, SERVICEMONITORS, PDBS):  # drift: edited
            path = {SERVICES: f"/api/v1/namespaces/ns1/services/{NAME}",
                    SERVICEMONITORS: f"/apis/{SERVICEMONITORS.rsplit('/', 1)[0]}/namespaces/"
                                     f"ns1/servicemonitors/{NAME}",
                    PDBS: f"/apis/policy/v1/namespaces/ns1/poddisruptionbudgets/{NAME}"}[resource]
            edit = {"metadata": {"labels": {"app.kubernetes.io/managed-by": "someone"}}}
            response = await cluster.patch(
                path, json=edit, headers={"Content-Type": "application/merge-patch+json"})
            assert response.status < 300
        await eventually(lambda: live(cluster, SERVICES, NAME)["metadata"]["labels"][
            "app.kubernetes.io/managed-by"] == "specserve-operator")
        for resource in (SERVICEMONITORS, PDBS):
            await eventually(lambda r=resource: live(cluster, r, NAME)["metadata"]["labels"][
                "app.kubernetes.io/managed-by"] == "specserve-operator")
        await eventually(lambda: _status(cluster).get("k") == "adaptive<=7")
        response = await cluster.patch(  # the one delete: a disruption budget turned off
            f"{SSD_PATH}/{NAME}", json={"spec": {"disruptionBudget": {"enabled": False}}},
            headers={"Content-Type": "application/merge-patch+json"})
        assert response.status < 300
        await eventually(lambda: live(cluster, PDBS, NAME) is None)
    issued = set(KubeClient.issued)
    assert issued <= API_CALLS
    not_here = {("list", "", "pods"), ("patch", GROUP, PLURAL),  # SLO loop: pods, kubectl-scale
                ("get", GROUP, PLURAL)}  # write_status re-reads only after a 409 (lost_updates)
    assert API_CALLS - not_here <= issued, API_CALLS - not_here - issued
