"""Pure functions: a validated SpecServeDeployment spec -> the Kubernetes objects it owns.

No I/O here (not even the clock or randomness: the control token is passed in), so every
object can be checked in plain unit tests. `reconcile.py` sends these dicts to the API server.
The objects' names and labels come from `names.py`; whether a live object still matches one
of these, and the patch when it does not, from `diff.py`.

Objects owned by a SpecServeDeployment NAME (all carry an owner reference to it):
    Deployment      NAME              engine pods running `specserve serve`
    Service         NAME              OpenAI port 8000 (`http`) and control port 8001 (`control`)
    Secret          NAME-control      the control-port bearer token (created once, never updated;
                                      mounted in the pods as a file, re-read when it changes)
    ConfigMap       NAME-policy       policy.json: the current speculation policy
    ServiceMonitor  NAME              only when the Prometheus Operator's CRD exists
    PodDisruptionBudget NAME          unless spec.disruptionBudget.enabled is false
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

import specserve_contract as contract
from specserve_contract import (
    CONTROL_PORT,
    CONTROL_PORT_NAME,
    CONTROL_TOKEN_DIR,
    CONTROL_TOKEN_FILE,
    ENV_CONTROL_TOKEN_FILE,
    ENV_POLICY_FILE,
    ENV_PROFILE_FILE,
    HEALTH_PATH,
    HOME_DIR,
    HTTP_PORT,
    HTTP_PORT_NAME,
    METRICS_PATH,
    MODEL_CACHE_DIR,
    MODELS_MOUNT,
    NO_DRAFT,
    POLICY_DIR,
    POLICY_FILE,
    POLICY_KEY,
    PROFILE_DIR,
    SHM_DIR,
    TINY,
    TMP_DIR,
    TOKEN_KEY,
)
from specserve_engine.policy.params import Policy, SloTargets
from specserve_operator.names import (
    Owner,
    configmap_name,
    deployment_name,
    disruption_budget_name,
    labels,
    owner_reference,
    secret_name,
    selector_labels,
    served_model,
    service_name,
    servicemonitor_name,
)
from specserve_operator.spec import SpecServeDeploymentSpec

ENGINE_CONTAINER = "engine"
SERVICEMONITOR_API = "monitoring.coreos.com/v1"
PDB_API = "policy/v1"

# Fields of the policy that come from the spec; the rest (fitted model parameters) belong to the
# tuning loop and survive spec changes. See `merge_policy`.
SPEC_POLICY_FIELDS = ("mode", "k_max", "static_k", "slo")


def _metadata(
    owner: Owner, spec: SpecServeDeploymentSpec, name: str, component: str
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, spec, component),
        "ownerReferences": [owner_reference(owner)],
    }


# ------------------------------------------------------------------------------------- policy


def policy_from_spec(spec: SpecServeDeploymentSpec, version: int) -> dict[str, Any]:
    """The initial policy the engine loads from SPECSERVE_POLICY_FILE, as the engine's
    `Policy` model (specserve_engine.policy.params) dumps it.

    Mapping: speculation.mode/kMax/staticK -> mode/k_max/static_k; slo.ttftP90Ms and
    slo.tpotP90Ms -> slo.ttft_seconds/tpot_seconds (the engine plans each step against one
    target; p99 and attainment are the operator's, for tuning and autoscaling). The
    efficiency-model parameters are the built-in defaults (empty `source`), which an engine
    never adopts in place of its own profile; the tuning loop replaces them with a refit of
    what the pods measured.
    """
    sp = spec.speculation
    policy = Policy(
        version=version,
        mode=sp.mode,
        k_max=sp.k_max,
        static_k=min(sp.static_k, sp.k_max),
        slo=SloTargets(
            ttft_seconds=spec.slo.ttft_p90_ms / 1000.0,
            tpot_seconds=spec.slo.tpot_p90_ms / 1000.0,
        ),
    )
    return policy.model_dump(mode="json")


def merge_policy(
    current: dict[str, Any] | None, spec: SpecServeDeploymentSpec
) -> tuple[dict[str, Any], bool]:
    """The policy to store given the one in the ConfigMap: (policy, changed).

    Spec-derived fields follow the spec; everything else (e.g. parameters fitted by the tuning
    loop) is kept. The version goes up by one exactly when something changes, so an operator
    restart with an unchanged spec rewrites nothing. A stored policy the engine would refuse
    is replaced by a fresh one (with a higher version).
    """
    if not current:
        return policy_from_spec(spec, version=1), True
    version = current.get("version")
    next_version = (version if isinstance(version, int) and version >= 0 else 0) + 1
    wanted = policy_from_spec(spec, version=0)
    try:
        Policy.model_validate(current)
    except ValidationError:
        return policy_from_spec(spec, version=next_version), True
    if all(current.get(f) == wanted[f] for f in SPEC_POLICY_FIELDS):
        return current, False
    merged = {**current, **{f: wanted[f] for f in SPEC_POLICY_FIELDS}, "version": next_version}
    return Policy.model_validate(merged).model_dump(mode="json"), True


def policy_json(policy: dict[str, Any]) -> str:
    return json.dumps(policy, sort_keys=True, indent=2) + "\n"


def parse_policy(configmap: dict[str, Any] | None) -> dict[str, Any] | None:
    """The policy stored in a ConfigMap, or None if absent or unreadable."""
    if not configmap:
        return None
    text = (configmap.get("data") or {}).get(POLICY_KEY)
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------------- objects


def _model_path(ref: str, spec: SpecServeDeploymentSpec) -> str:
    """Where the engine finds a model: PVC-relative paths live under /models."""
    if spec.model.pvc is not None and not ref.startswith("/"):
        return f"{MODELS_MOUNT}/{ref}"
    return ref


def engine_args(spec: SpecServeDeploymentSpec, served_name: str) -> list[str]:
    """Arguments of `specserve serve` (after the command)."""
    args: list[str] = []
    if spec.model.target != TINY:
        args += ["--model", _model_path(spec.model.target, spec)]
    draft = spec.model.draft
    if spec.speculation.mode == "off" or draft == NO_DRAFT:
        args += ["--draft", NO_DRAFT]
    elif draft != TINY:
        args += ["--draft", _model_path(draft, spec)]
    k_max = spec.speculation.k_max
    args += [
        "--k-max", str(k_max),
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(HTTP_PORT),
        "--control-port", str(CONTROL_PORT),
        "--drain-seconds", str(spec.rollout.drain_seconds),
    ]
    if spec.vllm_args:
        args += ["--", *spec.vllm_args]
    return args


def _resources(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    r = spec.resources
    # CPU: a request, and no limit unless asked for. The CFS quota of a limit throttles the
    # engine's CPU-bound work (scheduling, tokenising, sampling, the draft on CPU) for the rest
    # of each 100 ms period once it is spent, which reads as TTFT and TPOT spikes.
    if r.cpu:
        requests["cpu"] = r.cpu
    if r.cpu_limit:
        limits["cpu"] = r.cpu_limit
    if r.memory:
        requests["memory"] = limits["memory"] = r.memory
    if r.ephemeral_storage:
        requests["ephemeral-storage"] = limits["ephemeral-storage"] = r.ephemeral_storage
    if r.gpu:
        # Extended resources take a limit only (the request defaults to it, and may not differ).
        limits[r.gpu_resource_name] = str(r.gpu)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


# Keys whose value is a map (Go `map[string]string` with omitempty): an empty one is dropped by
# the API server. Elsewhere `{}` means something (emptyDir: {}, labelSelector: {} = all pods).
_MAP_FIELDS = frozenset({"matchLabels", "volumeAttributes", "options", "labels", "annotations"})


def omitempty(value: Any, keep_false: bool = False) -> Any:
    """A pass-through Kubernetes object as the API server stores it: without the empty strings,
    false booleans, empty lists and empty maps its JSON encoding omits (`omitempty`; each
    means the same as the field absent). Sending them would read as drift on every pass.
    `keep_false`: for objects whose booleans are pointers (securityContext's: false is kept,
    and differs from unset)."""
    if isinstance(value, list):
        return [omitempty(v, keep_false) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        item = omitempty(item, keep_false)
        if item is None or (item is False and not keep_false) or item == "" or item == [] or (
                item == {} and key in _MAP_FIELDS):
            continue
        out[key] = item
    return out


def _dump(model: Any, keep_false: bool = False) -> Any:
    """A spec model (ours or the official client's) as the Kubernetes JSON it stands for."""
    return omitempty(model.model_dump(mode="json", by_alias=True, exclude_none=True,
                                      exclude_unset=True), keep_false)


# Where the engine writes, all on the pod's emptyDirs (HOME_DIR, TMP_DIR) or the model cache,
# so that it runs under any UID and with a read-only root file system. OpenShift's UID has no
# passwd entry: HOME would be `/`, and getpass.getuser() (PyTorch's inductor cache path) would
# fail without USER. SPECSERVE_CACHE (the tiny models) stays the image's own: engine/Dockerfile
# may build them into it, and makes it writable for any UID.
CACHE_ENV = {
    "HOME": HOME_DIR,
    "USER": "specserve",
    "XDG_CACHE_HOME": f"{HOME_DIR}/.cache",
    "HF_HOME": MODEL_CACHE_DIR,
    "VLLM_CACHE_ROOT": f"{HOME_DIR}/.cache/vllm",
    "TRITON_CACHE_DIR": f"{HOME_DIR}/.cache/triton",
}


def _env(owner: Owner, spec: SpecServeDeploymentSpec) -> list[dict[str, Any]]:
    # The token as a file (the Secret's volume), not an env var: a Secret deleted and
    # recreated with a new token then reaches running pods (the engine re-reads the file).
    env: list[dict[str, Any]] = [
        {"name": ENV_CONTROL_TOKEN_FILE, "value": CONTROL_TOKEN_FILE},
        {"name": ENV_POLICY_FILE, "value": POLICY_FILE},
    ]
    cm = spec.profile.config_map
    if cm is not None:
        env.append({"name": ENV_PROFILE_FILE, "value": f"{PROFILE_DIR}/{cm.key}"})
    # Without one the engine uses the profile cached next to the model, else its timing prior.
    # Then the writable places (CACHE_ENV), unless spec.pod.env sets the same name.
    own = {var.name for var in spec.pod.env}
    env += [{"name": k, "value": v} for k, v in CACHE_ENV.items() if k not in own]
    return env + [_dump(var) for var in spec.pod.env]


# Probe timings (seconds). Loading weights (and compiling) can take many minutes: the startup
# probe allows `startup_budget_s(spec)` (spec.startup.timeoutSeconds, 30 min by default) before
# the kubelet restarts the container and liveness takes over; readiness gates the Service
# endpoints.
STARTUP_PERIOD_S = 10
STARTUP_TIMEOUT_S = 5
READINESS_PROBE = {"periodSeconds": 5, "failureThreshold": 3, "timeoutSeconds": 5}
LIVENESS_PROBE = {"periodSeconds": 15, "failureThreshold": 4, "timeoutSeconds": 10}
# Scheduling a pod and pulling a multi-GB vLLM image onto a fresh GPU node, before the
# startup probe's clock starts.
PULL_ALLOWANCE_S = 600


def startup_probe_timing(spec: SpecServeDeploymentSpec) -> dict[str, int]:
    """The startup probe: spec.startup.timeoutSeconds in whole periods, rounded up."""
    periods = -(-spec.startup.timeout_seconds // STARTUP_PERIOD_S)
    return {"periodSeconds": STARTUP_PERIOD_S, "failureThreshold": periods,
            "timeoutSeconds": STARTUP_TIMEOUT_S}


def startup_budget_s(spec: SpecServeDeploymentSpec) -> int:
    """The longest an engine may take from container start to Ready without being restarted:
    every startup probe failing but the last (the kubelet restarts at failureThreshold), then
    one readiness period to be marked Ready."""
    timing = startup_probe_timing(spec)
    startup = timing.get("initialDelaySeconds", 0) + (
        timing["periodSeconds"] * timing["failureThreshold"])
    return startup + READINESS_PROBE["periodSeconds"]


def progress_deadline_s(spec: SpecServeDeploymentSpec) -> int:
    """The Deployment's progressDeadlineSeconds: a pod that is still loading within its start
    budget is progress, not a failure (Kubernetes' default 600 s would report a normal
    large-model load as ProgressDeadlineExceeded, and so the resource as Degraded)."""
    return PULL_ALLOWANCE_S + startup_budget_s(spec)


# Seconds the preStop hook waits before the engine gets SIGTERM (routers stop sending first).
PRE_STOP_DELAY_S = 5
# What the engine may need beyond the drain after SIGTERM: freeing the model and the KV cache.
TEARDOWN_S = 15


def termination_grace_s(spec: SpecServeDeploymentSpec) -> int:
    """The pod's terminationGracePeriodSeconds: the kubelet counts it from the start of the
    preStop hook, and SIGKILLs whatever still runs after it."""
    return PRE_STOP_DELAY_S + spec.rollout.drain_seconds + TEARDOWN_S


def deployment_strategy(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """The Deployment's strategy from spec.rollout (see `RolloutSpec` for the defaults)."""
    rollout = spec.rollout
    if rollout.strategy == "Recreate":
        return {"type": "Recreate"}
    return {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": rollout.max_surge,
                          "maxUnavailable": rollout.max_unavailable},
    }


def _probe(timing: dict[str, int]) -> dict[str, Any]:
    return {"httpGet": {"path": HEALTH_PATH, "port": HTTP_PORT_NAME}, **timing}


def deployment_replicas(spec: SpecServeDeploymentSpec, status: Mapping[str, Any] | None) -> int:
    """The engine Deployment's replica count, given the resource's .status.

    autoscaling.mode builtin: the SLO loop's last decision (.status.autoscale.desired, made in
    builtin mode), within the spec's min..max now; before that decision (a new resource, or
    just switched to builtin), spec.replicas.initial. external and off: spec.replicas.initial
    (what an HPA/KEDA or `kubectl scale ssd/NAME` set). An unset initial is replicas.min
    (`ReplicasSpec` fills it in). Reconcile (drift repair) and the SLO
    loop both use this, so they can never disagree about the count.
    """
    auto = (status or {}).get("autoscale") or {}
    desired = auto.get("desired")
    if (spec.autoscaling.mode == "builtin" and auto.get("mode") == "builtin"
            and isinstance(desired, int)):
        return min(max(desired, spec.replicas.min), spec.replicas.max)
    return spec.replicas.initial


def _shm(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """/dev/shm: memory-backed, so its pages count against the memory limit; without
    resources.shmSize it may grow to that limit (or to the node's memory without one)."""
    shm: dict[str, Any] = {"medium": "Memory"}
    if spec.resources.shm_size:
        shm["sizeLimit"] = spec.resources.shm_size
    return shm


def _model_cache(spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """The model-cache volume (HF_HOME): the PVC spec.model.cache.claimName, else an emptyDir
    (which outlives container restarts, so a restarted engine does not download again)."""
    cache = spec.model.cache
    if cache.claim_name is not None:
        return {"name": "model-cache", "persistentVolumeClaim": {"claimName": cache.claim_name}}
    return {"name": "model-cache",
            "emptyDir": {"sizeLimit": cache.size_limit} if cache.size_limit else {}}


# Security defaults: they pass Pod Security Admission's `restricted` profile and OpenShift's
# `restricted-v2` SCC (tests/kits/pod_security.py checks both). No runAsUser or fsGroup: the
# image's USER runs (engine/Dockerfile: 10001), or the UID and fsGroup OpenShift assigns from
# the namespace's range. spec.pod.securityContext and containerSecurityContext override these
# field by field (a field they set replaces the default's whole value).
POD_SECURITY_CONTEXT: dict[str, Any] = {
    "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _security_context(default: dict[str, Any], override: Any) -> dict[str, Any]:
    """`default` with the fields `override` (a spec model, or None) sets replaced."""
    merged = copy.deepcopy(default)
    if override is not None:
        merged.update(_dump(override, keep_false=True))
    return merged


def _pod_metadata(owner: Owner, spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """The pod's labels (the operator's after the user's: they select the pods, and the spec
    refuses a user label of the same key anyway) and annotations."""
    meta: dict[str, Any] = {"labels": {**spec.pod.labels, **labels(owner, spec, "engine")}}
    if spec.pod.annotations:
        meta["annotations"] = dict(spec.pod.annotations)
    return meta


def deployment(
    owner: Owner, spec: SpecServeDeploymentSpec, replicas: int | None = None
) -> dict[str, Any]:
    """The engine Deployment; `replicas` defaults to spec.replicas.initial (min when unset;
    reconcile passes `deployment_replicas`)."""
    served_name = served_model(owner.name, spec)
    mounts: list[dict[str, Any]] = [
        {"name": "policy", "mountPath": POLICY_DIR, "readOnly": True},
        # The whole folder, never a subPath (the kubelet does not update subPath mounts).
        {"name": "control-token", "mountPath": CONTROL_TOKEN_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": SHM_DIR},
        {"name": "engine-home", "mountPath": HOME_DIR},
        {"name": "engine-tmp", "mountPath": TMP_DIR},
        {"name": "model-cache", "mountPath": MODEL_CACHE_DIR},
    ]
    volumes: list[dict[str, Any]] = [
        {
            "name": "policy",
            "configMap": {"name": configmap_name(owner), "items": [
                {"key": POLICY_KEY, "path": POLICY_KEY}]},
        },
        {
            "name": "control-token",
            "secret": {"secretName": secret_name(owner), "items": [
                {"key": TOKEN_KEY, "path": TOKEN_KEY}]},
        },
        # vLLM (PyTorch) workers exchange tensors through shared memory.
        {"name": "dshm", "emptyDir": _shm(spec)},
        # Writable places for any UID (CACHE_ENV): HOME (with XDG's, vLLM's and Triton's caches
        # under it), /tmp, and the model cache.
        {"name": "engine-home", "emptyDir": {}},
        {"name": "engine-tmp", "emptyDir": {}},
        _model_cache(spec),
    ]
    if spec.model.pvc is not None:
        mount: dict[str, Any] = {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}
        if spec.model.pvc.sub_path:
            mount["subPath"] = spec.model.pvc.sub_path
        mounts.append(mount)
        volumes.append({
            "name": "models",
            "persistentVolumeClaim": {"claimName": spec.model.pvc.claim_name, "readOnly": True},
        })
    if spec.profile.config_map is not None:
        mounts.append({"name": "profile", "mountPath": PROFILE_DIR, "readOnly": True})
        volumes.append({"name": "profile", "configMap": {"name": spec.profile.config_map.name}})
    pod = spec.pod
    volumes += [_dump(v) for v in pod.volumes]
    mounts += [_dump(m) for m in pod.volume_mounts]

    container: dict[str, Any] = {
        "name": ENGINE_CONTAINER,
        "image": spec.image,
        "imagePullPolicy": spec.image_pull_policy,
        "command": ["specserve", "serve"],
        "args": engine_args(spec, served_name),
        "ports": [
            {"name": HTTP_PORT_NAME, "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": CONTROL_PORT_NAME, "containerPort": CONTROL_PORT, "protocol": "TCP"},
        ],
        "env": _env(owner, spec),
        **({"envFrom": [_dump(e) for e in pod.env_from]} if pod.env_from else {}),
        "resources": _resources(spec),
        "startupProbe": _probe(startup_probe_timing(spec)),
        "readinessProbe": _probe(READINESS_PROBE),
        "livenessProbe": _probe(LIVENESS_PROBE),
        "volumeMounts": mounts,
        "securityContext": _security_context(CONTAINER_SECURITY_CONTEXT,
                                             pod.container_security_context),
        # Stop only once the endpoint is gone from every router: the EndpointSlice marks a
        # terminating pod not ready at once, but the gateways (and kube-proxy) see that a watch
        # event later, and requests they send meanwhile must still be served.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRE_STOP_DELAY_S)]}}},
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        "terminationGracePeriodSeconds": termination_grace_s(spec),
        "securityContext": _security_context(POD_SECURITY_CONTEXT, pod.security_context),
        # No Service environment variables: a Service named `vllm` in the namespace would
        # otherwise inject VLLM_PORT=tcp://..., which vLLM reads as its own setting and fails
        # on (vLLM's docs warn of it); the engine finds nothing through them anyway.
        "enableServiceLinks": False,
        # The engine never calls the API server: no token unless asked for.
        "automountServiceAccountToken": pod.automount_service_account_token,
    }
    if pod.service_account_name:
        pod_spec["serviceAccountName"] = pod.service_account_name
    if pod.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [_dump(s) for s in pod.image_pull_secrets]
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    if pod.runtime_class_name:
        pod_spec["runtimeClassName"] = pod.runtime_class_name
    if pod.affinity is not None and _dump(pod.affinity):
        pod_spec["affinity"] = _dump(pod.affinity)
    if spec.resources.node_selector:
        pod_spec["nodeSelector"] = dict(spec.resources.node_selector)
    if spec.resources.tolerations:
        # Empty strings left out: the API server drops them (omitempty), and a field it drops
        # would read as drift on every pass.
        pod_spec["tolerations"] = [
            {k: v for k, v in t.model_dump(by_alias=True, exclude_none=True).items() if v != ""}
            for t in spec.resources.tolerations
        ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, spec, deployment_name(owner), "engine"),
        "spec": {
            "replicas": spec.replicas.initial if replicas is None else replicas,
            "selector": {"matchLabels": selector_labels(owner)},
            "strategy": deployment_strategy(spec),
            "progressDeadlineSeconds": progress_deadline_s(spec),
            "template": {
                "metadata": _pod_metadata(owner, spec),
                "spec": pod_spec,
            },
        },
    }


def service(owner: Owner, spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, spec, service_name(owner), "engine"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner),
            "ports": [
                {"name": HTTP_PORT_NAME, "port": HTTP_PORT, "targetPort": HTTP_PORT_NAME,
                 "protocol": "TCP"},
                {"name": CONTROL_PORT_NAME, "port": CONTROL_PORT, "targetPort": CONTROL_PORT_NAME,
                 "protocol": "TCP"},
            ],
        },
    }


def secret(owner: Owner, spec: SpecServeDeploymentSpec, token: str) -> dict[str, Any]:
    """The control token Secret. The caller makes the token and creates this only once."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": _metadata(owner, spec, secret_name(owner), "control-token"),
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()},
    }


def configmap(
    owner: Owner, spec: SpecServeDeploymentSpec, policy: dict[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, spec, configmap_name(owner), "policy"),
        "data": {POLICY_KEY: policy_json(policy)},
    }


def servicemonitor(owner: Owner, spec: SpecServeDeploymentSpec,
                   default_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ServiceMonitor of both ports. Its labels: `default_labels` (the operator's,
    SPECSERVE_MONITOR_LABELS) under spec.metrics.serviceMonitorLabels, under the recommended
    labels (which stay ours). A Prometheus selects ServiceMonitors by these labels:
    kube-prometheus-stack's, by default, those with `release: <its release name>`."""
    interval = spec.metrics.scrape_interval
    meta = _metadata(owner, spec, servicemonitor_name(owner), "metrics")
    meta["labels"] = {**(default_labels or {}), **spec.metrics.service_monitor_labels,
                      **meta["labels"]}
    return {
        "apiVersion": SERVICEMONITOR_API,
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            # The SLO loop selects series by these (prometheus.selector), not by `service`.
            "podTargetLabels": list(contract.SERIES_POD_LABELS),
            "endpoints": [
                {"port": HTTP_PORT_NAME, "path": METRICS_PATH, "interval": interval},
                {"port": CONTROL_PORT_NAME, "path": METRICS_PATH, "interval": interval},
            ],
        },
    }


def disruption_budget(owner: Owner, spec: SpecServeDeploymentSpec) -> dict[str, Any]:
    """The engine pods' PodDisruptionBudget (see `spec.DisruptionBudgetSpec`).

    unhealthyPodEvictionPolicy AlwaysAllow: a pod that runs but is not Ready (still loading,
    or crash-looping) may always be evicted. With the default (IfHealthyBudget) such pods are
    evictable only while the budget holds, so two broken pods of three would block a drain;
    they serve nothing, so evicting them costs nothing. (Beta and on since Kubernetes 1.27, GA
    in 1.31; an older API server drops the field, which would read as drift.)
    """
    return {
        "apiVersion": PDB_API,
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(owner, spec, disruption_budget_name(owner), "engine"),
        "spec": {
            "maxUnavailable": spec.disruption_budget.max_unavailable,
            "selector": {"matchLabels": selector_labels(owner)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
