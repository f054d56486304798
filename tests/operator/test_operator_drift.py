"""Drift detection against what a real API server stores: canonical quantities and server
defaults must not read as drift (else the operator patches and emits `Updated` on every status
pass), while a real difference still does."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes.utils.quantity import parse_quantity

from specserve_operator import diff, manifests, names, reconcile
from specserve_operator.spec import SpecServeDeploymentSpec, parse_spec
from tests.kits.apiserver import (
    Invalid,
    MemoryApiServer,
    as_stored,
    canonical_quantity,
    patched,
)
from tests.kits.malformed_specs import VALID

OWNER = names.Owner(name="chat", namespace="prod", uid="0b6c3f0e-uid")

# Sent -> stored, by the Kubernetes quantity canonicalisation rules (apimachinery quantity.go:
# decimal suffixes get the largest exponent that is a multiple of 3 and keeps the mantissa an
# integer; binary ones the largest power of 1024 that divides the value, decimal below 1024 or
# for a fractional number of bytes). These are the strings `kubectl get -o json` shows.
QUANTITY_FORMS = [
    # cpu-like (decimal)
    ("1.5", "1500m"), ("1500m", "1500m"), ("1000m", "1"), ("2000m", "2"), ("0.5", "500m"),
    ("0.1", "100m"), ("100m", "100m"), ("250m", "250m"), ("2", "2"), ("1.0", "1"),
    ("1000", "1k"), ("1500", "1500"), ("2000", "2k"), ("1.5M", "1500k"), ("0.0005", "500u"),
    ("0", "0"), ("0m", "0"), ("16", "16"),
    # memory-like (binary)
    ("1Gi", "1Gi"), ("0.5Gi", "512Mi"), ("1024Mi", "1Gi"), ("1536Mi", "1536Mi"),
    ("1.5Gi", "1536Mi"), ("2048Ki", "2Mi"), ("0.5Ki", "512"), ("1.5Ki", "1536"),
    ("16Gi", "16Gi"), ("1000Mi", "1000Mi"), ("64Gi", "64Gi"), ("0.25Ti", "256Gi"),
    # memory in decimal units stays decimal
    ("1G", "1G"), ("1000M", "1G"), ("1.5G", "1500M"), ("512M", "512M"),
]


def _spec(**changes: Any) -> SpecServeDeploymentSpec:
    raw = copy.deepcopy(VALID)
    raw.update(changes)
    return parse_spec(raw)


class RecordingApi:
    """A KubeClient stand-in: counts writes."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.creates: list[dict[str, Any]] = []

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append((kind, body))
        return body

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.creates.append(obj)
        return obj

    def apply(self, obj: dict[str, Any], field_manager: str, force: bool = False
              ) -> dict[str, Any]:
        self.patches.append((obj["kind"], obj))
        return obj


class Logger:
    def info(self, *_: Any) -> None:
        pass


@pytest.mark.parametrize(("sent", "stored"), QUANTITY_FORMS)
def test_the_kit_canonicalises_quantities_like_the_api_server(sent: str, stored: str) -> None:
    assert canonical_quantity(sent) == stored
    assert parse_quantity(sent) == parse_quantity(stored)  # same value, other text


@pytest.mark.parametrize(("sent", "stored"), [f for f in QUANTITY_FORMS if f[1] != "0"])
def test_canonical_quantities_are_not_drift(sent: str, stored: str) -> None:
    spec = _spec(resources={"cpu": sent, "cpuLimit": sent, "memory": sent, "gpu": 1})
    desired = manifests.deployment(OWNER, spec)
    current = as_stored(desired)
    c = current["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"] == {"cpu": stored, "memory": stored, "nvidia.com/gpu": "1"}
    assert diff.is_subset(desired, current)


def test_a_changed_quantity_is_drift() -> None:
    desired = manifests.deployment(OWNER, _spec(resources={"cpu": "1.5", "memory": "1Gi"}))
    for other in ({"cpu": "1", "memory": "1Gi"}, {"cpu": "1500m", "memory": "1G"}):
        current = as_stored(manifests.deployment(OWNER, _spec(resources=other)))
        assert not diff.is_subset(desired, current), other
    # A quantity map that lost a key (someone removed the limit) is drift too.
    current = as_stored(desired)
    del current["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert not diff.is_subset(desired, current)


def test_quantities_are_compared_only_in_resource_maps() -> None:
    # Elsewhere "1" and "1000m" are different strings (a label, an arg, an env value).
    assert not diff.is_subset({"metadata": {"labels": {"v": "1"}}},
                                   {"metadata": {"labels": {"v": "1000m"}}})
    assert diff.is_subset({"resources": {"limits": {"cpu": "1"}}},
                               {"resources": {"limits": {"cpu": "1000m"}}})
    assert not diff.is_subset({"resources": {"limits": {"cpu": "1"}}},
                                   {"resources": {"limits": {"cpu": "not-a-quantity"}}})


# Every pod-template field, in the forms a user writes and the API server rewrites: defaulted
# fields left out (fieldRef apiVersion, divisor, defaultMode, hostPath type, volumeMode,
# expirationSeconds), empty values it omits (readOnly: false, values: [], matchLabels: {}),
# quantities it canonicalises (sizeLimit, divisor, storage).
POD_TEMPLATE: dict[str, Any] = {
    "labels": {"team": "search", "example.com/tier": "gold"},
    "annotations": {"prometheus.io/scrape": "false", "example.com/note": ""},
    "env": [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                           "divisor": "1024Ki"}}},
        {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "EMPTY", "value": ""},
        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k",
                                                          "optional": False}}},
    ],
    "envFrom": [{"secretRef": {"name": "s3-credentials"}},
                {"prefix": "APP_", "configMapRef": {"name": "app", "optional": True}}],
    "imagePullSecrets": [{"name": "regcred"}],
    "priorityClassName": "inference-high",
    "runtimeClassName": "nvidia",
    "affinity": {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "gpu", "operator": "Exists", "values": []}]}]}},
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {
                "topologyKey": "kubernetes.io/hostname",
                "labelSelector": {"matchLabels": {}, "matchExpressions": [
                    {"key": "app", "operator": "In", "values": ["x"]}]}}}]},
    },
    "volumes": [
        {"name": "cache", "persistentVolumeClaim": {"claimName": "model-cache",
                                                    "readOnly": False}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "1.5Gi"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "certs", "secret": {"secretName": "ca", "optional": False}},
        {"name": "conf", "configMap": {"name": "conf", "items": [{"key": "a", "path": "a"}]}},
        {"name": "info", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "mem", "resourceFieldRef": {"containerName": "engine",
                                                 "resource": "limits.memory"}}]}},
        {"name": "bundle", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": "s3"}},
            {"configMap": {"name": "conf"}}]}},
        {"name": "host", "hostPath": {"path": "/var/cache/models"}},
        {"name": "eph", "ephemeral": {"volumeClaimTemplate": {"spec": {
            "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "0.5Ti"}}}}}},
    ],
    "volumeMounts": [
        {"name": "cache", "mountPath": "/root/.cache/huggingface"},
        {"name": "scratch", "mountPath": "/scratch", "readOnly": False},
        {"name": "certs", "mountPath": "/etc/ssl/extra", "readOnly": True},
        {"name": "conf", "mountPath": "/etc/app", "subPath": ""},
    ],
}

SPECS: dict[str, dict[str, Any]] = {
    "cpu-tiny": {"model": {"target": "tiny", "draft": "tiny"}},
    "defaults": {},
    "gpu": {"resources": {"gpu": 2, "cpu": "7.5", "memory": "0.5Ti",
                          "nodeSelector": {"pool": "h100"},
                          "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                                           "effect": "NoSchedule"},
                                          {"key": "spot", "operator": "Equal", "value": "",
                                           "effect": "NoExecute", "tolerationSeconds": 30}]},
            "replicas": {"min": 1, "max": 4, "initial": 2}},
    "pod-template": {"resources": {"gpu": 2, "gpuResourceName": "nvidia.com/mig-3g.40gb",
                                   "memory": "64Gi", "ephemeralStorage": "0.5Ti",
                                   "shmSize": "0.5Gi"},
                     "pod": POD_TEMPLATE},
    "pvc-profile": {"model": {"target": "llama", "draft": "llama-draft",
                              "pvc": {"claimName": "weights", "subPath": "hf"}},
                    "profile": {"configMap": {"name": "h100-profile"}},
                    "image": "registry.example.com/specserve/engine:latest",
                    "imagePullPolicy": "Always", "vllmArgs": ["--max-model-len", "4096"]},
}


@pytest.mark.parametrize("name", list(SPECS))
def test_objects_as_the_api_server_returns_them_are_in_sync(name: str) -> None:
    """A pass over children the server has defaulted writes nothing and emits no event."""
    spec = _spec(**SPECS[name])
    api = RecordingApi()
    body: dict[str, Any] = {}
    policy = manifests.policy_from_spec(spec, 1)
    children = (manifests.deployment(OWNER, spec), manifests.service(OWNER, spec),
                manifests.configmap(OWNER, spec, policy), manifests.servicemonitor(OWNER, spec),
                manifests.disruption_budget(OWNER, spec))
    for desired in children:
        stored = as_stored(diff.applied(desired))  # as the last apply left it
        assert stored != desired  # the server did add something
        assert reconcile.ensure(api, desired, stored, body, Logger()) == stored  # type: ignore[arg-type]
    assert api.patches == [] and api.creates == []


def test_a_stored_deployment_has_the_server_defaults_the_operator_does_not_set() -> None:
    """What the sync test above tolerates (the fields a real server adds)."""
    stored = as_stored(manifests.deployment(OWNER, _spec()))
    spec = stored["spec"]
    assert {"revisionHistoryLimit", "progressDeadlineSeconds", "strategy"} <= spec.keys()
    pod = spec["template"]["spec"]
    assert {"dnsPolicy", "restartPolicy", "schedulerName", "securityContext"} <= pod.keys()
    c = pod["containers"][0]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["terminationMessagePolicy"] == "File"
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTP"
    assert c["startupProbe"]["successThreshold"] == 1
    assert {v["name"]: v["configMap"].get("defaultMode") for v in pod["volumes"]
            if "configMap" in v} == {"policy": 420}
    svc = as_stored(manifests.service(OWNER, _spec()))["spec"]
    assert svc["sessionAffinity"] == "None" and svc["ipFamilies"] == ["IPv4"]
    assert svc["clusterIP"]


def test_tolerations_leave_out_what_the_server_drops() -> None:
    spec = _spec(resources={"tolerations": [{"key": "spot", "operator": "Equal", "value": ""}]})
    (tol,) = manifests.deployment(OWNER, spec)["spec"]["template"]["spec"]["tolerations"]
    assert tol == {"key": "spot", "operator": "Equal"}


def test_a_real_edit_of_a_stored_object_is_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec()
    desired = manifests.deployment(OWNER, spec)
    stored = as_stored(diff.applied(desired))
    stored["spec"]["template"]["spec"]["containers"][0]["args"][-1] = "9999"
    api = RecordingApi()
    events: list[str] = []
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, reason, **__: events.append(reason))
    reconcile.ensure(api, desired, stored, {}, Logger())  # type: ignore[arg-type]
    assert [kind for kind, _ in api.patches] == ["Deployment"] and events == ["Updated"]


# -------------------------------------------------------------------------------- rollouts


def _strategy(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    return manifests.deployment(OWNER, spec)["spec"]["strategy"]


def test_default_rollout_never_needs_a_spare_gpu() -> None:
    """No surge: a rollout stops an old pod before it starts a new one, so it never asks for
    more GPUs than `replicas` pods already hold (Kubernetes' default 25% surge would)."""
    for replicas in (1, 2, 8):
        spec = _spec(resources={"gpu": 1},
                     replicas={"min": 1, "max": 8, "initial": replicas})
        assert _strategy(spec) == {"type": "RollingUpdate",
                                   "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    assert _strategy(_spec(rollout={"strategy": "Recreate"})) == {"type": "Recreate"}
    assert _strategy(_spec(rollout={"maxSurge": 1, "maxUnavailable": 0}))["rollingUpdate"] == {
        "maxSurge": 1, "maxUnavailable": 0}


def test_progress_deadline_covers_the_start_budget() -> None:
    """A pod still inside its startup probe's budget must not read as a stuck rollout: the
    deadline is derived from the probes the Deployment actually carries."""
    for startup_spec in ({}, {"timeoutSeconds": 7200}):
        spec = _spec(resources={"gpu": 1}, startup=startup_spec)
        dep = manifests.deployment(OWNER, spec)
        c = dep["spec"]["template"]["spec"]["containers"][0]
        startup, readiness = c["startupProbe"], c["readinessProbe"]
        budget = (startup.get("initialDelaySeconds", 0)
                  + startup["periodSeconds"] * startup["failureThreshold"]
                  + readiness["periodSeconds"])
        deadline = dep["spec"]["progressDeadlineSeconds"]
        assert deadline >= budget == manifests.startup_budget_s(spec)
        assert deadline > 600  # Kubernetes' default: shorter than a large model's load
        assert deadline == manifests.progress_deadline_s(spec)


@pytest.mark.parametrize(("before", "after"), [
    ({}, {"strategy": "Recreate"}),
    ({"strategy": "Recreate"}, {}),
    ({}, {"maxSurge": 1, "maxUnavailable": 0}),
])
def test_changing_the_rollout_applies_a_valid_object_once(
    before: dict[str, Any], after: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Switching to Recreate must remove strategy.rollingUpdate, or the API server refuses
    the write (422) on every pass: server-side apply removes it (the operator set it before
    and no longer does), where a merge patch would have kept it."""
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = MemoryApiServer(defaulting=True)
    reconcile.reconcile_children(api, OWNER, _spec(rollout=before), {}, Logger())  # type: ignore[arg-type]
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, _spec(rollout=after), {}, Logger())  # type: ignore[arg-type]
    assert [(v, k) for v, k, *_ in api.writes] == [("apply", "Deployment")]
    desired = manifests.deployment(OWNER, _spec(rollout=after))
    stored = api.objects[("Deployment", names.deployment_name(OWNER))]
    assert stored["spec"]["strategy"] == as_stored(desired)["spec"]["strategy"]
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, _spec(rollout=after), {}, Logger())  # type: ignore[arg-type]
    assert api.writes == []


def test_the_kit_refuses_what_the_server_refuses() -> None:
    stored = as_stored(manifests.deployment(OWNER, _spec()))
    with pytest.raises(Invalid):
        patched(stored, {"spec": {"strategy": {"type": "Recreate"}}})


# ---------------------------------------------------------------------------- pod template


def test_the_kit_stores_pod_template_objects_as_the_api_server_does() -> None:
    """What the sync tests must tolerate, spelled out (sources in tests/kits/apiserver.py)."""
    spec = _spec(resources={"shmSize": "0.5Gi"}, pod=POD_TEMPLATE)
    pod = as_stored(manifests.deployment(OWNER, spec))["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "512Mi"}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "1536Mi"}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes["certs"]["secret"]["defaultMode"] == 420
    assert volumes["info"]["downwardAPI"]["items"][0]["fieldRef"]["apiVersion"] == "v1"
    assert volumes["info"]["downwardAPI"]["items"][1]["resourceFieldRef"]["divisor"] == "0"
    assert volumes["bundle"]["projected"]["defaultMode"] == 420
    assert volumes["bundle"]["projected"]["sources"][0]["serviceAccountToken"][
        "expirationSeconds"] == 3600
    assert volumes["host"]["hostPath"] == {"path": "/var/cache/models", "type": ""}
    claim = volumes["eph"]["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["volumeMode"] == "Filesystem" and claim["resources"]["requests"] == {
        "storage": "512Gi"}
    (c,) = pod["containers"]
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"] == {"fieldPath": "metadata.name",
                                                        "apiVersion": "v1"}
    assert env["MEM"]["valueFrom"]["resourceFieldRef"]["divisor"] == "1Mi"
    assert env["CPUS"]["valueFrom"]["resourceFieldRef"]["divisor"] == "0"
    assert env["EMPTY"] == {"name": "EMPTY"}


def test_pod_template_objects_are_sent_without_what_the_server_omits() -> None:
    """The operator sends pass-through objects as they read back (else: drift every pass)."""
    spec = _spec(pod=POD_TEMPLATE)
    pod = manifests.deployment(OWNER, spec)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}  # an empty struct is kept
    term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert "matchLabels" not in term["podAffinityTerm"]["labelSelector"]
    node_term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]
    assert node_term == {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
    (c,) = pod["containers"]
    assert {m["name"]: m for m in c["volumeMounts"]}["scratch"] == {
        "name": "scratch", "mountPath": "/scratch"}


@pytest.mark.parametrize("name", ["pod-template", "defaults", "gpu"])
def test_a_second_reconcile_pass_patches_nothing(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the whole child reconcile, against a store that keeps what a real API server
    keeps (defaults filled, quantities canonical, empty values dropped): the first pass creates
    every child, the second writes nothing."""
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = MemoryApiServer(defaulting=True)
    spec = _spec(**SPECS[name])
    reconcile.reconcile_children(api, OWNER, spec, {}, Logger())  # type: ignore[arg-type]
    created = [(verb, kind) for verb, kind, *_ in api.writes]
    # (an apply creates; the control token is a create: made once, never patched)
    assert created and all(verb == ("create" if kind == "Secret" else "apply")
                           for verb, kind in created)
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, spec, {}, Logger())  # type: ignore[arg-type]
    assert api.writes == []


def _named(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def test_a_pod_template_edit_is_drift() -> None:
    """A removed volume, an edited env var, an other shm size, a lost priority class or
    affinity: each reads as drift (and is patched back)."""
    desired = manifests.deployment(OWNER, _spec(resources={"shmSize": "8Gi"}, pod=POD_TEMPLATE))
    wanted = desired
    edits = [
        lambda pod: pod["volumes"].pop(),
        lambda pod: _named(pod["containers"][0]["env"], "HF_TOKEN")["valueFrom"][
            "secretKeyRef"].update(key="other"),
        lambda pod: _named(pod["volumes"], "dshm")["emptyDir"].update(sizeLimit="4Gi"),
        lambda pod: pod.pop("priorityClassName"),
        lambda pod: pod["affinity"].pop("nodeAffinity"),
    ]
    for edit in edits:
        current = as_stored(desired)
        edit(current["spec"]["template"]["spec"])
        assert not diff.is_subset(wanted, current)


# ------------------------------------------------------------------- PodDisruptionBudget


def _pdbs(api: MemoryApiServer) -> list[dict[str, Any]]:
    return [o for (kind, _), o in api.objects.items() if kind == "PodDisruptionBudget"]


def test_the_disruption_budget_is_created_repaired_changed_and_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, reason, **__: events.append(reason))
    api = MemoryApiServer(defaulting=True)
    reconcile.reconcile_children(api, OWNER, _spec(), {}, Logger())  # type: ignore[arg-type]
    (pdb,) = _pdbs(api)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    # Someone edits it: the next pass puts it back.
    api.objects[("PodDisruptionBudget", "chat")]["spec"]["maxUnavailable"] = 0
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, _spec(), {}, Logger())  # type: ignore[arg-type]
    assert [(v, k) for v, k, *_ in api.writes] == [("apply", "PodDisruptionBudget")]
    assert _pdbs(api)[0]["spec"]["maxUnavailable"] == 1
    # The spec changes it.
    two = _spec(disruptionBudget={"maxUnavailable": 2})
    reconcile.reconcile_children(api, OWNER, two, {}, Logger())  # type: ignore[arg-type]
    assert _pdbs(api)[0]["spec"]["maxUnavailable"] == 2
    # Turned off: deleted, once.
    off = _spec(disruptionBudget={"enabled": False})
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, off, {}, Logger())  # type: ignore[arg-type]
    assert [(v, k) for v, k, *_ in api.writes] == [("delete", "PodDisruptionBudget")]
    assert _pdbs(api) == [] and events[-1] == "Deleted"
    api.writes.clear()
    reconcile.reconcile_children(api, OWNER, off, {}, Logger())  # type: ignore[arg-type]
    assert api.writes == []


def test_a_disruption_budget_the_resource_does_not_own_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = MemoryApiServer(defaulting=True)
    theirs = manifests.disruption_budget(names.Owner("chat", "prod", "someone-else"), _spec())
    api.put(theirs)
    off = _spec(disruptionBudget={"enabled": False})
    reconcile.reconcile_children(api, OWNER, off, {}, Logger())  # type: ignore[arg-type]
    assert len(_pdbs(api)) == 1 and "delete" not in {v for v, *_ in api.writes}
