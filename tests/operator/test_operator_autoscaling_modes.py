"""spec.autoscaling.mode against the kmock emulator: builtin (the operator scales the Deployment,
never the spec, and its drift repair keeps the loop's count), external (a recommendation in
.status and /metrics; the Deployment follows spec.replicas.initial, the HPA's field) and off.

The SLO loop runs for real; only its Prometheus snapshot is replaced by a busy one (more load
than one replica serves at the SLO), so every pass wants more replicas.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

# Read when the operator starts; kopf keeps the first timer intervals of the process (as in
# test_operator_slo_loop.py): SLO passes every 2 s (status passes every 1 s: conftest.py).
os.environ.setdefault("SPECSERVE_SLO_INTERVAL_S", "2")

import pytest

from specserve_contract.metrics import OPERATOR_DESIRED_REPLICAS
from specserve_operator import handlers, metrics, reconcile, slo_loop, tuning
from specserve_operator.config import LoopConfig
from specserve_operator.names import Owner
from specserve_operator.prometheus import SloSnapshot
from specserve_operator.spec import parse_spec
from tests.kits.operator_kit import (
    DEPLOYMENTS,
    NS,
    SSD,
    SSD_PATH,
    create,
    eventually,
    live,
    running_operator,
    ssd,
)

NAME = "auto"
UID = "uid-auto"
OWNER = Owner(NAME, NS, UID)


def spec_in(mode: str, initial: int = 1) -> dict[str, Any]:
    return {"model": {"target": "org/target-1b", "draft": "org/draft-100m"},
            "replicas": {"min": 1, "max": 3, "initial": initial},
            "autoscaling": {"mode": mode}}


@pytest.fixture()
def busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every SLO pass sees far more load than one replica serves (the operator runs in this
    process, so replacing the snapshot step takes effect)."""

    async def snapshot(owner: Owner, *_: Any) -> SloSnapshot:
        return SloSnapshot(namespace=owner.namespace, name=owner.name, time=0.0, window="60s",
                           state="ok", request_rate=500.0, attainment=0.2, tpot_p90_s=1.0,
                           ttft_p90_s=10.0)

    monkeypatch.setattr(slo_loop, "take_snapshot", snapshot)
    monkeypatch.setattr(handlers.RUNTIME, "loop_override", LoopConfig(
        retries=1, push_timeout_s=1.0, tuning=tuning.TuningConfig(cooldown_s=0.0)))


def replicas(kmock: Any) -> int:
    return int(live(kmock, DEPLOYMENTS, NAME)["spec"]["replicas"])


def autoscale(kmock: Any) -> dict[str, Any]:
    return ((live(kmock, SSD, NAME) or {}).get("status") or {}).get("autoscale") or {}


def deployment_history(kmock: Any) -> list[int]:
    """Every replica count the Deployment was stored with, oldest first."""
    return [int((dict(v) or {}).get("spec", {}).get("replicas", 0))
            for v in kmock.objects[DEPLOYMENTS, NS, NAME].history if v is not None]


def spec_writes(kmock: Any) -> list[Any]:
    """Writes to the resource itself (not /status) that carry a spec: the test's own only."""
    return [r for r in kmock[kmock.method.PATCH] if r.resource is not None
            and r.resource.plural == SSD.rsplit("/", 1)[1] and r.subresource is None
            and "spec" in (r.data or {})]


async def patch_spec(kmock: Any, spec: dict[str, Any]) -> None:
    """As `kubectl scale ssd/NAME` / `kubectl patch` would (kmock has no scale subresource
    mapping: the specReplicasPath is written directly)."""
    response = await kmock.patch(f"{SSD_PATH}/{NAME}", json={"spec": spec},
                                 headers={"Content-Type": "application/merge-patch+json"})
    assert response.status < 300, await response.text()


async def test_builtin_scales_the_deployment_and_never_writes_the_spec(
        cluster: Any, busy: None) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, spec_in("builtin"), UID))
        # 1 -> 2 -> 3 (a step up is at most x2), bounded by max 3.
        await eventually(lambda: autoscale(cluster)["desired"] == 3
                         and autoscale(cluster)["mode"] == "builtin", 30)
        await eventually(lambda: replicas(cluster) == 3, 10)
        await asyncio.sleep(3)  # three status passes (drift repair) and an SLO pass
        assert replicas(cluster) == 3
        history = deployment_history(cluster)
        assert history == sorted(history), f"the Deployment's count went back: {history}"
        assert live(cluster, SSD, NAME)["spec"]["replicas"]["initial"] == 1
        assert spec_writes(cluster) == []
        assert live(cluster, SSD, NAME)["status"]["replicas"]["desired"] == 3

        # `kubectl scale ssd/auto --replicas=2` once the loop has decided: no effect on pods.
        await patch_spec(cluster, {"replicas": {"initial": 2}})
        await asyncio.sleep(3)
        assert replicas(cluster) == 3
        # Bounds still bound it, at once (reconcile on the spec change).
        await patch_spec(cluster, {"replicas": {"max": 2, "initial": 1}})
        await eventually(lambda: replicas(cluster) == 2, 10)
        # Switched off: the Deployment follows spec.replicas.initial.
        await patch_spec(cluster, {"autoscaling": {"mode": "off"}})
        await eventually(lambda: replicas(cluster) == 1, 10)
        await eventually(lambda: autoscale(cluster)["mode"] == "off", 10)
        await asyncio.sleep(2.5)
        assert replicas(cluster) == 1
        assert "autoscaling off" in autoscale(cluster)["reason"]


async def test_external_exports_the_recommendation_and_follows_spec_replicas(
        cluster: Any, busy: None) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, spec_in("external"), UID))
        await eventually(lambda: autoscale(cluster)["mode"] == "external"
                         and autoscale(cluster)["desired"] > 1, 30)
        assert autoscale(cluster)["reason"].startswith("external (the HPA/KEDA applies it)")
        value = metrics.REGISTRY.get_sample_value(OPERATOR_DESIRED_REPLICAS,
                                                  {"namespace": NS, "name": NAME})
        assert value is not None and value > 1
        await asyncio.sleep(3)
        assert set(deployment_history(cluster)) == {1}  # the operator never scales
        # The HPA (or KEDA) acts through the scale subresource: spec.replicas.initial.
        await patch_spec(cluster, {"replicas": {"initial": 3}})
        await eventually(lambda: replicas(cluster) == 3, 10)
        await asyncio.sleep(2.5)
        assert replicas(cluster) == 3
        assert len(spec_writes(cluster)) == 1  # the test's own
        # Deleted: its series leaves the operator's /metrics.
        response = await cluster.delete(f"{SSD_PATH}/{NAME}")
        assert response.status < 300, await response.text()
        await eventually(lambda: metrics.REGISTRY.get_sample_value(
            OPERATOR_DESIRED_REPLICAS, {"namespace": NS, "name": NAME}) is None, 20)


async def test_off_keeps_spec_replicas_and_follows_kubectl_scale(
        cluster: Any, busy: None) -> None:
    async with running_operator():
        await create(cluster, ssd(NAME, spec_in("off", initial=2), UID))
        await eventually(lambda: "autoscaling off" in autoscale(cluster)["reason"], 30)
        assert (autoscale(cluster)["desired"], autoscale(cluster)["mode"]) == (2, "off")
        assert set(deployment_history(cluster)) == {2}
        await patch_spec(cluster, {"replicas": {"initial": 3}})
        await eventually(lambda: replicas(cluster) == 3, 10)


# ------------------------------------------------- reconcile never undoes the loop's newest scale


class Api:
    """get/patch on objects keyed by kind; the resource as the API server stores it now."""

    def __init__(self, resource_status: dict[str, Any]) -> None:
        self.resource = {"status": resource_status}
        self.gets: list[str] = []

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        self.gets.append(kind)
        return self.resource


@pytest.mark.parametrize(("seen", "stored", "deployment", "want", "reads"), [
    # The watch's view is older than the Deployment the loop just scaled: read again, keep 3.
    ({"autoscale": {"mode": "builtin", "desired": 2}},
     {"autoscale": {"mode": "builtin", "desired": 3}}, 3, 3, 1),
    # Someone scaled the Deployment by hand: the decision stands, drift is repaired.
    ({"autoscale": {"mode": "builtin", "desired": 2}},
     {"autoscale": {"mode": "builtin", "desired": 2}}, 3, 2, 1),
    # In step: no extra read.
    ({"autoscale": {"mode": "builtin", "desired": 3}}, {}, 3, 3, 0),
    # No Deployment yet: created with what the view says.
    ({"autoscale": {"mode": "builtin", "desired": 2}}, {}, None, 2, 0),
])
def test_drift_repair_reads_the_decision_again_before_changing_replicas(
        seen: dict[str, Any], stored: dict[str, Any], deployment: int | None, want: int,
        reads: int) -> None:
    spec = parse_spec(spec_in("builtin"))
    api = Api(stored)
    current = None if deployment is None else {"spec": {"replicas": deployment}}
    assert reconcile.engine_replicas(api, OWNER, spec, seen, current) == want  # type: ignore[arg-type]
    assert len(api.gets) == reads
