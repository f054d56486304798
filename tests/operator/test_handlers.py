"""The operator against the kmock Kubernetes emulator: create, update, delete, restart, status."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NS,
    SECRETS,
    SERVICEMONITORS,
    SERVICES,
    SSD,
    SSD_PATH,
    add_servicemonitor_crd,
    count,
    create,
    events,
    eventually,
    live,
    running_operator,
    ssd,
    versions,
)

from specserve_operator import manifests as m

pytestmark = pytest.mark.asyncio

SPEC: dict[str, Any] = {
    "model": {"target": "org/target-1b", "draft": "org/draft-100m"},
    "speculation": {"mode": "adaptive", "kMax": 4},
    "replicas": {"min": 1, "max": 3, "initial": 2},
}
NAME = "chat"
UID = "uid-chat"
CHILDREN = [
    (DEPLOYMENTS, NAME),
    (SERVICES, NAME),
    (SECRETS, f"{NAME}-control"),
    (CONFIGMAPS, f"{NAME}-policy"),
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
            assert refs == [m.owner_reference(m.Owner(NAME, NS, UID))], res
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
