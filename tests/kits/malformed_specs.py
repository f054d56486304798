"""Malformed SpecServeDeployment specs, each with the message the user must see.

Each case: (id, spec, expected message fragment, rejected by the CRD's OpenAPI schema).
Cases with `schema=False` are cross-field rules (pydantic validators, each with a CEL twin in
the CRD: test_operator_cel.py) or unknown fields (pruned / refused by `kubectl apply
--validate=strict` in a cluster): the OpenAPI schema alone cannot see them, the operator does.
"""

from __future__ import annotations

import copy
from typing import Any

VALID: dict[str, Any] = {
    "model": {"target": "org/target-1b", "draft": "org/draft-100m"},
    "speculation": {"mode": "adaptive", "kMax": 5, "staticK": 3},
    "replicas": {"min": 1, "max": 2, "initial": 1},
}


def _with(path: str, value: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = copy.deepcopy(VALID if base is None else base)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return spec


def _without(path: str) -> dict[str, Any]:
    spec = copy.deepcopy(VALID)
    node = spec
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    del node[leaf]
    return spec


_OFF = _with("speculation.mode", "off")

CASES: list[tuple[str, Any, str, bool]] = [
    ("min-above-max", _with("replicas", {"min": 3, "max": 2, "initial": 2}),
     "spec.replicas: min (3) must be <= max (2)", False),
    ("initial-above-max", _with("replicas", {"min": 1, "max": 2, "initial": 5}),
     "initial (5) must lie between min (1) and max (2)", False),
    ("initial-below-min", _with("replicas", {"min": 2, "max": 4, "initial": 1}),
     "initial (1) must lie between min (2) and max (4)", False),
    ("model-cache-size-and-claim",
     _with("model.cache", {"sizeLimit": "100Gi", "claimName": "hf-cache"}),
     "model.cache: set sizeLimit (an emptyDir) or claimName (a PVC), not both", False),
    ("model-cache-size-words", _with("model.cache", {"sizeLimit": "lots"}),
     "spec.model.cache.sizeLimit: String should match pattern", True),
    ("startup-timeout-below-a-minute", _with("startup", {"timeoutSeconds": 30}),
     "spec.startup.timeoutSeconds: Input should be greater than or equal to 60", True),
    ("startup-timeout-above-a-day", _with("startup", {"timeoutSeconds": 86_401}),
     "spec.startup.timeoutSeconds: Input should be less than or equal to 86400", True),
    ("draft-with-mode-off", _OFF, "speculation.mode is off", False),
    ("no-draft-adaptive", _with("model.draft", "none"), "needs a draft model", False),
    ("k-max-17", _with("speculation.kMax", 17),
     "spec.speculation.kMax: Input should be less than or equal to 16", True),
    ("k-max-0", _with("speculation.kMax", 0),
     "spec.speculation.kMax: Input should be greater", True),
    ("static-k-above-k-max",
     _with("speculation", {"mode": "static", "kMax": 4, "staticK": 6}),
     "speculation.staticK (6) must be <= speculation.kMax (4)", False),
    ("static-k-17", _with("speculation.staticK", 17), "spec.speculation.staticK", True),
    ("mode-unknown", _with("speculation.mode", "fast"),
     "spec.speculation.mode: Input should be 'adaptive', 'static' or 'off'", True),
    ("no-model", _without("model"), "spec.model: Field required", True),
    ("no-target", _with("model", {"draft": "org/draft"}), "spec.model.target: Field required",
     True),
    ("empty-target", _with("model.target", ""), "spec.model.target: String should have at least",
     True),
    ("draft-equals-target", _with("model.draft", "org/target-1b"),
     "model.draft must differ from model.target", False),
    ("bad-served-name", _with("model.servedName", "-chat"), "spec.model.servedName", True),
    ("bad-pvc-name", _with("model.pvc", {"claimName": "Models_PVC"}),
     "spec.model.pvc.claimName: String should match pattern", True),
    ("unknown-field", _with("replica", 3), "spec.replica: Extra inputs are not permitted", False),
    ("replicas-min-negative", _with("replicas.min", -1), "spec.replicas.min", True),
    ("replicas-max-zero", _with("replicas", {"min": 0, "max": 0, "initial": 0}),
     "spec.replicas.max: Input should be greater than or equal to 1", True),
    ("replicas-max-text", _with("replicas.max", "two"),
     "spec.replicas.max: Input should be a valid integer", True),
    ("ttft-zero", _with("slo", {"ttftP90Ms": 0}), "spec.slo.ttftP90Ms", True),
    ("ttft-p90-above-p99", _with("slo", {"ttftP90Ms": 6000, "ttftP99Ms": 5000}),
     "ttftP90Ms (6000) must not exceed ttftP99Ms (5000)", False),
    ("tpot-negative", _with("slo", {"tpotP90Ms": -5}), "spec.slo.tpotP90Ms", True),
    ("attainment-zero", _with("slo", {"attainment": 0}),
     "spec.slo.attainment: Input should be greater than 0", True),
    ("attainment-above-one", _with("slo", {"attainment": 1.5}),
     "spec.slo.attainment: Input should be less than or equal to 1", True),
    ("attainment-text", _with("slo", {"attainment": "high"}), "spec.slo.attainment", True),
    ("gpu-17", _with("resources", {"gpu": 17}), "spec.resources.gpu", True),
    ("gpu-negative", _with("resources", {"gpu": -1}), "spec.resources.gpu", True),
    ("memory-words", _with("resources", {"memory": "lots"}),
     "spec.resources.memory: String should match pattern", True),
    ("cpu-malformed", _with("resources", {"cpu": "1.5.2"}), "spec.resources.cpu", True),
    ("node-selector-int", _with("resources", {"nodeSelector": {"gpu": 1}}),
     "spec.resources.nodeSelector.gpu: Input should be a valid string", True),
    ("toleration-exists-with-value",
     _with("resources", {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}),
     "spec.resources.tolerations[0]: a toleration with operator Exists must not set value", False),
    ("toleration-bad-effect", _with("resources", {"tolerations": [{"effect": "Sometimes"}]}),
     "spec.resources.tolerations[0].effect", True),
    ("toleration-seconds-without-noexecute",
     _with("resources", {"tolerations": [{"key": "k", "tolerationSeconds": 5,
                                          "effect": "NoSchedule"}]}),
     "tolerationSeconds only applies to effect NoExecute", False),
    ("image-empty", _with("image", ""), "spec.image: String should have at least 1", True),
    ("image-with-space", _with("image", "specserve engine"), "spec.image: String should match",
     True),
    ("pull-policy-unknown", _with("imagePullPolicy", "Sometimes"), "spec.imagePullPolicy", True),
    ("vllm-args-port", _with("vllmArgs", ["--port", "9000"]),
     "vllmArgs must not contain --port: SpecServe sets it from the spec", False),
    ("vllm-args-model-eq", _with("vllmArgs", ["--model=x"]), "vllmArgs must not contain --model",
     False),
    # One EngineCore per pod: vLLM's data parallelism starts one per rank (DATA_PARALLEL_REFUSED).
    ("vllm-args-data-parallel", _with("vllmArgs", ["--max-model-len", "4096", "-dp", "2"]),
     "vllmArgs must not contain -dp: SpecServe needs one vLLM EngineCore per engine pod", False),
    ("vllm-args-data-parallel-eq", _with("vllmArgs", ["--data-parallel-size=4"]),
     "vllmArgs must not contain --data-parallel-size: SpecServe needs one vLLM EngineCore", False),
    ("vllm-args-string", _with("vllmArgs", "--enforce-eager"),
     "spec.vllmArgs: Input should be a valid list", True),
    # `builtin` was a field once, which no engine ever read: now refused like any unknown one.
    ("profile-builtin", _with("profile", {"builtin": "a100"}),
     "spec.profile.builtin: Extra inputs are not permitted", False),
    ("profile-configmap-no-name", _with("profile", {"configMap": {"key": "p.json"}}),
     "spec.profile.configMap.name: Field required", True),
    ("prometheus-url-no-scheme", _with("metrics", {"prometheusUrl": "prometheus:9090"}),
     "spec.metrics.prometheusUrl: String should match pattern", True),
    ("scrape-interval-words", _with("metrics", {"scrapeInterval": "soon"}),
     "spec.metrics.scrapeInterval", True),
    ("speculation-not-object", _with("speculation", "adaptive"),
     "spec.speculation: Input should be a valid dictionary", True),
    ("rollout-cannot-move", _with("rollout", {"maxSurge": 0, "maxUnavailable": 0}),
     "maxSurge and maxUnavailable must not both be 0", False),
    ("rollout-strategy-unknown", _with("rollout", {"strategy": "BlueGreen"}),
     "spec.rollout.strategy: Input should be 'RollingUpdate' or 'Recreate'", True),
    ("rollout-surge-negative", _with("rollout", {"maxSurge": -1}), "spec.rollout.maxSurge",
     True),
    ("autoscaling-mode-unknown", _with("autoscaling", {"mode": "hpa"}),
     "spec.autoscaling.mode: Input should be 'builtin', 'external' or 'off'", True),
    ("scale-to-zero-with-min-1", _with("autoscaling", {"scaleToZeroAfterSeconds": 600}),
     "autoscaling.scaleToZeroAfterSeconds needs replicas.min 0, not 1", False),
    ("scale-to-zero-too-soon",
     _with("autoscaling", {"scaleToZeroAfterSeconds": 10},
           _with("replicas", {"min": 0, "max": 2, "initial": 0})),
     "spec.autoscaling.scaleToZeroAfterSeconds: Input should be greater than or equal to 60",
     True),
]

# The pod template (spec.pod, and resources' gpuResourceName/ephemeralStorage/shmSize). Kept
# apart from CASES: the handler test applies every one of CASES to a running operator.
_VOL = {"name": "cache", "persistentVolumeClaim": {"claimName": "c"}}
POD_TEMPLATE_CASES: list[tuple[str, Any, str, bool]] = [
    ("env-name-with-space", _with("pod.env", [{"name": "HF TOKEN", "value": "x"}]),
     "spec.pod.env[0].name: String should match pattern", True),
    ("env-value-and-value-from",
     _with("pod.env", [{"name": "A", "value": "x",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
     "env A: set value or valueFrom, not both", False),
    ("env-value-from-empty", _with("pod.env", [{"name": "A", "valueFrom": {}}]),
     "valueFrom needs exactly one of secretKeyRef", False),
    ("env-secret-ref-no-key",
     _with("pod.env", [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf"}}}]),
     "spec.pod.env[0].valueFrom.secretKeyRef.key: Field required", True),
    ("env-value-int", _with("pod.env", [{"name": "A", "value": 1}]),
     "spec.pod.env[0].value: Input should be a valid string", True),
    ("env-operator-owned", _with("pod.env", [{"name": "SPECSERVE_POLICY_FILE", "value": "/x"}]),
     "SPECSERVE_POLICY_FILE is set by the operator", False),
    ("env-twice", _with("pod.env", [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]),
     "env A is set twice", False),
    ("env-from-both", _with("pod.envFrom", [{"secretRef": {"name": "a"},
                                             "configMapRef": {"name": "b"}}]),
     "envFrom needs exactly one of secretRef, configMapRef", False),
    ("pull-secret-string", _with("pod.imagePullSecrets", ["regcred"]),
     "spec.pod.imagePullSecrets[0]: Input should be a valid dictionary", True),
    ("priority-class-upper", _with("pod.priorityClassName", "High"),
     "spec.pod.priorityClassName: String should match pattern", True),
    ("label-selector-override", _with("pod.labels", {"app.kubernetes.io/instance": "other"}),
     "app.kubernetes.io/instance is set by the operator", False),
    ("label-bad-value", _with("pod.labels", {"team": "a b"}), "is not a valid label value",
     False),
    ("annotation-bad-key", _with("pod.annotations", {"not a key": "x"}),
     "'not a key' is not a valid key", False),
    ("affinity-not-object", _with("pod.affinity", "spread"),
     "spec.pod.affinity: Input should be a valid dictionary", True),
    ("affinity-unknown-field", _with("pod.affinity", {"nodeAfinity": {}}),
     "spec.pod.affinity.nodeAfinity: Extra inputs are not permitted", False),
    ("affinity-no-topology-key",
     _with("pod.affinity", {"podAntiAffinity": {
         "requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {}}]}}),
     "requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey: Field required", False),
    ("affinity-weight-text",
     _with("pod.affinity", {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
         {"weight": "high", "podAffinityTerm": {"topologyKey": "zone"}}]}}),
     "preferredDuringSchedulingIgnoredDuringExecution[0].weight: Input should be a valid "
     "integer", False),
    ("volume-no-source", _with("pod.volumes", [{"name": "cache"}]),
     "volume cache needs exactly one source", False),
    ("volume-two-sources",
     _with("pod.volumes", [{"name": "cache", "emptyDir": {}, "persistentVolumeClaim": {
         "claimName": "c"}}]), "volume cache needs exactly one source", False),
    ("volume-claim-name-int",
     _with("pod.volumes", [{"name": "cache", "persistentVolumeClaim": {"claimName": 7}}]),
     "spec.pod.volumes[0].persistentVolumeClaim.claimName: Input should be a valid string",
     False),
    ("volume-unknown-source", _with("pod.volumes", [{"name": "c", "s3": {"bucket": "b"}}]),
     "spec.pod.volumes[0].s3: Extra inputs are not permitted", False),
    ("volume-operator-name", _with("pod.volumes", [{"name": "dshm", "emptyDir": {}}]),
     "volume name dshm is the operator's", False),
    ("volume-size-words", _with("pod.volumes", [{"name": "s", "emptyDir": {"sizeLimit": "big"}}]),
     "emptyDir.sizeLimit 'big' is not a quantity", False),
    ("mount-unknown-volume",
     _with("pod", {"volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}),
     "volumeMounts: cache is not one of pod.volumes", False),
    ("mount-over-shm",
     _with("pod", {"volumes": [_VOL],
                   "volumeMounts": [{"name": "cache", "mountPath": "/dev/shm"}]}),
     "mountPath /dev/shm is the operator's", False),
    ("mount-over-tmp",
     _with("pod", {"volumes": [_VOL], "volumeMounts": [{"name": "cache", "mountPath": "/tmp/"}]}),
     "mountPath /tmp/ is the operator's (/tmp)", False),
    ("mount-relative",
     _with("pod", {"volumes": [_VOL], "volumeMounts": [{"name": "cache", "mountPath": "cache"}]}),
     "spec.pod.volumeMounts[0].mountPath: String should match pattern", True),
    ("gpu-resource-no-domain", _with("resources", {"gpu": 1, "gpuResourceName": "gpu"}),
     "spec.resources.gpuResourceName: String should match pattern", True),
    ("ephemeral-storage-words", _with("resources", {"ephemeralStorage": "plenty"}),
     "spec.resources.ephemeralStorage: String should match pattern", True),
    ("shm-above-memory", _with("resources", {"memory": "16Gi", "shmSize": "32Gi"}),
     "shmSize (32Gi) exceeds memory (16Gi)", False),
    ("cpu-limit-below-request", _with("resources", {"cpu": "4", "cpuLimit": "2"}),
     "cpuLimit (2) is below cpu (4)", False),
    ("security-context-typo", _with("pod.securityContext", {"runAsNonroot": True}),
     "spec.pod.securityContext.runAsNonroot: Extra inputs are not permitted", False),
    ("container-security-context-wrong-type",
     _with("pod.containerSecurityContext", {"capabilities": {"drop": "ALL"}}),
     "spec.pod.containerSecurityContext.capabilities.drop: Input should be a valid list", False),
    ("service-account-upper-case", _with("pod.serviceAccountName", "Engine_SA"),
     "spec.pod.serviceAccountName: String should match pattern", True),
    ("pod-unknown-field", _with("pod.hostNetwork", True),
     "spec.pod.hostNetwork: Extra inputs are not permitted", False),
]
