"""The engine pod on a real cluster (issue #24): Service links, Pod Security (PSA `restricted`,
OpenShift `restricted-v2`), writable paths for any UID, the startup budget, the model cache,
an optional replicas.initial, and CPU without a limit.

What kmock cannot enforce is encoded in tests/kits/: pod_security.py (admission), kubelet.py
(Service environment variables), apiserver.py (the pod spec's defaults).
"""

from __future__ import annotations

import copy
from pathlib import PurePosixPath
from typing import Any

import kubernetes_validate
import pytest

from specserve_contract import ENGINE_UID, HOME_DIR, MODEL_CACHE_DIR
from specserve_operator import manifests, names
from specserve_operator.spec import SpecError, SpecServeDeploymentSpec, parse_spec
from tests.kits import apiserver, kubelet
from tests.kits.crd_validation import admitted, cel_failures, spec_schema
from tests.kits.malformed_specs import VALID
from tests.kits.pod_security import openshift_restricted_v2_problems, restricted_problems

OWNER = names.Owner(name="chat", namespace="prod", uid="0b6c3f0e-uid")


def _spec(**changes: Any) -> SpecServeDeploymentSpec:
    raw = copy.deepcopy(VALID)
    raw.update(changes)
    return parse_spec(raw)


def _pod(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """The engine pod spec as the API server stores the Deployment's template."""
    stored = apiserver.as_stored(manifests.deployment(OWNER, spec))
    return stored["spec"]["template"]["spec"]


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = pod["containers"]
    return container


EVERYTHING_ON = {
    "model": {"target": "org/m", "draft": "org/d", "pvc": {"claimName": "weights"},
              "cache": {"claimName": "hf-cache"}},
    "profile": {"configMap": {"name": "p"}},
    "resources": {"gpu": 1, "cpu": "4", "memory": "32Gi", "shmSize": "8Gi"},
    "pod": {"volumes": [{"name": "scratch", "emptyDir": {}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
}


# ------------------------------------------------------------------------- 4. Service links


def test_a_service_named_vllm_does_not_reach_the_engine_env() -> None:
    """The kubelet gives every container NAME_PORT=tcp://IP:PORT for each Service of the
    namespace unless enableServiceLinks is false (the API server defaults it to true). vLLM
    reads VLLM_PORT as its own port number, and a Service called `vllm` breaks it (vLLM's docs,
    "Using Kubernetes": do not name the Service vllm)."""
    vllm = {"metadata": {"name": "vllm"},
            "spec": {"clusterIP": "10.0.0.7", "ports": [{"port": 8000, "protocol": "TCP"}]}}
    pod = _pod(_spec())
    assert pod["enableServiceLinks"] is False
    assert kubelet.service_link_env(pod, [vllm]) == {}
    # What the kit says of a pod that keeps the default:
    default = kubelet.service_link_env({}, [vllm])
    assert default["VLLM_PORT"] == "tcp://10.0.0.7:8000"


# ------------------------------------------------------------------------- 5. Pod Security


@pytest.mark.parametrize("raw", [{}, EVERYTHING_ON], ids=["defaults", "everything-on"])
def test_engine_pods_pass_restricted_and_restricted_v2(raw: dict[str, Any]) -> None:
    pod = _pod(_spec(**raw))
    assert restricted_problems(pod) == []
    assert openshift_restricted_v2_problems(pod) == []
    # No UID pinned: the image's USER, or the one OpenShift assigns.
    assert "runAsUser" not in pod["securityContext"] and "fsGroup" not in pod["securityContext"]
    assert "runAsUser" not in _container(pod)["securityContext"]


def test_the_pod_security_kit_refuses_what_admission_refuses() -> None:
    """The checks themselves: the engine pod as it was before (allowPrivilegeEscalation false
    only), and a fixed UID outside OpenShift's range."""
    pod = _pod(_spec())
    old = copy.deepcopy(pod)
    old["securityContext"] = {}
    _container(old)["securityContext"] = {"allowPrivilegeEscalation": False}
    assert restricted_problems(old) == [
        "container engine: runAsNonRoot must be true (pod or container)",
        "container engine: seccompProfile must be RuntimeDefault or Localhost (pod or container)",
        "container engine: capabilities must drop ALL",
    ]
    fixed = copy.deepcopy(pod)
    fixed["securityContext"]["runAsUser"] = ENGINE_UID
    assert restricted_problems(fixed) == []
    assert openshift_restricted_v2_problems(fixed) == [
        "pod: runAsUser 10001 is outside the namespace's range 1000680000/10000"]
    host = copy.deepcopy(pod)
    host["volumes"].append({"name": "h", "hostPath": {"path": "/"}})
    host["hostNetwork"] = True
    assert "volume h: type hostPath is not allowed" in restricted_problems(host)
    assert "hostNetwork must be false" in restricted_problems(host)


def test_security_contexts_override_the_defaults_field_by_field() -> None:
    spec = _spec(pod={
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containerSecurityContext": {"readOnlyRootFilesystem": True},
    })
    dep = manifests.deployment(OWNER, spec)
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
        "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
    assert _container(pod)["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True}
    assert restricted_problems(pod) == []
    kubernetes_validate.validate(dep, "1.32", strict=True)


def test_a_false_in_an_override_is_sent_not_dropped() -> None:
    """securityContext's booleans are pointers: false is stored, and differs from unset (an
    omitempty that dropped it would leave the default true in place)."""
    pod = _pod(_spec(pod={"securityContext": {"runAsNonRoot": False},
                          "containerSecurityContext": {"privileged": False}}))
    assert pod["securityContext"]["runAsNonRoot"] is False
    assert _container(pod)["securityContext"]["privileged"] is False
    assert "container engine: runAsNonRoot must be true (pod or container)" in \
        restricted_problems(pod)  # the user's choice, which the namespace's PSA then judges


def test_service_account_token_is_off_unless_asked_for() -> None:
    pod = _pod(_spec())
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod
    pod = _pod(_spec(pod={"serviceAccountName": "engine", "automountServiceAccountToken": True}))
    assert pod["serviceAccountName"] == "engine"
    assert pod["automountServiceAccountToken"] is True


def _mount_of(path: str, container: dict[str, Any]) -> dict[str, Any] | None:
    """The mount `path` lies in (the deepest one), if any."""
    best = None
    for mount in container["volumeMounts"]:
        if PurePosixPath(path).is_relative_to(mount["mountPath"]) and (
                best is None or len(mount["mountPath"]) > len(best["mountPath"])):
            best = mount
    return best


def test_every_place_the_engine_writes_is_a_volume() -> None:
    """Under any UID (OpenShift's has no passwd entry and HOME /) and with a read-only root
    file system: HOME, XDG's, vLLM's, Triton's and Hugging Face's caches and /tmp are on
    emptyDirs or the model cache, not the image."""
    pod = _pod(_spec(pod={"containerSecurityContext": {"readOnlyRootFilesystem": True}}))
    c = _container(pod)
    env = {e["name"]: e.get("value") for e in c["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for name in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        mount = _mount_of(env[name], c)
        assert mount is not None and not mount.get("readOnly"), name
        assert "emptyDir" in volumes[mount["name"]], name
    assert "emptyDir" in volumes[_mount_of("/tmp/x", c)["name"]]
    assert env["HOME"] == HOME_DIR and env["HF_HOME"] == MODEL_CACHE_DIR
    assert env["USER"]  # getpass.getuser() without a passwd entry (PyTorch's cache paths)


def test_a_users_mount_may_sit_under_a_scratch_folder() -> None:
    """Not at /tmp (that is the operator's emptyDir), but under it: nested mounts are fine."""
    c = _container(_pod(_spec(pod={"volumes": [{"name": "x", "emptyDir": {}}],
                                   "volumeMounts": [{"name": "x", "mountPath": "/tmp/x"}]})))
    assert {"name": "x", "mountPath": "/tmp/x"} in c["volumeMounts"]


def test_a_users_env_replaces_a_cache_default() -> None:
    """HF_HOME set in spec.pod.env (a cache volume of one's own) wins, and appears once (a list
    keyed by name must not hold a name twice)."""
    c = _container(_pod(_spec(pod={"env": [{"name": "HF_HOME", "value": "/data/hf"}]})))
    names_ = [e["name"] for e in c["env"]]
    assert names_.count("HF_HOME") == 1
    assert next(e for e in c["env"] if e["name"] == "HF_HOME")["value"] == "/data/hf"


# ----------------------------------------------------------------- 6. startup budget, cache


@pytest.mark.parametrize(("timeout", "threshold"), [(None, 180), (7200, 720), (65, 7)])
def test_the_startup_budget_is_the_resources(timeout: int | None, threshold: int) -> None:
    spec = _spec(**({} if timeout is None else {"startup": {"timeoutSeconds": timeout}}))
    dep = manifests.deployment(OWNER, spec)
    probe = dep["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert probe["periodSeconds"] == 10 and probe["failureThreshold"] == threshold
    assert manifests.startup_budget_s(spec) == 10 * threshold + 5
    assert dep["spec"]["progressDeadlineSeconds"] == 600 + 10 * threshold + 5


def test_the_startup_timeout_has_bounds() -> None:
    for bad in (59, 86_401):
        with pytest.raises(SpecError, match="spec.startup.timeoutSeconds"):
            _spec(startup={"timeoutSeconds": bad})


@pytest.mark.parametrize(("cache", "volume"), [
    ({}, {"emptyDir": {}}),
    ({"sizeLimit": "200Gi"}, {"emptyDir": {"sizeLimit": "200Gi"}}),
    ({"claimName": "hf-cache"}, {"persistentVolumeClaim": {"claimName": "hf-cache"}}),
], ids=["empty-dir", "size-limit", "claim"])
def test_the_model_cache_is_a_volume_at_hf_home(cache: dict[str, Any],
                                                volume: dict[str, Any]) -> None:
    """Downloads land on a volume, not in the container's layer: an emptyDir outlives a
    container restart (a restarted engine finds its weights), a PVC the pod too."""
    spec = _spec(model={**VALID["model"], "cache": cache})
    dep = manifests.deployment(OWNER, spec)
    pod = dep["spec"]["template"]["spec"]
    vol = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert vol == {"name": "model-cache", **volume}
    c = _container(pod)
    assert {"name": "model-cache", "mountPath": MODEL_CACHE_DIR} in c["volumeMounts"]
    assert {"name": "HF_HOME", "value": MODEL_CACHE_DIR} in c["env"]
    kubernetes_validate.validate(dep, "1.32", strict=True)


# ---------------------------------------------------------------------- 7. replicas.initial


def test_replicas_initial_may_be_left_out_whatever_min_is() -> None:
    """GitOps with an HPA: a manifest without initial is valid with min 2 (the old default of
    1 was refused), the API server fills no default, and the Deployment starts at min."""
    raw = {**copy.deepcopy(VALID), "replicas": {"min": 2, "max": 6},
           "autoscaling": {"mode": "external"}}
    spec = parse_spec(copy.deepcopy(raw))
    assert spec.replicas.initial == 2
    assert manifests.deployment(OWNER, spec)["spec"]["replicas"] == 2
    assert manifests.deployment_replicas(spec, None) == 2
    stored = admitted(copy.deepcopy(raw), spec_schema())
    assert "initial" not in stored["replicas"]
    assert cel_failures(stored) == []
    # Once an HPA writes it (the scale subresource), it is the count, within min..max.
    stored["replicas"]["initial"] = 4
    assert manifests.deployment_replicas(parse_spec(stored), None) == 4
    stored["replicas"]["initial"] = 1
    assert cel_failures(stored) == [
        "spec.replicas: initial (1) must lie between min (2) and max (6)"]


# ------------------------------------------------------------------------------ 8. CPU


def test_engine_cpu_is_a_request_without_a_limit() -> None:
    """A CPU limit's CFS quota throttles the engine's CPU work (scheduling, tokenising), which
    shows as TTFT spikes: `cpu` is a request only; a limit only with cpuLimit."""
    c = _container(_pod(_spec(resources={"cpu": "4", "memory": "16Gi"})))
    assert c["resources"] == {"requests": {"cpu": "4", "memory": "16Gi"},
                              "limits": {"memory": "16Gi"}}
    c = _container(_pod(_spec(resources={"cpu": "4", "cpuLimit": "4", "memory": "16Gi"})))
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}
