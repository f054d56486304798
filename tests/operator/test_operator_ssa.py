"""Children are written by server-side apply (issue #24): a field removed from the spec leaves
the child, fields others add (defaulting, admission webhooks) never cause a write, a restart
with nothing changed writes nothing, and an object of a child's name that this resource does
not control is never written (NameConflict). kmock neither removes fields nor tracks field
ownership, so these run against `tests.kits.apiserver.MemoryApiServer`, which does."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from specserve_contract import API_VERSION, KIND
from specserve_operator import diff, manifests, names, reconcile, slo_loop
from specserve_operator.kube_client import FIELD_MANAGER, KubeError
from specserve_operator.spec import parse_spec
from tests.kits.apiserver import MemoryApiServer
from tests.kits.malformed_specs import VALID

OWNER = names.Owner(name="chat", namespace="prod", uid="uid-chat")
OTHER = names.Owner(name="chat", namespace="prod", uid="uid-someone-else")


class Log:
    def info(self, *_: Any) -> None: ...
    def warning(self, *_: Any) -> None: ...


@pytest.fixture(autouse=True)
def _events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """No kopf operator runs here: events are recorded as (type, reason)."""
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(reconcile.kopf, "event",
                        lambda *_, type, reason, **__: seen.append((type, reason)))
    monkeypatch.setattr(reconcile.kopf, "warn",
                        lambda *_, reason, **__: seen.append(("Warning", reason)))
    return seen


def _spec(**changes: Any) -> Any:
    raw = copy.deepcopy(VALID)
    raw.update(changes)
    return parse_spec(raw)


def _pass(api: MemoryApiServer, spec: Any, status: dict[str, Any] | None = None) -> Any:
    return reconcile.reconcile_children(api, OWNER, spec, {}, Log(),  # type: ignore[arg-type]
                                        status=status)


def _pod(api: MemoryApiServer) -> dict[str, Any]:
    return api.objects[("Deployment", names.deployment_name(OWNER))]["spec"]["template"]["spec"]


def _engine(api: MemoryApiServer) -> dict[str, Any]:
    return next(c for c in _pod(api)["containers"] if c["name"] == "engine")


# ----------------------------------------------------------------------------- the kit


def _cm(data: dict[str, str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "x", "namespace": "prod", "labels": labels or {}},
            "data": data}


def test_the_kit_applies_like_the_api_server() -> None:
    """KEP-555 / structured-merge-diff, as tests/kits/apiserver.py encodes them."""
    api = MemoryApiServer()
    api.apply(_cm({"a": "1", "b": "2"}, {"app": "x"}), "op")  # an apply creates
    api.patch("v1", "ConfigMap", "prod", "x", {"data": {"c": "3"}}, manager="someone")
    # Fields the manager no longer applies go; another manager's stay.
    api.apply(_cm({"a": "1"}, {"app": "x"}), "op")
    assert api.objects[("ConfigMap", "x")]["data"] == {"a": "1", "c": "3"}
    # Changing a field someone else owns: 409, unless forced (it moves to the applier).
    api.patch("v1", "ConfigMap", "prod", "x", {"data": {"a": "edited"}}, manager="kubectl-edit")
    with pytest.raises(KubeError) as err:
        api.apply(_cm({"a": "1"}, {"app": "x"}), "op")
    assert err.value.status == 409 and 'conflict with "kubectl-edit": .data.a' in str(err.value)
    api.apply(_cm({"a": "1"}, {"app": "x"}), "op", force=True)
    stored = api.objects[("ConfigMap", "x")]
    assert stored["data"] == {"a": "1", "c": "3"}
    owners = {e["manager"]: e["fieldsV1"] for e in stored["metadata"]["managedFields"]}
    assert owners["op"]["f:data"] == {".": {}, "f:a": {}}
    assert owners["someone"]["f:data"] == {"f:c": {}}  # data was there: not its map
    assert "kubectl-edit" not in owners  # it owned nothing any more


def test_the_kit_merges_keyed_lists_by_key() -> None:
    """containers by name, env by name, ports by (containerPort, protocol): an item another
    manager added stays when the applier sends its own; atomic lists (args) are replaced."""
    api = MemoryApiServer()
    dep = manifests.deployment(OWNER, _spec())
    api.apply(dep, "op")
    pod = copy.deepcopy(dep["spec"]["template"]["spec"])
    pod["containers"].append({"name": "sidecar", "image": "proxy:1"})
    api.patch("apps/v1", "Deployment", "prod", "chat", {"spec": {"template": {"spec": pod}}},
              manager="injector")
    smaller = copy.deepcopy(dep)
    smaller["spec"]["template"]["spec"]["containers"][0]["args"] = ["--x"]
    api.apply(smaller, "op")
    containers = _pod(api)["containers"]
    assert [c["name"] for c in containers] == ["engine", "sidecar"]
    assert containers[0]["args"] == ["--x"]


# ------------------------------------------------------------------- fields removed (item 1)


REMOVALS = {
    "env var": ({"pod": {"env": [{"name": "EXTRA", "value": "1"}]}}, {},
                lambda api: {e["name"] for e in _engine(api).get("env", [])}, "EXTRA"),
    "node selector": ({"resources": {"nodeSelector": {"pool": "h100"}}}, {},
                      lambda api: set(_pod(api).get("nodeSelector", {})), "pool"),
    "toleration": ({"resources": {"tolerations": [{"key": "spot", "operator": "Exists"}]}}, {},
                   lambda api: {t["key"] for t in _pod(api).get("tolerations", [])}, "spot"),
    "memory limit": ({"resources": {"memory": "16Gi"}}, {},
                     lambda api: set(_engine(api)["resources"].get("limits", {})), "memory"),
    "pod label": ({"pod": {"labels": {"team": "search"}}}, {},
                  lambda api: set(api.objects[("Deployment", "chat")]["spec"]["template"][
                      "metadata"]["labels"]), "team"),
}


@pytest.mark.parametrize("name", list(REMOVALS))
def test_a_field_removed_from_the_spec_leaves_the_deployment(name: str) -> None:
    with_it, without, present, field = REMOVALS[name]
    api = MemoryApiServer(defaulting=True)
    _pass(api, _spec(**with_it))
    assert field in present(api)
    api.writes.clear()
    _pass(api, _spec(**without))
    assert [(v, k) for v, k, *_ in api.writes] == [("apply", "Deployment")]
    assert field not in present(api)
    api.writes.clear()
    _pass(api, _spec(**without))
    assert api.writes == []


def test_the_applied_fields_fingerprint_changes_with_the_set_of_fields_only() -> None:
    one = manifests.deployment(OWNER, _spec(resources={"nodeSelector": {"pool": "a"}}))
    other_value = manifests.deployment(OWNER, _spec(resources={"nodeSelector": {"pool": "b"}}))
    fewer = manifests.deployment(OWNER, _spec())
    assert diff.fingerprint(one) == diff.fingerprint(other_value)
    assert diff.fingerprint(one) != diff.fingerprint(fewer)


# ------------------------------------------------------- admission, restarts, drift, scale


def test_fields_added_by_admission_cause_no_write() -> None:
    """A sidecar injector and a policy engine (Kyverno) add a container, a volume, labels and
    an annotation: the next passes write nothing, and the additions stay."""
    api = MemoryApiServer(defaulting=True)
    spec = _spec()
    _pass(api, spec)
    pod = copy.deepcopy(_pod(api))
    pod["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.24"})
    pod["volumes"].append({"name": "istio-envoy", "emptyDir": {}})
    api.patch("apps/v1", "Deployment", "prod", "chat", {
        "metadata": {"labels": {"policy.example.com/checked": "true"},
                     "annotations": {"sidecar.istio.io/status": "injected"}},
        "spec": {"template": {"metadata": {"labels": {"security.istio.io/tlsMode": "istio"}},
                              "spec": pod}}}, manager="admission")
    api.patch("v1", "Service", "prod", "chat",
              {"metadata": {"labels": {"policy.example.com/checked": "true"}}},
              manager="kyverno")
    api.writes.clear()
    for _ in range(3):
        _pass(api, spec)
    assert api.writes == []
    assert [c["name"] for c in _pod(api)["containers"]] == ["engine", "istio-proxy"]
    # A spec change is still applied, and keeps what admission added.
    _pass(api, _spec(resources={"nodeSelector": {"pool": "h100"}}))
    assert [c["name"] for c in _pod(api)["containers"]] == ["engine", "istio-proxy"]
    assert api.objects[("Service", "chat")]["metadata"]["labels"][
        "policy.example.com/checked"] == "true"


def test_a_restart_with_nothing_changed_writes_nothing() -> None:
    """A new process (nothing in memory: every child read with a GET) finds everything in sync,
    in every kind."""
    api = MemoryApiServer(defaulting=True)
    spec = _spec()
    _pass(api, spec)
    assert {k for v, k, *_ in api.writes if v == "apply"} == {
        "Deployment", "Service", "ConfigMap", "PodDisruptionBudget"}
    api.writes.clear()
    _pass(api, spec)
    assert api.writes == []


def test_an_edit_of_an_operator_field_is_undone_and_ownership_shown() -> None:
    api = MemoryApiServer(defaulting=True)
    spec = _spec()
    _pass(api, spec)
    pod = copy.deepcopy(_pod(api))
    pod["containers"][0]["args"] = ["--edited"]
    api.patch("apps/v1", "Deployment", "prod", "chat", {"spec": {"template": {"spec": pod}}},
              manager="kubectl-edit")
    api.writes.clear()
    _pass(api, spec)
    assert [(v, k) for v, k, *_ in api.writes] == [("apply", "Deployment")]
    assert _engine(api)["args"] == manifests.deployment(OWNER, spec)["spec"]["template"][
        "spec"]["containers"][0]["args"]
    managers = {e["manager"] for e in api.objects[("Deployment", "chat")]["metadata"][
        "managedFields"]}
    assert FIELD_MANAGER in managers


def test_the_slo_loops_scale_is_neither_fought_nor_reverted() -> None:
    """builtin mode: the SLO loop scales the Deployment (a merge patch of spec.replicas) after
    writing its decision to .status; the next reconcile pass applies the same count, so it
    writes nothing and the count stays."""
    api = MemoryApiServer(defaulting=True)
    spec = _spec(replicas={"min": 1, "max": 4, "initial": 1})
    _pass(api, spec)
    status = {"autoscale": {"mode": "builtin", "desired": 3}}
    api.patch("apps/v1", "Deployment", "prod", "chat", {"spec": {"replicas": 3}})
    api.writes.clear()
    _pass(api, spec, status)
    assert api.writes == []
    assert api.objects[("Deployment", "chat")]["spec"]["replicas"] == 3


# ------------------------------------------------------------------ foreign objects (item 2)


def _foreign(kind: str, owner_ref: str) -> dict[str, Any]:
    """An object of a child's name: another SpecServeDeployment's, another controller's, or
    nobody's."""
    spec = _spec()
    obj = {"Deployment": manifests.deployment, "Service": manifests.service}.get(
        kind, lambda o, s: manifests.configmap(o, s, {"version": 9, "mine": False}))(OTHER, spec)
    meta = obj["metadata"]
    if owner_ref == "none":
        meta.pop("ownerReferences")
    elif owner_ref == "replicaset":
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                    "name": "web", "uid": "uid-rs", "controller": True}]
    meta["labels"] = {"app": "someone-elses"}
    return obj


FOREIGN = [("Deployment", "ssd"), ("Deployment", "none"), ("Service", "replicaset"),
           ("ConfigMap", "none")]


@pytest.mark.parametrize(("kind", "owner_ref"), FOREIGN)
def test_an_object_the_resource_does_not_own_is_never_written(
        kind: str, owner_ref: str, _events: list[tuple[str, str]]) -> None:
    api = MemoryApiServer(defaulting=True)
    obj = _foreign(kind, owner_ref)
    name = obj["metadata"]["name"]
    api.put(obj)
    api.put({"apiVersion": API_VERSION, "kind": KIND,
             "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid,
                          "generation": 1},
             "spec": VALID, "status": {}})
    before = copy.deepcopy(api.objects[(kind, name)])
    body = api.get(API_VERSION, KIND, OWNER.namespace, OWNER.name)
    for _ in range(2):
        body = api.get(API_VERSION, KIND, OWNER.namespace, OWNER.name)
        reconcile.reconcile(api, body, body["metadata"], body["status"], OWNER.namespace,
                            OWNER.name, OWNER.uid, None, Log())  # type: ignore[arg-type]
    assert api.objects[(kind, name)] == before  # byte-identical
    assert not [w for w in api.writes if w[1] == kind and w[0] != "create"]
    status = api.objects[(KIND, OWNER.name)]["status"]
    (cond,) = [c for c in status["conditions"] if c["type"] == "NameConflict"]
    assert cond["status"] == "True"
    assert f"{kind} {name}" in cond["message"]
    holder = {"ssd": f"owned by SpecServeDeployment chat (uid {OTHER.uid})",
              "none": "not owned by any SpecServeDeployment",
              "replicaset": "controlled by ReplicaSet web"}[owner_ref]
    assert holder in cond["message"]
    assert status["phase"] == "Degraded"
    assert _events.count(("Warning", "NameConflict")) == 1  # once, not on every pass
    # The other children are reconciled all the same.
    made = {k for (k, _), o in api.objects.items() if names.owned_by(o, OWNER)}
    assert made == {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget",
                    "Secret"} - {kind}


def test_the_conflict_clears_once_the_name_is_free() -> None:
    api = MemoryApiServer(defaulting=True)
    api.put(_foreign("Deployment", "none"))
    api.put({"apiVersion": API_VERSION, "kind": KIND,
             "metadata": {"name": OWNER.name, "namespace": OWNER.namespace, "uid": OWNER.uid},
             "spec": VALID, "status": {}})

    def run() -> dict[str, Any]:
        body = api.get(API_VERSION, KIND, OWNER.namespace, OWNER.name)
        reconcile.reconcile(api, body, body["metadata"], body["status"], OWNER.namespace,
                            OWNER.name, OWNER.uid, None, Log())  # type: ignore[arg-type]
        status = api.objects[(KIND, OWNER.name)]["status"]
        return {c["type"]: c["status"] for c in status["conditions"]}

    assert run()["NameConflict"] == "True"
    api.delete("apps/v1", "Deployment", "prod", "chat")
    assert run()["NameConflict"] == "False"
    assert names.owned_by(api.objects[("Deployment", "chat")], OWNER)


async def test_the_slo_loop_never_scales_or_tunes_a_foreign_object() -> None:
    api = MemoryApiServer()
    dep = _foreign("Deployment", "none")
    api.put(dep)
    cm = _foreign("ConfigMap", "none")
    api.put(cm)
    spec = _spec(autoscaling={"mode": "builtin"}, replicas={"min": 1, "max": 4, "initial": 1})
    status = {"autoscale": {"mode": "builtin", "desired": 3}}
    assert await slo_loop.apply_scale(api, OWNER, spec, status) is None  # type: ignore[arg-type]
    assert slo_loop.update_policy_sync(api, OWNER, lambda p: p) is None  # type: ignore[arg-type]
    assert await slo_loop.read_policy(api, OWNER) is None  # type: ignore[arg-type]
    assert api.writes == []
