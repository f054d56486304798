"""RouteConflict: one rule (`specserve_contract.claims`) for who holds a served model name, used
by the gateway (routes the bare name to the first claim) and the operator (the condition)."""

from __future__ import annotations

from typing import Any

import pytest

from specserve_contract import API_VERSION, KIND, PLURAL
from specserve_contract.claims import claim_record, conflict_for, name_claims
from specserve_gateway.kube_routes import table_from_cluster
from specserve_operator.names import Owner
from specserve_operator.reconcile import route_holder
from specserve_operator.spec import parse_spec
from specserve_operator.status import running_status
from tests.kits.operator_kit import NS, SSD, eventually, running_operator

SPEC: dict[str, Any] = {
    "model": {"target": "org/target-1b", "draft": "org/draft-100m", "servedName": "shared"},
    "replicas": {"min": 1, "max": 1, "initial": 1},
    "autoscaling": {"mode": "off"},
}


def res(ns: str, name: str, created: str | None, served: str | None = "shared"
        ) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "uid": f"uid-{ns}-{name}"}
    if created:
        meta["creationTimestamp"] = created
    model = {"servedName": served} if served else {}
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
            "spec": {"model": model}}


def holders(ssds: list[dict[str, Any]]) -> dict[tuple[str, str], str | None]:
    out = {}
    for s in ssds:
        found = conflict_for(ssds, s["metadata"]["namespace"], s["metadata"]["name"])
        out[s["metadata"]["namespace"], s["metadata"]["name"]] = found.holder if found else None
    return out


# ---------------------------------------------------------------------- the rule, pure


def test_first_claim_by_creation_time_then_namespace_then_name() -> None:
    ssds = [res("b", "late", "2026-01-03T00:00:00Z"), res("a", "early", "2026-01-01T00:00:00Z"),
            res("c", "tie", "2026-01-01T00:00:00Z"), res("d", "unstamped", None)]
    (listed,) = name_claims(ssds).values()
    assert [c.namespace for c in listed] == ["a", "c", "b", "d"]
    assert holders(ssds) == {("a", "early"): None, ("b", "late"): "a/early",
                             ("c", "tie"): "a/early", ("d", "unstamped"): "a/early"}


def test_one_namespace_pools_and_other_names_do_not_conflict() -> None:
    ssds = [res("a", "one", "2026-01-01T00:00:00Z"), res("a", "two", "2026-01-05T00:00:00Z"),
            res("b", "mine", "2026-01-02T00:00:00Z", served=None),  # serves "mine"
            res("c", "other", "2026-01-03T00:00:00Z", served="other")]
    assert holders(ssds) == {("a", "one"): None, ("a", "two"): None, ("b", "mine"): None,
                             ("c", "other"): None}
    assert conflict_for(ssds, "z", "absent") is None


def test_claim_records_decide_like_whole_resources() -> None:
    ssds = [res("b", "late", "2026-01-03T00:00:00Z"), res("a", "early", "2026-01-01T00:00:00Z"),
            res("a", "default-name", "2026-01-02T00:00:00Z", served=None)]
    assert holders([claim_record(s) for s in ssds]) == holders(ssds)
    assert claim_record(ssds[2])["spec"]["model"]["servedName"] == "default-name"


def test_the_gateway_and_the_operator_agree() -> None:
    ssds = [res("b", "late", "2026-01-03T00:00:00Z"), res("a", "early", "2026-01-01T00:00:00Z"),
            res("c", "later", "2026-01-04T00:00:00Z"), res("a", "x", "2026-01-02T00:00:00Z",
                                                           served="solo")]
    table = table_from_cluster(ssds, [])
    gateway = {(c.namespace, name) for c in table.conflicts for name in c.names}
    operator = {key for key, holder in holders(ssds).items() if holder}
    assert gateway == operator == {("b", "late"), ("c", "later")}
    assert {c.holder for c in table.conflicts} == {"a/early"}


def test_route_holder_adds_the_resource_itself_and_the_condition() -> None:
    late = res("b", "late", "2026-01-03T00:00:00Z")
    early = res("a", "early", "2026-01-01T00:00:00Z")
    # The index may not hold the resource yet (or holds an older copy): its own body counts.
    assert route_holder(late, [claim_record(early)]) == "a/early"
    assert route_holder(early, [claim_record(late)]) is None
    assert route_holder(late, None) is None  # no index: no claim known, no condition True
    spec = parse_spec(SPEC)

    def cond(holder: str | None) -> dict[str, Any]:
        st = running_status(spec, Owner("late", "b", "u"), None, 1, {}, "t", 1, [], holder)
        (c,) = [c for c in st["conditions"] if c["type"] == "RouteConflict"]
        return c

    taken = cond("a/early")
    assert (taken["status"], taken["reason"]) == ("True", "ServedNameTaken")
    assert "a/early" in taken["message"] and "b/shared" in taken["message"]
    assert cond(None)["status"] == "False"


# -------------------------------------------------------------- the operator, in kmock

NS2 = "ns2"


def _path(ns: str) -> str:
    return f"/apis/{API_VERSION}/namespaces/{ns}/{PLURAL}"


def _route_condition(kmock: Any, ns: str, name: str) -> dict[str, Any] | None:
    try:
        obj = kmock.objects[SSD, ns, name]
    except KeyError:
        return None
    for c in (dict(obj.raw).get("status") or {}).get("conditions") or []:
        if c["type"] == "RouteConflict":
            return c
    return None


@pytest.mark.asyncio
async def test_the_later_claim_of_a_served_name_gets_route_conflict(cluster: Any) -> None:
    early = {**res(NS2, "early", "2026-01-01T00:00:00Z"), "spec": SPEC}
    late = {**res(NS, "late", "2026-01-02T00:00:00Z"), "spec": SPEC}
    for body in (early, late):
        body["metadata"].update(generation=1, resourceVersion="1")
    async with running_operator((NS, NS2)):
        for body in (late, early):  # the later claim arrives first: the order is by timestamp
            response = await cluster.post(_path(body["metadata"]["namespace"]), json=body)
            assert response.status < 300, await response.text()
        taken = await eventually(lambda: (c := _route_condition(cluster, NS, "late"))
                                 and c["status"] == "True" and c, timeout=30)
        held = await eventually(lambda: (c := _route_condition(cluster, NS2, "early"))
                                and c["status"] == "False" and c, timeout=30)
    assert taken["reason"] == "ServedNameTaken"
    assert f"{NS2}/early" in taken["message"]
    assert held["reason"] == "ServedNameHeld"
