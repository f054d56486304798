"""Pure tests: spec -> Kubernetes objects, policy versions, diffing, status conditions."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import kubernetes_validate
import pytest

from specserve_engine.policy.params import Policy
from specserve_operator import diff, manifests, names, status
from specserve_operator import spec as spec_module
from specserve_operator.spec import (
    CONDITION_TYPES,
    SpecError,
    SpecServeDeploymentSpec,
    parse_spec,
)
from tests.kits.malformed_specs import VALID

OWNER = names.Owner(name="chat", namespace="prod", uid="0b6c3f0e-uid")
NOW = "2026-01-01T00:00:00Z"
LATER = "2026-01-01T00:05:00Z"


def _spec(**changes: Any) -> SpecServeDeploymentSpec:
    raw = copy.deepcopy(VALID)
    for key, value in changes.items():
        raw[key] = value
    return parse_spec(raw)


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return container


def _all_objects(spec: SpecServeDeploymentSpec) -> list[dict[str, Any]]:
    return [
        manifests.deployment(OWNER, spec),
        manifests.service(OWNER, spec),
        manifests.secret(OWNER, spec, "t0ken"),
        manifests.configmap(OWNER, spec, manifests.policy_from_spec(spec, 1)),
        manifests.servicemonitor(OWNER, spec),
        manifests.disruption_budget(OWNER, spec),
    ]


# ------------------------------------------------------------------------------------ objects


def test_engine_container_runs_specserve_serve() -> None:
    c = _container(manifests.deployment(OWNER, _spec()))
    assert c["command"] == ["specserve", "serve"]
    assert c["args"] == [
        "--model", "org/target-1b", "--draft", "org/draft-100m", "--k-max", "5",
        "--served-model-name", "chat", "--host", "0.0.0.0", "--port", "8000",
        "--control-port", "8001", "--drain-seconds", "120",
    ]
    assert c["image"] == "specserve/engine:0.1.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "control": 8001}


@pytest.mark.parametrize("drain", [0, 120, 900])
def test_a_stopping_pod_drains_within_its_grace_period(drain: int) -> None:
    """preStop waits for the routers to drop the endpoint, then SIGTERM starts vLLM's drain
    (`--drain-seconds` -> `--shutdown-timeout`); the kubelet's SIGKILL comes only after both
    and a teardown margin."""
    spec = _spec(rollout={"drainSeconds": drain})
    dep = manifests.deployment(OWNER, spec)
    c = _container(dep)
    assert c["args"][c["args"].index("--drain-seconds") + 1] == str(drain)
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) == manifests.PRE_STOP_DELAY_S > 0
    grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > manifests.PRE_STOP_DELAY_S + drain


def test_engine_token_and_policy_are_mounted_files() -> None:
    """The token is a file from the Secret's volume (mounted as a folder, so the kubelet updates
    it when the Secret is recreated), not an env var a running pod could never see change."""
    dep = manifests.deployment(OWNER, _spec())
    c = _container(dep)
    env = {e["name"]: e for e in c["env"]}
    assert "SPECSERVE_CONTROL_TOKEN" not in env
    assert env["SPECSERVE_CONTROL_TOKEN_FILE"]["value"] == "/etc/specserve/control/token"
    assert env["SPECSERVE_POLICY_FILE"]["value"] == "/etc/specserve/policy/policy.json"
    mounts = {v["name"]: v for v in c["volumeMounts"]}
    assert mounts["policy"]["mountPath"] == "/etc/specserve/policy"
    assert mounts["control-token"] == {"name": "control-token", "readOnly": True,
                                       "mountPath": "/etc/specserve/control"}  # no subPath
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["policy"]["configMap"]["name"] == "chat-policy"
    assert volumes["control-token"]["secret"] == {
        "secretName": "chat-control", "items": [{"key": "token", "path": "token"}]}


def test_probes_hit_the_engine_health_endpoint() -> None:
    c = _container(manifests.deployment(OWNER, _spec()))
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe


def test_gpu_limits_node_selector_and_tolerations() -> None:
    spec = _spec(resources={
        "gpu": 2, "cpu": "8", "memory": "64Gi", "nodeSelector": {"pool": "a100"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    })
    dep = manifests.deployment(OWNER, spec)
    c = _container(dep)
    assert c["resources"]["limits"] == {"memory": "64Gi", "nvidia.com/gpu": "2"}
    assert c["resources"]["requests"] == {"cpu": "8", "memory": "64Gi"}  # no CPU limit
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_cpu_only_pod_has_no_gpu_limit() -> None:
    c = _container(manifests.deployment(OWNER, _spec()))
    assert "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_gpu_resource_name_mig_ephemeral_storage_and_shm() -> None:
    spec = _spec(resources={"gpu": 1, "gpuResourceName": "nvidia.com/mig-1g.10gb",
                            "memory": "64Gi", "ephemeralStorage": "100Gi", "shmSize": "16Gi"})
    dep = manifests.deployment(OWNER, spec)
    c = _container(dep)
    assert c["resources"]["limits"] == {"memory": "64Gi", "ephemeral-storage": "100Gi",
                                        "nvidia.com/mig-1g.10gb": "1"}
    assert c["resources"]["requests"] == {"memory": "64Gi", "ephemeral-storage": "100Gi"}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    # Without shmSize /dev/shm is bounded by the memory limit only.
    volumes = {v["name"]: v for v in manifests.deployment(OWNER, _spec())["spec"]["template"][
        "spec"]["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory"}


POD = {
    "labels": {"team": "search"},
    "annotations": {"sidecar.istio.io/inject": "false"},
    "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}},
            {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
    "envFrom": [{"configMapRef": {"name": "engine-env"}}],
    "imagePullSecrets": [{"name": "regcred"}],
    "priorityClassName": "inference",
    "runtimeClassName": "nvidia",
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100"]}]}]}}},
    "volumes": [{"name": "hf-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}}],
    "volumeMounts": [{"name": "hf-cache", "mountPath": "/root/.cache/huggingface"}],
}


def test_the_pod_template_passes_through() -> None:
    dep = manifests.deployment(OWNER, _spec(pod=POD))
    template = dep["spec"]["template"]
    pod, c = template["spec"], _container(dep)
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    assert template["metadata"]["labels"]["team"] == "search"
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["VLLM_LOGGING_LEVEL"]["value"] == "DEBUG"
    assert "SPECSERVE_POLICY_FILE" in env  # the operator's env comes first, then the user's
    assert c["envFrom"] == [{"configMapRef": {"name": "engine-env"}}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["priorityClassName"] == "inference" and pod["runtimeClassName"] == "nvidia"
    assert pod["affinity"] == POD["affinity"]
    assert pod["volumes"][-1] == POD["volumes"][0]
    assert c["volumeMounts"][-1] == POD["volumeMounts"][0]
    kubernetes_validate.validate(dep, "1.32", strict=True)


def test_an_empty_pod_template_adds_nothing() -> None:
    pod = manifests.deployment(OWNER, _spec())["spec"]["template"]
    assert set(pod["metadata"]) == {"labels"}
    assert not {"imagePullSecrets", "priorityClassName", "runtimeClassName",
                "affinity"} & set(pod["spec"])
    assert "envFrom" not in pod["spec"]["containers"][0]


def test_the_operators_pod_labels_select_the_pods() -> None:
    """A user label never replaces the selector (the spec refuses one of the operator's keys;
    the operator's are written last besides)."""
    dep = manifests.deployment(OWNER, _spec(pod={"labels": {"team": "a"}}))
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for key in spec_module.OPERATOR_LABELS:
        with pytest.raises(SpecError, match=f"{key} is set by the operator"):
            _spec(pod={"labels": {key: "x"}})


def test_operator_volumes_and_env_are_the_ones_the_spec_reserves() -> None:
    """spec.OPERATOR_VOLUMES / OPERATOR_ENV (what a user may not reuse) match what
    manifests.deployment creates with every option on."""
    spec = _spec(model={"target": "m", "draft": "d", "pvc": {"claimName": "w"}},
                 profile={"configMap": {"name": "p"}}, pod=POD)
    dep = manifests.deployment(OWNER, spec)
    c = _container(dep)
    user = {v["name"] for v in POD["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"] if m["name"] not in user}
    assert mounts == spec_module.OPERATOR_VOLUMES
    assert {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]} - user == set(mounts)
    user_env = {e["name"] for e in POD["env"]}
    # CACHE_ENV's are defaults a user's env of the same name replaces, not reserved.
    assert {e["name"] for e in c["env"]} - user_env <= (set(spec_module.OPERATOR_ENV)
                                                        | set(manifests.CACHE_ENV))


def test_pvc_models_are_mounted_read_only() -> None:
    spec = _spec(model={"target": "llama-8b", "draft": "/opt/draft",
                        "pvc": {"claimName": "weights", "subPath": "hf"}})
    dep = manifests.deployment(OWNER, spec)
    c = _container(dep)
    assert c["args"][:4] == ["--model", "/models/llama-8b", "--draft", "/opt/draft"]
    mount = next(v for v in c["volumeMounts"] if v["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/models", "readOnly": True, "subPath": "hf"}
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert vol["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}


def test_tiny_models_mode_off_and_extra_vllm_args() -> None:
    tiny = _spec(model={"target": "tiny", "draft": "tiny"})
    assert "--model" not in _container(manifests.deployment(OWNER, tiny))["args"]
    assert "--draft" not in _container(manifests.deployment(OWNER, tiny))["args"]
    off = _spec(model={"target": "org/m"}, speculation={"mode": "off"},
                vllmArgs=["--max-model-len", "512"])
    args = _container(manifests.deployment(OWNER, off))["args"]
    assert args[2:4] == ["--draft", "none"]
    assert args[-3:] == ["--", "--max-model-len", "512"]


def test_profile_from_configmap_or_the_engines_own() -> None:
    dep = manifests.deployment(OWNER, _spec())
    env = {e["name"]: e.get("value") for e in _container(dep)["env"]}
    assert "SPECSERVE_PROFILE_FILE" not in env and "SPECSERVE_PROFILE" not in env
    assert "profile" not in {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]}
    spec = _spec(profile={"configMap": {"name": "h100-profile"}})
    dep = manifests.deployment(OWNER, spec)
    env = {e["name"]: e.get("value") for e in _container(dep)["env"]}
    assert env["SPECSERVE_PROFILE_FILE"] == "/etc/specserve/profile/profile.json"
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["profile"]["configMap"]["name"] == "h100-profile"


def test_replicas_from_spec_or_override() -> None:
    spec = _spec(replicas={"min": 1, "max": 5, "initial": 3})
    assert manifests.deployment(OWNER, spec)["spec"]["replicas"] == 3
    assert manifests.deployment(OWNER, spec, replicas=5)["spec"]["replicas"] == 5


def test_every_object_is_owned_and_labelled() -> None:
    for obj in _all_objects(_spec()):
        meta = obj["metadata"]
        assert meta["namespace"] == "prod"
        assert meta["ownerReferences"] == [{
            "apiVersion": "specserve.io/v1alpha1", "kind": "SpecServeDeployment",
            "name": "chat", "uid": "0b6c3f0e-uid", "controller": True,
            "blockOwnerDeletion": True,
        }]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "specserve-engine"
        assert labels["app.kubernetes.io/instance"] == "chat"
        assert labels["app.kubernetes.io/managed-by"] == "specserve-operator"
        assert labels["app.kubernetes.io/part-of"] == "specserve"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["app.kubernetes.io/component"]


def test_selectors_match_pod_labels() -> None:
    spec = _spec()
    dep = manifests.deployment(OWNER, spec)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    for selector in (dep["spec"]["selector"]["matchLabels"], manifests.service(OWNER, spec)["spec"]
                     ["selector"], manifests.servicemonitor(OWNER, spec)["spec"]["selector"]
                     ["matchLabels"]):
        assert selector.items() <= pod_labels.items()
    assert names.selector_string(OWNER) == (
        "app.kubernetes.io/name=specserve-engine,app.kubernetes.io/instance=chat")


def test_service_and_servicemonitor_expose_both_ports() -> None:
    spec = _spec()
    ports = {p["name"]: p["port"] for p in manifests.service(OWNER, spec)["spec"]["ports"]}
    assert ports == {"http": 8000, "control": 8001}
    eps = manifests.servicemonitor(OWNER, spec)["spec"]["endpoints"]
    assert [(e["port"], e["path"], e["interval"]) for e in eps] == [
        ("http", "/metrics", "15s"), ("control", "/metrics", "15s")]


def test_secret_holds_the_given_token_only_in_data() -> None:
    sec = manifests.secret(OWNER, _spec(), "s3cr3t-token")
    assert base64.b64decode(sec["data"]["token"]).decode() == "s3cr3t-token"
    without_data = {k: v for k, v in sec.items() if k != "data"}
    assert "s3cr3t" not in json.dumps(without_data)


@pytest.mark.parametrize("gpu", [0, 1])
def test_objects_pass_the_kubernetes_schemas(gpu: int) -> None:
    spec = _spec(resources={"gpu": gpu, "cpu": "4", "memory": "16Gi",
                            "tolerations": [{"key": "k", "operator": "Equal", "value": "v"}]},
                 model={"target": "m", "draft": "d", "pvc": {"claimName": "w"}},
                 profile={"configMap": {"name": "p"}}, pod=POD)
    for obj in _all_objects(spec):
        if obj["kind"] != "ServiceMonitor":  # a CRD, not in Kubernetes' schemas
            kubernetes_validate.validate(obj, "1.32", strict=True)


def test_the_disruption_budget_covers_the_engine_pods() -> None:
    pdb = manifests.disruption_budget(OWNER, _spec())
    assert pdb["apiVersion"] == "policy/v1" and pdb["metadata"]["name"] == "chat"
    assert pdb["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": names.selector_labels(OWNER)},
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    dep = manifests.deployment(OWNER, _spec())
    assert dep["spec"]["selector"] == pdb["spec"]["selector"]
    zero = manifests.disruption_budget(OWNER, _spec(disruptionBudget={"maxUnavailable": 0}))
    assert zero["spec"]["maxUnavailable"] == 0
    assert names.owned_by(pdb, OWNER)
    assert not names.owned_by(pdb, names.Owner("chat", "prod", "other-uid"))


def test_image_tag() -> None:
    assert names.image_tag("specserve/engine:0.1.0") == "0.1.0"
    assert names.image_tag("registry:5000/engine") is None
    assert names.image_tag("registry:5000/engine:v2@sha256:abc") == "v2"


# ------------------------------------------------------------------------------------- policy


def test_policy_is_the_engines_policy_model() -> None:
    policy = manifests.policy_from_spec(_spec(slo={"ttftP90Ms": 800, "tpotP90Ms": 40}), version=1)
    parsed = Policy.model_validate(policy)
    assert parsed.version == 1
    assert (parsed.mode, parsed.k_max, parsed.static_k) == ("adaptive", 5, 3)
    assert parsed.slo.tpot_seconds == pytest.approx(0.04)
    assert parsed.slo.ttft_seconds == pytest.approx(0.8)
    text = manifests.configmap(OWNER, _spec(), policy)["data"]["policy.json"]
    assert json.loads(text) == policy


def test_policy_version_moves_only_when_the_spec_changes_it() -> None:
    first, changed = manifests.merge_policy(None, _spec())
    assert changed and first["version"] == 1
    same, changed = manifests.merge_policy(first, _spec())
    assert not changed and same == first
    # Replica or image changes do not touch the policy.
    _, changed = manifests.merge_policy(first, _spec(image="specserve/engine:0.2.0"))
    assert not changed
    tuned = {**first, "model": {**first["model"], "prior_acceptance": 0.81}}
    second, changed = manifests.merge_policy(
        tuned, _spec(speculation={"mode": "adaptive", "kMax": 8}))
    assert changed and second["version"] == 2 and second["k_max"] == 8
    assert second["model"]["prior_acceptance"] == 0.81  # tuned parameters survive


def test_unreadable_stored_policy_is_replaced_with_a_higher_version() -> None:
    broken = {"version": 7, "k_max": "lots"}
    policy, changed = manifests.merge_policy(broken, _spec())
    assert changed and policy["version"] == 8
    Policy.model_validate(policy)
    assert manifests.parse_policy({"data": {"policy.json": "{not json"}}) is None
    assert manifests.parse_policy(None) is None


# ------------------------------------------------------------------------------------ diffing


def test_is_subset_tolerates_server_defaults_only() -> None:
    desired = {"spec": {"replicas": 2, "ports": [{"name": "http", "port": 8000}]}}
    actual = {"spec": {"replicas": 2, "ports": [{"name": "http", "port": 8000,
                                                 "protocol": "TCP"}]}, "status": {}}
    assert diff.is_subset(desired, actual)
    assert not diff.is_subset({"spec": {"replicas": 3}}, actual)
    assert not diff.is_subset({"spec": {"args": []}}, {"spec": {"args": ["--x"]}})  # atomic
    assert not diff.is_subset({"spec": {"missing": None}}, actual)


def test_keyed_lists_are_compared_by_key() -> None:
    """Lists the Kubernetes schema marks x-kubernetes-list-type map (containers, env, ports,
    volumes, ...): another manager's items (an injected sidecar) are not drift, a missing or
    changed item of ours is, and the order does not matter."""
    ours = {"spec": {"containers": [{"name": "engine", "ports": [{"containerPort": 8000}],
                                     "env": [{"name": "A", "value": "1"}]}]}}
    theirs = {"spec": {"containers": [
        {"name": "istio-proxy", "image": "proxy"},
        {"name": "engine", "ports": [{"containerPort": 9090, "protocol": "TCP"},
                                     {"containerPort": 8000, "protocol": "TCP"}],
         "env": [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]}]}}
    assert diff.is_subset(ours, theirs)
    theirs["spec"]["containers"][1]["env"][1]["value"] = "2"
    assert not diff.is_subset(ours, theirs)
    assert not diff.is_subset(ours, {"spec": {"containers": [{"name": "istio-proxy"}]}})


def test_the_applied_config_is_the_whole_object_and_its_fingerprint() -> None:
    dep = manifests.deployment(OWNER, _spec())
    config = diff.applied(dep)
    assert {k: v for k, v in config.items() if k != "metadata"} == {
        k: v for k, v in dep.items() if k != "metadata"}
    assert config["metadata"]["annotations"] == {diff.APPLIED_FIELDS: diff.fingerprint(dep)}
    assert diff.is_subset(dep, config) and not diff.in_sync(config, dep)
    assert diff.in_sync(config, config)


# ------------------------------------------------------------------------------------- status


def _dep(replicas: int, ready: int, **status: Any) -> dict[str, Any]:
    return {"spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": replicas,
                       **status}}


def _conds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_status_while_pods_start() -> None:
    out = status.running_status(_spec(), OWNER, {"spec": {"replicas": 2}}, 1, None, NOW, 4)
    assert out["phase"] == "Progressing"
    assert _conds(out) == {"Ready": "False", "Progressing": "True", "Degraded": "False",
                           "SLOMet": "Unknown", "PolicyApplied": "False", "NoData": "Unknown",
                           "NameConflict": "False", "RouteConflict": "False"}
    assert out["replicas"] == {"desired": 2, "current": 0, "ready": 0}
    assert out["observedGeneration"] == 4
    assert all(c["observedGeneration"] == 4 for c in out["conditions"])
    assert [c["type"] for c in out["conditions"]] == list(CONDITION_TYPES)


def test_status_when_all_pods_are_ready_and_slo_is_met() -> None:
    old = {"sloSnapshot": {"attainment": 0.97}, "policy": {"version": 3, "appliedPods": 2}}
    out = status.running_status(_spec(), OWNER, _dep(2, 2), 3, old, NOW)
    assert out["phase"] == "Running"
    c = _conds(out)
    assert (c["Ready"], c["Progressing"], c["Degraded"]) == ("True", "False", "False")
    assert c["SLOMet"] == "True" and c["PolicyApplied"] == "True"
    assert out["slo"] == "tpot<=100ms 97%/90%"
    assert out["k"] == "adaptive<=5"


def test_policy_acks_reset_when_the_version_moves() -> None:
    old = {"policy": {"version": 3, "appliedPods": 2}}
    out = status.running_status(_spec(), OWNER, _dep(2, 2), 4, old, NOW)
    assert out["policy"] == {"version": 4, "appliedPods": 0}
    assert _conds(out)["PolicyApplied"] == "Unknown"


def test_status_degraded_when_the_rollout_is_stuck() -> None:
    stuck = _dep(2, 1, conditions=[{"type": "Progressing", "status": "False",
                                    "reason": "ProgressDeadlineExceeded",
                                    "message": "ReplicaSet has timed out progressing."}])
    out = status.running_status(_spec(), OWNER, stuck, 1, None, NOW)
    assert out["phase"] == "Degraded"
    degraded = next(c for c in out["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    assert degraded["message"] == "ReplicaSet has timed out progressing."


def test_transition_time_changes_only_with_the_status() -> None:
    first = status.running_status(_spec(), OWNER, _dep(1, 0), 1, None, NOW)
    again = status.running_status(_spec(), OWNER, _dep(1, 0), 1, first, LATER)
    assert again["conditions"] == first["conditions"]
    ready = status.running_status(_spec(), OWNER, _dep(1, 1), 1, again, LATER)
    times = {c["type"]: c["lastTransitionTime"] for c in ready["conditions"]}
    assert times["Ready"] == LATER and times["Degraded"] == NOW


def test_invalid_status_keeps_other_conditions() -> None:
    running = status.running_status(_spec(), OWNER, _dep(1, 1), 1, None, NOW)
    out = status.invalid_status("invalid spec: spec.replicas: min (3) must be <= max (2)",
                            running, LATER)
    assert out["phase"] == "Invalid"
    c = {x["type"]: x for x in out["conditions"]}
    assert c["Ready"]["status"] == "False" and c["Ready"]["reason"] == "InvalidSpec"
    assert "min (3) must be <= max (2)" in c["Degraded"]["message"]
    assert c["SLOMet"]["status"] == "Unknown"  # untouched


def test_servicemonitor_labels_add_to_the_operator_defaults_and_keep_ours() -> None:
    spec = _spec(metrics={"serviceMonitorLabels": {"team": "a", "release": "prom-b"}})
    defaults = {"release": "kube-prometheus-stack", "app.kubernetes.io/name": "theirs"}
    labels = manifests.servicemonitor(OWNER, spec, defaults)["metadata"]["labels"]
    assert labels["release"] == "prom-b" and labels["team"] == "a"  # the spec's win
    assert labels["app.kubernetes.io/name"] == "specserve-engine"  # the selector label stays
    plain = manifests.servicemonitor(OWNER, _spec(), defaults)["metadata"]["labels"]
    assert plain["release"] == "kube-prometheus-stack"
    assert "release" not in manifests.servicemonitor(OWNER, _spec())["metadata"]["labels"]


@pytest.mark.parametrize(("labels", "message"), [
    ({"release": "not ok!"}, "not a valid label value"),
    ({"bad key": "x"}, "not a valid label key"),
    ({"release": "x" * 64}, "not a valid label value"),
])
def test_servicemonitor_labels_must_be_kubernetes_labels(labels: dict[str, str],
                                                         message: str) -> None:
    raw = copy.deepcopy(VALID) | {"metrics": {"serviceMonitorLabels": labels}}
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)
    assert parse_spec(copy.deepcopy(VALID) | {"metrics": {"serviceMonitorLabels": {
        "example.com/team": "a-b.c_d", "empty": ""}}})
