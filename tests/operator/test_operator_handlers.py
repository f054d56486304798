"""The operator against the kmock Kubernetes emulator: create, update, delete, restart, status."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from specserve_operator.names import Owner, owner_reference, selector_string
from tests.kits.malformed_specs import CASES
from tests.kits.operator_kit import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NS,
    PDBS,
    SECRETS,
    SERVICEMONITORS,
    SERVICES,
    SSD,
    SSD_PATH,
    add_servicemonitor_crd,
    collect_garbage,
    count,
    create,
    events,
    eventually,
    live,
    posts,
    running_operator,
    ssd,
    versions,
)

pytestmark = pytest.mark.asyncio

SPEC: dict[str, Any] = {
    "model": {"target": "org/target-1b", "draft": "org/draft-100m"},
    "speculation": {"mode": "adaptive", "kMax": 4},
    "replicas": {"min": 1, "max": 3, "initial": 2},
    # Replicas follow spec.replicas.initial (in builtin mode only until the SLO loop's first
    # decision): test_operator_autoscaling_modes.py covers each mode.
    "autoscaling": {"mode": "off"},
}
NAME = "chat"
UID = "uid-chat"
CHILDREN = [
    (DEPLOYMENTS, NAME),
    (SERVICES, NAME),
    (SECRETS, f"{NAME}-control"),
    (CONFIGMAPS, f"{NAME}-policy"),
    (PDBS, NAME),
]


def _args(dep: dict[str, Any]) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def _policy(kmock: Any) -> dict[str, Any]:
    return json.loads(live(kmock, CONFIGMAPS, f"{NAME}-policy")["data"]["policy.json"])


def _all_children(kmock: Any) -> bool:
    return all(live(kmock, res, name) for res, name in CHILDREN)


async def test_create_makes_owned_children_and_status(cluster: Any) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        for res, name in CHILDREN:
            refs = live(cluster, res, name)["metadata"]["ownerReferences"]
            assert refs == [owner_reference(Owner(NAME, NS, UID))], res
            labels = live(cluster, res, name)["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "specserve-operator"
        dep = live(cluster, DEPLOYMENTS, NAME)
        assert dep["spec"]["replicas"] == 2
        assert _args(dep)[:4] == ["--model", "org/target-1b", "--draft", "org/draft-100m"]
        token = live(cluster, SECRETS, f"{NAME}-control")["data"]["token"]
        assert len(base64.b64decode(token)) >= 32
        assert _policy(cluster)["version"] == 1
        assert _policy(cluster)["k_max"] == 4

        status = await eventually(lambda: live(cluster, SSD, NAME)["status"]["conditions"])
        types = {c["type"]: c["status"] for c in status}
        assert types["Ready"] == "False"  # no pod is ready in the emulator
        assert types["Progressing"] == "True"
        st = live(cluster, SSD, NAME)["status"]
        assert st["phase"] == "Progressing"
        assert st["replicas"] == {"desired": 2, "current": 0, "ready": 0}
        assert st["k"] == "adaptive<=4"
        assert st["policy"]["version"] == 1
        await eventually(lambda: "Created" in {e["reason"] for e in events(cluster, NAME)})


async def _patch_ssd(kmock: Any, body: dict[str, Any], subresource: str = "") -> None:
    path = f"{SSD_PATH}/{NAME}" + (f"/{subresource}" if subresource else "")
    response = await kmock.patch(path, json=body,
                                 headers={"Content-Type": "application/merge-patch+json"})
    assert response.status < 300, await response.text()


async def test_update_of_model_k_and_replicas_patches_children(cluster: Any) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        token = live(cluster, SECRETS, f"{NAME}-control")["data"]["token"]
        await _patch_ssd(cluster, {"spec": {
            "model": {"target": "org/target-8b"},
            "speculation": {"kMax": 7},
            "replicas": {"initial": 3},
        }})
        dep = await eventually(
            lambda: (d := live(cluster, DEPLOYMENTS, NAME))
            and "org/target-8b" in _args(d) and d["spec"]["replicas"] == 3 and d
        )
        assert _args(dep)[_args(dep).index("--k-max") + 1] == "7"
        policy = await eventually(lambda: (p := _policy(cluster))["version"] == 2 and p)
        assert policy["k_max"] == 7
        assert live(cluster, SECRETS, f"{NAME}-control")["data"]["token"] == token
        assert count(cluster, DEPLOYMENTS) == 1
        await eventually(lambda: live(cluster, SSD, NAME)["status"]["k"] == "adaptive<=7")
        await eventually(lambda: "Updated" in {e["reason"] for e in events(cluster, NAME)})


async def test_scale_subresource_style_update_changes_deployment_replicas(cluster: Any) -> None:
    """`kubectl scale ssd/chat --replicas=3` writes .spec.replicas.initial (mode off: the
    count)."""
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        await _patch_ssd(cluster, {"spec": {"replicas": {"initial": 3}}})
        await eventually(lambda: live(cluster, DEPLOYMENTS, NAME)["spec"]["replicas"] == 3)
        st = await eventually(
            lambda: (x := live(cluster, SSD, NAME)["status"])["replicas"]["desired"] == 3 and x)
        assert st["selector"] == selector_string(Owner(NAME, NS, UID))


async def test_delete_removes_children(cluster: Any) -> None:
    """The resource goes as soon as kopf has stopped its timers; its children go with the
    garbage collector (kmock has none: `collect_garbage` does what it does), because each one
    carries an owner reference to it. The operator itself deletes nothing."""
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        response = await cluster.delete(f"{SSD_PATH}/{NAME}")
        assert response.status < 300
        await eventually(lambda: live(cluster, SSD, NAME) is None)
        assert [r.url.path for r in cluster[cluster.method.DELETE]] == [f"{SSD_PATH}/{NAME}"]
        assert await collect_garbage(cluster) == len(CHILDREN)
        await eventually(lambda: all(live(cluster, r, n) is None for r, n in CHILDREN))


async def test_restart_makes_no_duplicates_and_no_changes(cluster: Any) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        await eventually(lambda: live(cluster, SSD, NAME)["status"]["phase"])
    before = {(r, n): versions(cluster, r, n) for r, n in CHILDREN}
    token = live(cluster, SECRETS, f"{NAME}-control")["data"]["token"]
    posts_before = len(posts(cluster))
    gets_before = len(list(cluster[cluster.method.GET]))

    async with running_operator():
        # Resume handler plus a few timer passes (1 s apart in tests).
        reads = f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}"
        await eventually(lambda: any(
            r.url.path == reads for r in list(cluster[cluster.method.GET])[gets_before:]))
        await asyncio.sleep(3)

    assert {(r, n): versions(cluster, r, n) for r, n in CHILDREN} == before
    for res, _ in CHILDREN:
        assert count(cluster, res) == 1, res
    assert live(cluster, SECRETS, f"{NAME}-control")["data"]["token"] == token
    new_posts = [r for r in posts(cluster)[posts_before:]
                 if r.resource is not None and r.resource.plural != "events"]
    assert new_posts == []


async def test_status_follows_the_deployment(cluster: Any) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        await eventually(lambda: _all_children(cluster))
        response = await cluster.patch(
            f"/apis/apps/v1/namespaces/{NS}/deployments/{NAME}/status",
            json={"status": {"replicas": 2, "readyReplicas": 2, "updatedReplicas": 2}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert response.status < 300
        st = await eventually(
            lambda: (x := live(cluster, SSD, NAME)["status"])["phase"] == "Running" and x)
        conds = {c["type"]: c["status"] for c in st["conditions"]}
        assert conds["Ready"] == "True" and conds["Progressing"] == "False"
        assert st["replicas"] == {"desired": 2, "current": 2, "ready": 2}


async def test_invalid_spec_is_reported_then_fixed(cluster: Any) -> None:
    bad = {**SPEC, "replicas": {"min": 3, "max": 2, "initial": 2}}
    async with running_operator():
        await create(cluster, ssd(NAME, bad, UID))
        st = await eventually(
            lambda: (x := live(cluster, SSD, NAME).get("status", {})).get("phase") == "Invalid"
            and x)
        assert "spec.replicas: min (3) must be <= max (2)" in st["message"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
        warning = await eventually(
            lambda: [e for e in events(cluster, NAME) if e["reason"] == "InvalidSpec"])
        assert warning[0]["type"] == "Warning"
        assert "min (3) must be <= max (2)" in warning[0]["message"]
        # The status timer (1 s in tests) must not repeat the event. (kmock never bumps
        # resourceVersion, so kopf may run the create handler twice right at the start: let
        # that settle before counting.)
        await asyncio.sleep(0.5)
        posted = len([e for e in events(cluster, NAME) if e["reason"] == "InvalidSpec"])
        await asyncio.sleep(2.5)
        assert len([e for e in events(cluster, NAME) if e["reason"] == "InvalidSpec"]) == posted
        assert live(cluster, DEPLOYMENTS, NAME) is None

        await _patch_ssd(cluster, {"spec": {"replicas": {"min": 1}}})
        await eventually(lambda: _all_children(cluster))
        await eventually(lambda: live(cluster, SSD, NAME)["status"]["phase"] == "Progressing")


async def test_servicemonitor_only_when_its_crd_exists(
    cluster: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    add_servicemonitor_crd(cluster)
    # What the chart sets by default (monitoring.labels), read when the operator starts.
    monkeypatch.setenv("SPECSERVE_MONITOR_LABELS", '{"release":"kube-prometheus-stack"}')
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        sm = await eventually(lambda: live(cluster, SERVICEMONITORS, NAME))
        assert sm["metadata"]["ownerReferences"][0]["uid"] == UID
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert {e["port"] for e in sm["spec"]["endpoints"]} == {"http", "control"}
        await create(cluster, ssd("no-monitor", {**SPEC, "metrics": {"serviceMonitor": False}}))
        await eventually(lambda: live(cluster, DEPLOYMENTS, "no-monitor"))
        assert live(cluster, SERVICEMONITORS, "no-monitor") is None


async def test_every_malformed_resource_is_rejected_with_a_message(cluster: Any) -> None:
    """All malformed specs at once, through the running operator: status and a Warning event."""
    names = {f"bad-{i:02d}": (case_id, message) for i, (case_id, _, message, _) in enumerate(CASES)}
    async with running_operator():
        for name, (_, spec, _, _) in zip(names, CASES, strict=True):
            await create(cluster, ssd(name, spec))

        def all_invalid() -> bool:
            return all(
                (live(cluster, SSD, n).get("status") or {}).get("phase") == "Invalid"
                for n in names)

        # 49 resources, one status PATCH each: about 30 s on an idle 2-core machine.
        await eventually(all_invalid, timeout=120)
        for name, (case_id, message) in names.items():
            status = live(cluster, SSD, name)["status"]
            assert message in status["message"], case_id
            ready = next(c for c in status["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "InvalidSpec" and message in ready["message"], case_id
            warnings = [e for e in events(cluster, name) if e["reason"] == "InvalidSpec"]
            assert warnings and warnings[0]["type"] == "Warning", case_id
            assert message in warnings[0]["message"], case_id
        assert count(cluster, DEPLOYMENTS) == 0
        assert count(cluster, SECRETS) == 0


async def test_a_deployment_of_the_name_that_is_not_ours_is_left_alone(cluster: Any) -> None:
    """Another workload named like the resource's Deployment (issue #24): the operator never
    writes it, reports NameConflict in .status with a Warning event, and makes the rest."""
    theirs = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": NAME, "namespace": NS, "uid": "uid-theirs",
                           "labels": {"app": "billing"}},
              "spec": {"replicas": 5, "selector": {"matchLabels": {"app": "billing"}},
                       "template": {"metadata": {"labels": {"app": "billing"}},
                                    "spec": {"containers": [{"name": "app",
                                                             "image": "billing:1"}]}}}}
    cluster.objects[DEPLOYMENTS, NS, NAME] = theirs
    async with running_operator():
        await create(cluster, ssd(NAME, SPEC, UID))
        st = await eventually(lambda: (x := live(cluster, SSD, NAME)["status"])
                              and any(c["type"] == "NameConflict" and c["status"] == "True"
                                      for c in x["conditions"]) and x)
        await eventually(lambda: all(live(cluster, r, n) for r, n in CHILDREN[1:]))
        await asyncio.sleep(1.5)
        warned = len([e for e in events(cluster, NAME) if e.get("reason") == "NameConflict"])
        await asyncio.sleep(2)  # more status passes (1 s apart in tests): no more warnings
    assert live(cluster, DEPLOYMENTS, NAME) == theirs
    assert versions(cluster, DEPLOYMENTS, NAME) == 1
    (cond,) = [c for c in st["conditions"] if c["type"] == "NameConflict"]
    assert "Deployment chat" in cond["message"]
    assert "not owned by any SpecServeDeployment" in cond["message"]
    assert st["phase"] == "Degraded"
    warnings = [e for e in events(cluster, NAME) if e.get("reason") == "NameConflict"]
    # Posted until the condition is in .status (the create handler and the first timer pass
    # may both), then never again.
    assert 1 <= len(warnings) == warned <= 2 and warnings[0]["type"] == "Warning"
