"""The SpecServeDeployment resource as pydantic models: the single source of truth.

`crds/specserve.io_specservedeployments.yaml` is generated from these models
(`python -m specserve_operator.crdgen`), and the operator validates every spec it sees with
them (`parse_spec`), so the CRD's OpenAPI schema and the operator can never disagree about
field names, types, bounds or defaults. Cross-field rules (min <= max, a draft only when
speculating, ...) live in `model_validator`s here, with messages a user can act on, and each
one that CEL can express has its twin next to it (`cel_rules`): an `x-kubernetes-validations`
rule in the CRD with the same message, so the API server refuses such a spec at `kubectl
apply` (and `kubectl scale` beyond `replicas.max`) before the operator ever sees it.
`tests/operator/test_operator_cel.py` evaluates them with a CEL implementation against the
malformed corpus.

CEL rules, as a real API server runs them: evaluated after defaulting (fields with a default
are present; optional ones need `has()`, and a null counts as absent); every string or list
a rule walks has a maxLength/maxItems, so the estimated cost stays within the per-rule
budget; no transition rules (`oldSelf`) and no `quantity()` (no rule compares quantities).
They need Kubernetes >= 1.29 (CRD validation rules GA; messageExpression is part of them).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from kubernetes.client import V1Affinity, V1PodSecurityContext, V1SecurityContext, V1Volume
from kubernetes.utils.quantity import parse_quantity
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

import specserve_contract as contract
from specserve_contract import (
    API_VERSION,
    AUTOSCALING_MODES,
    CONTROL_TOKEN_DIR,
    DATA_PARALLEL_FLAGS,
    DATA_PARALLEL_REFUSED,
    ENV_CONTROL_TOKEN,
    ENV_CONTROL_TOKEN_FILE,
    ENV_POLICY_FILE,
    ENV_PROFILE_FILE,
    HOME_DIR,
    K_LIMIT,
    KIND,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PART_OF,
    LABEL_VERSION,
    MODEL_CACHE_DIR,
    MODELS_MOUNT,
    NO_DRAFT,
    OPERATOR_MODES,
    POLICY_DIR,
    PROFILE_DIR,
    PROFILE_KEY,
    SHM_DIR,
    TINY,
    TMP_DIR,
    data_parallel_flag,
)

DEFAULT_IMAGE = "specserve/engine:0.1.0"

# A Kubernetes resource quantity, restricted to the common forms ("500m", "2", "16Gi", "1.5").
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^[0-9]+(ms|s|m|h)$"
# Kubernetes names (apimachinery validation): a DNS-1123 label, a label value, a qualified name
# (label and annotation keys: an optional DNS-subdomain prefix and `/`, then a name part).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
# An extended resource: domain-prefixed (nvidia.com/gpu, nvidia.com/mig-1g.10gb, amd.com/gpu).
EXTENDED_RESOURCE = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"
# Environment variable names as Kubernetes validates them (before 1.30's relaxed rule).
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
# Flags of `vllm serve` that SpecServe sets itself; passing them again would contradict the spec.
RESERVED_VLLM_FLAGS = (
    "--model",
    "--host",
    "--port",
    "--served-model-name",
    "--speculative-config",
    "--scheduler-cls",
)


class SpecServeModel(BaseModel):
    """Base of every model here: camelCase on the wire, unknown fields refused, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def cel(rule: str, message: str, message_expression: str | None = None) -> dict[str, str]:
    """One CEL rule of the CRD: `message` is the validator's message (messageExpression: the
    same message with the values in it, as the validator formats them)."""
    out = {"rule": rule, "message": message}
    if message_expression:
        out["messageExpression"] = message_expression
    return out


def cel_rules(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` that puts `rules` on the model's schema (crdgen keeps them)."""
    return {"x-kubernetes-validations": list(rules)}


def _cel_string(text: str) -> str:
    """A CEL string literal of `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _s(field: str) -> str:
    """A CEL string of an integer field (for messageExpression)."""
    return f"' + string(self.{field}) + '"


# --------------------------------------------------------------------------------------- spec


class PvcSource(SpecServeModel):
    """A PersistentVolumeClaim holding model weights, mounted read-only at /models."""

    claim_name: str = Field(
        min_length=1, max_length=253, pattern=DNS_SUBDOMAIN, description="Name of the PVC."
    )
    sub_path: str = Field(
        default="", max_length=1024, description="Folder inside the PVC to mount at /models."
    )


CACHE_SIZE_WITH_CLAIM = "model.cache: set sizeLimit (an emptyDir) or claimName (a PVC), not both"


class ModelCacheSpec(SpecServeModel):
    """Where the engine keeps downloaded weights (HF_HOME, mounted at /var/cache/huggingface):
    an emptyDir by default (it outlives container restarts, not the pod), or an existing PVC
    (it outlives the pod too: a rescheduled pod does not download again)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(
        cel("!has(self.sizeLimit) || !has(self.claimName)", CACHE_SIZE_WITH_CLAIM),
    ))

    size_limit: str | None = Field(
        default=None, max_length=64, pattern=QUANTITY,
        description="sizeLimit of the emptyDir, e.g. `100Gi` (it counts against "
        "resources.ephemeralStorage; the kubelet evicts a pod that exceeds it).",
    )
    claim_name: str | None = Field(
        default=None, min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
        description="An existing PVC in the namespace, mounted read-write (ReadWriteMany for "
        "more than one pod), instead of the emptyDir.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ModelCacheSpec:
        if self.size_limit is not None and self.claim_name is not None:
            raise ValueError(CACHE_SIZE_WITH_CLAIM)
        return self


class ModelSpec(SpecServeModel):
    """What to serve: the target model, its draft, and the name clients send."""

    target: str = Field(
        min_length=1,
        max_length=1024,
        description="Target model: a Hugging Face id (org/name), an absolute path in the image, "
        "a path relative to the PVC when `pvc` is set, or `tiny` for the built-in tiny model.",
    )
    draft: str = Field(
        default=NO_DRAFT,
        min_length=1,
        max_length=1024,
        description="Draft model, same forms as `target`, or `none` for no speculation.",
    )
    served_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$",
        description="Model name clients send in OpenAI requests; default: the resource name.",
    )
    pvc: PvcSource | None = Field(default=None, description="Volume holding the weights.")
    cache: ModelCacheSpec = Field(
        default_factory=ModelCacheSpec,
        description="Download cache (HF_HOME): an emptyDir (default) or an existing PVC.",
    )


class SpeculationSpec(SpecServeModel):
    """How many draft tokens to verify per step."""

    mode: Literal[OPERATOR_MODES] = Field(  # type: ignore[valid-type]
        default="adaptive",
        description="adaptive: the policy picks K every step (0..kMax); static: always staticK; "
        "off: no speculation (draft must be `none`).",
    )
    k_max: int = Field(
        default=5, ge=1, le=K_LIMIT, description=f"Largest K the policy may use (1-{K_LIMIT})."
    )
    static_k: int = Field(
        default=3, ge=1, le=K_LIMIT, description="K used in static mode (<= kMax)."
    )


class SloSpec(SpecServeModel):
    """Latency objectives the operator tunes and scales for."""

    model_config = ConfigDict(json_schema_extra=cel_rules(
        cel("self.ttftP90Ms <= self.ttftP99Ms", "ttftP90Ms must not exceed ttftP99Ms",
            f"'ttftP90Ms ({_s('ttftP90Ms')}) must not exceed ttftP99Ms ({_s('ttftP99Ms')})'"),
    ))

    ttft_p90_ms: int = Field(
        default=2000, ge=1, le=600_000, description="Time to first token, p90 target (ms)."
    )
    ttft_p99_ms: int = Field(
        default=5000, ge=1, le=600_000, description="Time to first token, p99 target (ms)."
    )
    tpot_p90_ms: int = Field(
        default=100, ge=1, le=60_000, description="Time per output token, p90 target (ms)."
    )
    attainment: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="Fraction of requests that must meet the targets (0 < x <= 1).",
    )

    @model_validator(mode="after")
    def _p90_below_p99(self) -> SloSpec:
        if self.ttft_p90_ms > self.ttft_p99_ms:
            raise ValueError(
                f"ttftP90Ms ({self.ttft_p90_ms}) must not exceed ttftP99Ms ({self.ttft_p99_ms})"
            )
        return self


class ReplicasSpec(SpecServeModel):
    """Engine pod count: bounds, and the count to start with (or keep, see AutoscalingSpec).

    `kubectl scale ssd/NAME --replicas=N` sets `initial` (the scale subresource's
    specReplicasPath); what that does depends on spec.autoscaling.mode.
    """

    # The second rule also holds on the scale subresource: the API server validates the whole
    # object after `kubectl scale` (or an HPA) writes initial, so a count above max is refused.
    # (Checked only with consistent bounds, as `_ordered` does: one message per mistake.)
    model_config = ConfigDict(json_schema_extra=cel_rules(
        cel("self.min <= self.max", "min must be <= max",
            f"'min ({_s('min')}) must be <= max ({_s('max')})'"),
        cel("self.min > self.max || !has(self.initial) || "
            "(self.min <= self.initial && self.initial <= self.max)",
            "initial must lie between min and max",
            f"'initial ({_s('initial')}) must lie between min ({_s('min')}) and max "
            f"({_s('max')})'"),
    ))

    min: int = Field(default=1, ge=0, le=1000, description="Fewest engine pods.")
    max: int = Field(default=1, ge=1, le=1000, description="Most engine pods.")
    # No default: unset means `min`, so a manifest in Git may leave it out whatever min is
    # (a default of 1 would be refused with min >= 2, forcing GitOps to own the field an HPA
    # writes). The scale subresource reads an unset initial as 0.
    initial: int | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="min..max (unset: min); the scale subresource's replicas. "
        "autoscaling.mode builtin: the count before the operator's first decision; external: "
        "the count an HPA/KEDA sets; off: the fixed count.",
    )

    @model_validator(mode="before")
    @classmethod
    def _initial_from_min(cls, data: Any) -> Any:
        """An unset (or null) initial is min, so that after validation it is always a count
        (a null counts as absent in the CRD's rules too)."""
        if isinstance(data, dict) and data.get("initial") is None:
            low = data.get("min", cls.model_fields["min"].default)
            # A malformed min is reported once, as min's own error.
            data = {**data, "initial": low if isinstance(low, int) else None}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        if self.initial is None or not self.min <= self.initial <= self.max:
            raise ValueError(
                f"initial ({self.initial}) must lie between min ({self.min}) and max ({self.max})"
            )
        return self


class AutoscalingSpec(SpecServeModel):
    """Who sets the engine pod count (the operator never writes the spec in any mode)."""

    mode: Literal[AUTOSCALING_MODES] = Field(  # type: ignore[valid-type]
        default="builtin",
        description="builtin: the operator's SLO loop sets the Deployment's replicas within "
        "replicas.min..max and reports them in status.autoscale; external: the operator exports "
        "its recommendation (metric specserve_operator_desired_replicas) and follows "
        "replicas.initial, which an HPA or KEDA sets through the scale subresource; off: "
        "replicas.initial, fixed.",
    )
    scale_to_zero_after_seconds: int | None = Field(
        default=None,
        ge=60,
        le=7 * 24 * 3600,
        description="With replicas.min 0: scale to zero once neither the engines nor the "
        "gateway have seen a request for the model for this long (the gateway's metrics must "
        "be in the operator's Prometheus: held requests there scale it back to 1). Unset: "
        "never scale to zero (a deployment at zero still scales to 1 on held requests).",
    )


ROLLOUT_STUCK = ("maxSurge and maxUnavailable must not both be 0: the rollout could never "
                 "replace a pod (maxUnavailable 1 needs no spare GPU)")


# The default is GPU-safe: RollingUpdate with maxSurge 0 and maxUnavailable 1 stops one old pod
# before starting its replacement, so a rollout never asks for more GPUs than the pods already
# hold. Kubernetes' own default (25% surge, rounded up: one extra pod) needs a spare GPU; on a
# full node pool the extra pod stays Pending and the rollout never finishes. The price: one pod
# fewer while its replacement loads (with one replica, an outage). maxSurge 1 suits clusters
# with a spare GPU where capacity must not dip; Recreate stops every pod first (for versions
# that must not run side by side; maxSurge and maxUnavailable are then ignored).
class RolloutSpec(SpecServeModel):
    """How the engine pods are replaced on a change; the default needs no spare GPU."""

    model_config = ConfigDict(json_schema_extra=cel_rules(
        cel("self.strategy == 'Recreate' || self.maxSurge + self.maxUnavailable > 0",
            ROLLOUT_STUCK),
    ))

    strategy: Literal["RollingUpdate", "Recreate"] = Field(
        default="RollingUpdate",
        description="RollingUpdate: replace pods a few at a time; Recreate: stop all, then start.",
    )
    max_surge: int = Field(
        default=0, ge=0, le=1000,
        description="Extra pods (each with its GPUs) a rolling update may start (0).",
    )
    max_unavailable: int = Field(
        default=1, ge=0, le=1000,
        description="Pods a rolling update may stop before their replacements are ready (1).",
    )
    drain_seconds: int = Field(
        default=120, ge=0, le=3600,
        description="A stopping engine pod finishes its in-flight requests for up to this many "
        "seconds (new ones are refused) before it exits (0: it aborts them).",
    )

    @model_validator(mode="after")
    def _moves(self) -> RolloutSpec:
        if self.strategy == "RollingUpdate" and self.max_surge + self.max_unavailable == 0:
            raise ValueError(ROLLOUT_STUCK)
        return self


class StartupSpec(SpecServeModel):
    """How long an engine may take to load before the kubelet restarts it."""

    timeout_seconds: int = Field(
        default=1800, ge=60, le=86_400,
        description="From container start to serving (weights downloaded and loaded, "
        "compiled): the startup probe's budget (rounded up to its 10 s period), after which "
        "the kubelet restarts the container. The Deployment's progressDeadlineSeconds follows "
        "it.",
    )


EXISTS_WITH_VALUE = "a toleration with operator Exists must not set value"
SECONDS_WITHOUT_NOEXECUTE = "tolerationSeconds only applies to effect NoExecute"


# Voluntary disruptions (node drains, cluster-autoscaler scale-down, upgrades) evict engine pods
# through the Eviction API, which honours a PodDisruptionBudget. maxUnavailable 1 lets a drain
# take one engine pod at a time, waiting for its replacement to be Ready (minutes: it loads the
# model) before the next; with replicas 1 a drain still proceeds (an outage while the pod
# moves) instead of blocking the node forever, as minAvailable 1 would. maxUnavailable 0 blocks
# every voluntary eviction: for pods that must never move, at the price of manual drains.
class DisruptionBudgetSpec(SpecServeModel):
    """The engine pods' PodDisruptionBudget (policy/v1): how many a node drain may evict."""

    enabled: bool = Field(
        default=True, description="Create the PodDisruptionBudget (false: none; an existing one "
        "the operator made is deleted).",
    )
    max_unavailable: int = Field(
        default=1, ge=0, le=1000,
        description="Engine pods voluntary disruptions may take down at once (0 blocks drains).",
    )


class Toleration(SpecServeModel):
    """A pod toleration (the subset of core/v1 Toleration SpecServe passes through)."""

    model_config = ConfigDict(json_schema_extra=cel_rules(
        cel("self.operator != 'Exists' || !has(self.value) || self.value == ''",
            EXISTS_WITH_VALUE),
        cel("!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            SECONDS_WITHOUT_NOEXECUTE),
    ))

    key: str | None = Field(default=None, max_length=316)
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = Field(default=None, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _exists_has_no_value(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError(EXISTS_WITH_VALUE)
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError(SECONDS_WITHOUT_NOEXECUTE)
        return self


class ResourcesSpec(SpecServeModel):
    """Compute for each engine pod."""

    gpu: int = Field(
        default=0, ge=0, le=16,
        description="GPUs (or MIG slices) per pod, as the limit `gpuResourceName` (0 = CPU).",
    )
    cpu: str | None = Field(
        default=None, pattern=QUANTITY,
        description="CPU request, e.g. `4` or `500m` (no limit unless cpuLimit: a CPU limit "
        "throttles the engine's CPU work, which shows as TTFT spikes).",
    )
    cpu_limit: str | None = Field(
        default=None, pattern=QUANTITY,
        description="CPU limit (default: none); equal to cpu and memory set gives the pod "
        "Guaranteed QoS (e.g. for the kubelet's static CPU manager).",
    )
    memory: str | None = Field(
        default=None, pattern=QUANTITY, description="Memory request and limit, e.g. `16Gi`."
    )
    node_selector: dict[str, str] = Field(default_factory=dict, description="Pod nodeSelector.")
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=32, description="Pod tolerations."
    )
    gpu_resource_name: str = Field(
        default=DEFAULT_GPU_RESOURCE, max_length=253, pattern=EXTENDED_RESOURCE,
        description="The extended resource `gpu` counts: nvidia.com/gpu, a MIG profile "
        "(nvidia.com/mig-1g.10gb), amd.com/gpu, ...",
    )
    ephemeral_storage: str | None = Field(
        default=None, pattern=QUANTITY,
        description="ephemeral-storage request and limit, e.g. `50Gi` (weights downloaded into "
        "the container's filesystem count against it).",
    )
    shm_size: str | None = Field(
        default=None, pattern=QUANTITY,
        description="sizeLimit of the memory-backed /dev/shm (default: none, bounded by the "
        "memory limit); tensor parallel needs several GiB.",
    )

    @model_validator(mode="after")
    def _cpu_limit_fits(self) -> ResourcesSpec:
        if self.cpu_limit and self.cpu and parse_quantity(self.cpu_limit) < parse_quantity(
                self.cpu):
            raise ValueError(f"cpuLimit ({self.cpu_limit}) is below cpu ({self.cpu}): a "
                             "request may not exceed its limit")
        return self

    @model_validator(mode="after")
    def _shm_fits(self) -> ResourcesSpec:
        if self.shm_size and self.memory and parse_quantity(self.shm_size) > parse_quantity(
                self.memory):
            raise ValueError(
                f"shmSize ({self.shm_size}) exceeds memory ({self.memory}): /dev/shm is memory "
                "and counts against the pod's memory limit"
            )
        return self


# ------------------------------------------------------------------------------- pod template
# What the engine pod needs on real clusters beyond the model: credentials (HF_TOKEN for gated
# models), a model-cache volume, scheduling. Names follow Kubernetes' own PodSpec and Container
# (as KServe's predictor, which embeds a PodSpec, and KubeAI's Model `env`/`envFrom`/
# `priorityClassName` do). Small types are modelled here, so the CRD schema describes them;
# `affinity` and `volumes` are the official client's pydantic models (`kubernetes.client`), so
# the operator checks every field and type of them, while the CRD keeps them opaque
# (x-kubernetes-preserve-unknown-fields: their full schemas would be most of the CRD).

# Names in the engine pod the operator owns (manifests.deployment): volume -> mount path.
OPERATOR_VOLUMES: dict[str, str] = {
    "policy": POLICY_DIR,
    "control-token": CONTROL_TOKEN_DIR,
    "dshm": SHM_DIR,
    "models": MODELS_MOUNT,
    "profile": PROFILE_DIR,
    "engine-home": HOME_DIR,
    "engine-tmp": TMP_DIR,
    "model-cache": MODEL_CACHE_DIR,
}
# Of these, the writable scratch folders: a user's mount may sit under one (nested mounts are
# fine: /tmp/x, a folder of their own in HOME), just not at one.
NESTABLE_MOUNTS = frozenset({HOME_DIR, TMP_DIR, MODEL_CACHE_DIR})
# Environment variables the operator sets on the engine container.
# (SPECSERVE_CONTROL_TOKEN is not set, but refused too: the token file would win over it.)
OPERATOR_ENV = (ENV_CONTROL_TOKEN_FILE, ENV_CONTROL_TOKEN, ENV_POLICY_FILE, ENV_PROFILE_FILE)
# Pod labels the operator sets: the first two select the pods (the Deployment, the Service,
# the gateway and the SLO loop find them by these), the others are the recommended labels.
OPERATOR_LABELS = (LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT, LABEL_PART_OF, LABEL_MANAGED_BY,
                   LABEL_VERSION)


class KeyRef(SpecServeModel):
    """A key of a Secret or ConfigMap in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = Field(default=None, description="Start the pod without it.")


class FieldRef(SpecServeModel):
    """A field of the pod (`metadata.name`, `status.podIP`, ...)."""

    field_path: str = Field(min_length=1, max_length=256)
    api_version: str | None = Field(default=None, max_length=64, description="Default v1.")


class ResourceFieldRef(SpecServeModel):
    """A resource of a container (`limits.memory`, `requests.cpu`, ...)."""

    resource: str = Field(min_length=1, max_length=256)
    container_name: str | None = Field(default=None, max_length=63, pattern=DNS_LABEL)
    divisor: str | None = Field(default=None, pattern=QUANTITY)


class EnvVarSource(SpecServeModel):
    """Where an environment variable's value comes from: exactly one of these."""

    secret_key_ref: KeyRef | None = None
    config_map_key_ref: KeyRef | None = None
    field_ref: FieldRef | None = None
    resource_field_ref: ResourceFieldRef | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvVarSource:
        if sum(v is not None for _, v in self) != 1:
            raise ValueError("valueFrom needs exactly one of secretKeyRef, configMapKeyRef, "
                             "fieldRef, resourceFieldRef")
        return self


class EnvVar(SpecServeModel):
    """An environment variable of the engine container (core/v1 EnvVar)."""

    name: str = Field(min_length=1, max_length=256, pattern=ENV_NAME)
    value: str | None = Field(default=None, max_length=32768)
    value_from: EnvVarSource | None = None

    @model_validator(mode="after")
    def _value_or_ref(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(f"env {self.name}: set value or valueFrom, not both")
        return self


class SourceRef(SpecServeModel):
    """A whole Secret or ConfigMap."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    optional: bool | None = None


class EnvFromSource(SpecServeModel):
    """Every key of a Secret or ConfigMap as environment variables (core/v1 EnvFromSource)."""

    prefix: str | None = Field(default=None, max_length=256, pattern=ENV_NAME)
    secret_ref: SourceRef | None = None
    config_map_ref: SourceRef | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvFromSource:
        if (self.secret_ref is None) == (self.config_map_ref is None):
            raise ValueError("envFrom needs exactly one of secretRef, configMapRef")
        return self


class LocalObjectReference(SpecServeModel):
    """A Secret in the resource's namespace, by name."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class VolumeMount(SpecServeModel):
    """Where the engine container mounts one of `pod.volumes` (core/v1 VolumeMount)."""

    name: str = Field(min_length=1, max_length=63, pattern=DNS_LABEL)
    mount_path: str = Field(min_length=2, max_length=4096, pattern=r"^/[^:]*$")
    sub_path: str | None = Field(default=None, max_length=4096, pattern=r"^([^/].*)?$")
    read_only: bool | None = None


def _qualified_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if len(name) > 63 or len(prefix) > 253 or not QUALIFIED_NAME.match(key):
        return (f"{key!r} is not a valid key: an optional DNS-subdomain prefix and '/', then "
                "up to 63 characters [A-Za-z0-9-_.] starting and ending alphanumeric")
    return None


def _mount_problem(path: str) -> str | None:
    """A path the operator mounts at (or one under it) would shadow the operator's volume."""
    norm = path.rstrip("/")
    for owned in OPERATOR_VOLUMES.values():
        if norm == owned or (norm.startswith(owned + "/") and owned not in NESTABLE_MOUNTS):
            return f"mountPath {path} is the operator's ({owned})"
    return None


class PodSpec(SpecServeModel):
    """The engine pod beyond model and compute: env, credentials, volumes, scheduling."""

    labels: dict[str, str] = Field(
        default_factory=dict, description="Extra pod labels (the operator's own are refused).")
    annotations: dict[str, str] = Field(default_factory=dict, description="Pod annotations.")
    env: list[EnvVar] = Field(
        default_factory=list, max_length=128,
        description="Engine container env, e.g. HF_TOKEN from a Secret (valueFrom.secretKeyRef).",
    )
    env_from: list[EnvFromSource] = Field(
        default_factory=list, max_length=16, description="Whole Secrets/ConfigMaps as env.")
    image_pull_secrets: list[LocalObjectReference] = Field(
        default_factory=list, max_length=16, description="Secrets to pull the engine image with.")
    priority_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN, description="Pod PriorityClass.")
    runtime_class_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="Pod RuntimeClass (e.g. `nvidia` where the GPU runtime is not the default).",
    )
    affinity: V1Affinity | None = Field(
        default=None, description="Pod affinity (core/v1 Affinity; checked by the operator).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    volumes: list[V1Volume] = Field(
        default_factory=list, max_length=32,
        description="Extra pod volumes (core/v1 Volume, e.g. a model-cache PVC; checked by the "
        "operator), mounted with volumeMounts.",
        json_schema_extra={"items": {"type": "object",
                                     "x-kubernetes-preserve-unknown-fields": True}},
    )
    volume_mounts: list[VolumeMount] = Field(
        default_factory=list, max_length=32,
        description="Mounts of `volumes` in the engine container.")
    # Security: defaults that pass Pod Security Admission `restricted` and OpenShift's
    # `restricted-v2` (manifests.POD_SECURITY_CONTEXT, CONTAINER_SECURITY_CONTEXT); these
    # override them field by field. No UID is pinned: the image's USER (10001), or the one
    # OpenShift assigns from the namespace's range.
    security_context: V1PodSecurityContext | None = Field(
        default=None,
        description="Pod securityContext (core/v1 PodSecurityContext; checked by the "
        "operator), over the defaults runAsNonRoot true and seccompProfile RuntimeDefault, "
        "field by field (e.g. runAsUser, fsGroup for a PVC that needs it).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    container_security_context: V1SecurityContext | None = Field(
        default=None,
        description="The engine container's securityContext (core/v1 SecurityContext; checked "
        "by the operator), over the defaults allowPrivilegeEscalation false and capabilities "
        "drop ALL, field by field (e.g. readOnlyRootFilesystem true).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="The pods' ServiceAccount (default: the namespace's `default`).",
    )
    automount_service_account_token: bool = Field(
        default=False,
        description="Mount the ServiceAccount's API token (the engine never calls the API "
        "server, so by default it gets none).",
    )

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            problem = _qualified_key_problem(key)
            if problem:
                raise ValueError(problem)
            if key in OPERATOR_LABELS:
                raise ValueError(f"{key} is set by the operator (it selects or describes the "
                                 "engine pods): leave it out")
            if len(value) > 63 or not re.match(LABEL_VALUE, value):
                raise ValueError(f"label {key}: {value!r} is not a valid label value (up to 63 "
                                 "characters [A-Za-z0-9-_.], alphanumeric at both ends)")
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            problem = _qualified_key_problem(key)
            if problem:
                raise ValueError(problem)
        return annotations

    @field_validator("env")
    @classmethod
    def _env(cls, env: list[EnvVar]) -> list[EnvVar]:
        seen: set[str] = set()
        for var in env:
            if var.name in OPERATOR_ENV:
                raise ValueError(f"{var.name} is set by the operator")
            if var.name in seen:
                raise ValueError(f"env {var.name} is set twice")
            seen.add(var.name)
        return env

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, volumes: list[V1Volume]) -> list[V1Volume]:
        seen: set[str] = set()
        for volume in volumes:
            if not re.match(DNS_LABEL, volume.name) or len(volume.name) > 63:
                raise ValueError(f"volume name {volume.name!r} is not a DNS-1123 label")
            if volume.name in OPERATOR_VOLUMES:
                raise ValueError(f"volume name {volume.name} is the operator's")
            if volume.name in seen:
                raise ValueError(f"volume {volume.name} is listed twice")
            seen.add(volume.name)
            sources = [k for k in volume.model_fields_set if k != "name"
                       and getattr(volume, k) is not None]
            if len(sources) != 1:
                raise ValueError(f"volume {volume.name} needs exactly one source (e.g. "
                                 f"persistentVolumeClaim, emptyDir, secret), has {len(sources)}")
            size = volume.empty_dir.size_limit if volume.empty_dir else None
            if size is not None and not re.match(QUANTITY, size):
                raise ValueError(f"volume {volume.name}: emptyDir.sizeLimit {size!r} is not a "
                                 "quantity (e.g. 16Gi)")
        return volumes

    @model_validator(mode="after")
    def _mounts(self) -> PodSpec:
        names = {v.name for v in self.volumes}
        paths: set[str] = set()
        for mount in self.volume_mounts:
            if mount.name not in names:
                raise ValueError(f"volumeMounts: {mount.name} is not one of pod.volumes")
            problem = _mount_problem(mount.mount_path)
            if problem:
                raise ValueError(f"volumeMounts: {problem}")
            if mount.mount_path.rstrip("/") in paths:
                raise ValueError(f"volumeMounts: {mount.mount_path} is mounted twice")
            paths.add(mount.mount_path.rstrip("/"))
        return self


class ConfigMapKeyRef(SpecServeModel):
    """A key of a ConfigMap in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(default=PROFILE_KEY, min_length=1, max_length=253)


class ProfileSpec(SpecServeModel):
    """Step-time profile of this hardware and these models (`specserve profile` writes one).

    Without a configMap the engine uses the profile cached next to the model, if any, else its
    built-in timing prior.
    """

    config_map: ConfigMapKeyRef | None = Field(
        default=None, description="A profile JSON stored in a ConfigMap."
    )


# Kubernetes label syntax: a key is an optional DNS-subdomain prefix and "/" and a name of at
# most 63 characters; a value is empty or a name.
LABEL_NAME_PART = r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)"
LABEL_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{LABEL_NAME_PART}$")
LABEL_VALUE = re.compile(rf"^{LABEL_NAME_PART}?$")


def label_problems(labels: dict[str, str]) -> list[str]:
    """What is wrong with a label map, as messages (empty: valid)."""
    out = []
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or len(key) > 317:
            out.append(f"{key!r} is not a valid label key")
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            out.append(f"label {key}: {value!r} is not a valid label value (at most 63 "
                       "letters, digits, '-', '_', '.', starting and ending alphanumeric)")
    return out


class SecretKeyRef(SpecServeModel):
    """A key of a Secret in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class MetricsSpec(SpecServeModel):
    """Where the operator reads SLO metrics, and how Prometheus scrapes the pods."""

    prometheus_url: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="Prometheus base URL the operator queries, e.g. http://prometheus:9090. "
        "Only a URL on the operator's allow-list (the chart's operator.prometheus.allowedUrls) "
        "or its default URL is queried.",
    )
    bearer_token_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a bearer token sent to Prometheus "
        "(Authorization: Bearer).",
    )
    ca_secret: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the PEM CA bundle that Prometheus' TLS certificate is "
        "checked against (default: the system's CAs).",
    )
    service_monitor: bool = Field(
        default=True,
        description="Create a ServiceMonitor when the Prometheus Operator's CRD exists.",
    )
    scrape_interval: str = Field(
        default="15s", pattern=DURATION, description="ServiceMonitor scrape interval."
    )
    service_monitor_labels: dict[str, str] = Field(
        default_factory=dict,
        max_length=32,
        description="Labels of the ServiceMonitor, over the operator's defaults (the chart's "
        "monitoring.labels, e.g. release: kube-prometheus-stack), so that the Prometheus "
        "whose serviceMonitorSelector asks for them scrapes the pods.",
    )

    @field_validator("service_monitor_labels")
    @classmethod
    def _label_syntax(cls, value: dict[str, str]) -> dict[str, str]:
        problems = label_problems(value)
        if problems:
            raise ValueError("; ".join(problems))
        return value


# The cross-field rules of the whole spec (`_consistent` below), as CEL. A reserved flag is the
# argument itself or its `--flag=value` form; the message names the first one in
# RESERVED_VLLM_FLAGS' order, as `_consistent` does. (vllmArgs has no default in the CRD: a
# list default_factory is not in the JSON schema, so the rule needs has().)
_RESERVED = "[" + ", ".join(f"'{f}'" for f in RESERVED_VLLM_FLAGS) + "]"
_IS_RESERVED = "(a == f || a.startsWith(f + '='))"
_DATA_PARALLEL = "[" + ", ".join(f"'{f}'" for f in DATA_PARALLEL_FLAGS) + "]"
SPEC_RULES = cel_rules(
    cel(f"self.speculation.mode != 'off' || self.model.draft == '{NO_DRAFT}'",
        "a draft model needs speculation.mode adaptive or static",
        '"model.draft is \'" + self.model.draft + "\' but speculation.mode is off: set '
        'model.draft to \'none\' or use mode adaptive or static"'),
    cel(f"self.speculation.mode == 'off' || self.model.draft != '{NO_DRAFT}'",
        "speculation.mode adaptive or static needs a draft model",
        "'speculation.mode ' + self.speculation.mode + ' needs a draft model: set model.draft "
        "or use speculation.mode off'"),
    cel("self.speculation.mode != 'static' || self.speculation.staticK <= self.speculation.kMax",
        "speculation.staticK must be <= speculation.kMax",
        f"'speculation.staticK ({_s('speculation.staticK')}) must be <= speculation.kMax "
        f"({_s('speculation.kMax')})'"),
    cel(f"self.model.draft != self.model.target || self.model.draft == '{TINY}'",
        "model.draft must differ from model.target"),
    cel("!has(self.autoscaling.scaleToZeroAfterSeconds) || self.replicas.min == 0",
        "autoscaling.scaleToZeroAfterSeconds needs replicas.min 0",
        "'autoscaling.scaleToZeroAfterSeconds needs replicas.min 0, not ' + "
        "string(self.replicas.min)"),
    cel(f"!has(self.vllmArgs) || self.vllmArgs.all(a, !{_RESERVED}.exists(f, {_IS_RESERVED}))",
        "vllmArgs must not contain a flag SpecServe sets itself",
        f"'vllmArgs must not contain ' + {_RESERVED}.filter(f, self.vllmArgs.exists(a, "
        f"{_IS_RESERVED}))[0] + ': SpecServe sets it from the spec'"),
    cel(f"!has(self.vllmArgs) || self.vllmArgs.all(a, !{_DATA_PARALLEL}.exists(f, "
        f"{_IS_RESERVED}))",
        "vllmArgs must not set vLLM's data-parallel size",
        f"'vllmArgs must not contain ' + {_DATA_PARALLEL}.filter(f, self.vllmArgs.exists(a, "
        f"{_IS_RESERVED}))[0] + ': ' + {_cel_string(DATA_PARALLEL_REFUSED)}"),
)
# Longest vllmArgs entry: bounds the cost the API server estimates for the rule above.
VLLM_ARG_MAX_LENGTH = 4096


class SpecServeDeploymentSpec(SpecServeModel):
    """Desired state of a SpecServe model deployment."""

    model_config = ConfigDict(json_schema_extra=SPEC_RULES)

    model: ModelSpec
    speculation: SpeculationSpec = Field(default_factory=SpeculationSpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    replicas: ReplicasSpec = Field(default_factory=ReplicasSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    startup: StartupSpec = Field(default_factory=StartupSpec)
    disruption_budget: DisruptionBudgetSpec = Field(default_factory=DisruptionBudgetSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    pod: PodSpec = Field(default_factory=PodSpec)
    image: str = Field(
        default=DEFAULT_IMAGE, min_length=1, max_length=512, pattern=r"^[^\s]+$",
        description="Engine container image.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    vllm_args: list[Annotated[str, Field(max_length=VLLM_ARG_MAX_LENGTH)]] = Field(
        default_factory=list,
        max_length=64,
        description="Extra `vllm serve` arguments, passed as is (after SpecServe's own).",
    )
    profile: ProfileSpec = Field(default_factory=ProfileSpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)

    @model_validator(mode="after")
    def _consistent(self) -> SpecServeDeploymentSpec:
        has_draft = self.model.draft != NO_DRAFT
        mode = self.speculation.mode
        if mode == "off" and has_draft:
            raise ValueError(
                f"model.draft is '{self.model.draft}' but speculation.mode is off: "
                "set model.draft to 'none' or use mode adaptive or static"
            )
        if mode != "off" and not has_draft:
            raise ValueError(
                f"speculation.mode {mode} needs a draft model: set model.draft "
                "or use speculation.mode off"
            )
        if mode == "static" and self.speculation.static_k > self.speculation.k_max:
            raise ValueError(
                f"speculation.staticK ({self.speculation.static_k}) must be <= "
                f"speculation.kMax ({self.speculation.k_max})"
            )
        if self.model.draft == self.model.target and self.model.draft != TINY:
            raise ValueError("model.draft must differ from model.target")
        if self.autoscaling.scale_to_zero_after_seconds is not None and self.replicas.min != 0:
            raise ValueError("autoscaling.scaleToZeroAfterSeconds needs replicas.min 0, not "
                             f"{self.replicas.min}")
        for flag in RESERVED_VLLM_FLAGS:
            if any(arg == flag or arg.startswith(flag + "=") for arg in self.vllm_args):
                raise ValueError(
                    f"vllmArgs must not contain {flag}: SpecServe sets it from the spec"
                )
        flag = data_parallel_flag(self.vllm_args)
        if flag is not None:
            raise ValueError(f"vllmArgs must not contain {flag}: {DATA_PARALLEL_REFUSED}")
        return self


# ------------------------------------------------------------------------------------- name
# A resource's name names its children (specserve_contract's *_name functions: NAME,
# NAME-control, NAME-policy) and is the `app.kubernetes.io/instance` label value of each. The
# API server accepts any DNS-1123 subdomain as a custom resource's name (`qwen2.5-7b`,
# `7b-chat`, 253 characters), but the engine Service NAME must be a DNS-1035 label
# (apimachinery's IsDNS1035Label, which ValidateServiceName applies: a lowercase letter first,
# then lowercase letters, digits and '-', a letter or digit last, at most 63 characters), and
# a label value has at most 63 characters. So a name is refused at `kubectl apply` unless every
# child's name stays a DNS-1035 label: at most 63 minus the longest suffix appended.
#
# The rules sit at the root of the CRD's schema, the only place where CEL may read
# `self.metadata.name` (the ValidationRule API reference: "apiVersion, kind, metadata.name and
# metadata.generateName are always accessible from the root of the object"). They are create-
# only (`optionalOldSelf`, `oldSelf.hasValue() || ...`): a root rule runs on every update (the
# status subresource and finalizer removal included, and validation ratcheting never skips
# the root, whose value always changes), so a plain rule would leave a resource created
# before the rule existed unable to take a status patch or lose kopf's finalizer, i.e. to be
# deleted. optionalOldSelf needs Kubernetes >= 1.30 (CRDValidationRatcheting, beta and on).
DNS_LABEL_MAX_LENGTH = 63
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
CHILD_NAMES = (contract.deployment_name, contract.service_name, contract.secret_name,
               contract.configmap_name, contract.servicemonitor_name,
               contract.disruption_budget_name)
# The longest suffix a child's name adds to the resource's name ("-control": 8).
NAME_SUFFIX_MAX_LENGTH = max(len(child("x")) - 1 for child in CHILD_NAMES)
NAME_MAX_LENGTH = DNS_LABEL_MAX_LENGTH - NAME_SUFFIX_MAX_LENGTH
# What the API server already enforces on any name (a DNS-1123 subdomain); declared in the
# CRD's metadata schema only so that the API server's cost estimate of the rules is bounded.
NAME_LIMIT = 253

_LONGEST_CHILD = max((child("NAME") for child in CHILD_NAMES), key=len)
_NAME_TOO_LONG = (f"metadata.name must be at most {NAME_MAX_LENGTH} characters, not {{n}}: the "
                  f"operator names a child {_LONGEST_CHILD}, and the name of every child must "
                  f"stay a DNS label of at most {DNS_LABEL_MAX_LENGTH}")
_NAME_NOT_DNS_1035 = ('metadata.name "{name}" is not a DNS-1035 label: it names the engine '
                      "Service, so it must start with a lowercase letter, hold only lowercase "
                      "letters, digits and hyphens, and end with a letter or digit")


def _cel_format(template: str, **fields: str) -> str:
    """A CEL string expression of `template` with each {field} replaced by a CEL expression."""
    parts = re.split(r"\{(\w+)\}", template)
    return " + ".join(fields[p] if i % 2 else _cel_string(p)
                      for i, p in enumerate(parts) if p or i % 2)


_CREATE_ONLY = "oldSelf.hasValue() || "
RESOURCE_RULES: list[dict[str, Any]] = [
    {**cel(f"{_CREATE_ONLY}size(self.metadata.name) <= {NAME_MAX_LENGTH}",
           _NAME_TOO_LONG.replace(", not {n}", ""),
           _cel_format(_NAME_TOO_LONG, n="string(size(self.metadata.name))")),
     "optionalOldSelf": True},
    {**cel(f"{_CREATE_ONLY}self.metadata.name.matches('{DNS_1035_LABEL}')",
           _NAME_NOT_DNS_1035.replace(' "{name}"', ""),
           _cel_format(_NAME_NOT_DNS_1035, name="self.metadata.name")),
     "optionalOldSelf": True},
]


def name_problems(name: str) -> list[str]:
    """Why a SpecServeDeployment may not be called `name` (RESOURCE_RULES' twin, with the
    same messages); empty when it may."""
    problems = []
    if len(name) > NAME_MAX_LENGTH:
        problems.append(_NAME_TOO_LONG.format(n=len(name)))
    if not re.fullmatch(DNS_1035_LABEL, name):
        problems.append(_NAME_NOT_DNS_1035.format(name=name))
    return problems


# ------------------------------------------------------------------------------------- status

Phase = Literal["Pending", "Progressing", "Running", "Degraded", "Invalid"]
ConditionType = Literal["Ready", "Progressing", "Degraded", "SLOMet", "PolicyApplied", "NoData",
                        "NameConflict", "RouteConflict"]
CONDITION_TYPES: tuple[str, ...] = ("Ready", "Progressing", "Degraded", "SLOMet", "PolicyApplied",
                                    "NoData", "NameConflict", "RouteConflict")


class Condition(SpecServeModel):
    """A standard Kubernetes condition."""

    type: ConditionType
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=128)
    message: str = Field(default="", max_length=32768)
    last_transition_time: str | None = None
    observed_generation: int | None = None


class ReplicasStatus(SpecServeModel):
    """Engine pod counts."""

    desired: int = 0
    current: int = 0
    ready: int = 0


class PolicyStatus(SpecServeModel):
    """The policy in the ConfigMap and how many pods acknowledged it."""

    version: int = 0
    applied_pods: int = 0
    failed_pods: int | None = Field(default=None, description="Ready pods that did not ack.")
    message: str | None = Field(default=None, max_length=4096, description="Last push result.")
    pushed_at: str | None = None


class SloSnapshotStatus(SpecServeModel):
    """The last measured SLO quantiles (from Prometheus)."""

    ttft_p90_ms: float | None = None
    ttft_p99_ms: float | None = None
    tpot_p90_ms: float | None = None
    attainment: float | None = None
    time: str | None = None
    state: Literal["ok", "noData", "error"] | None = Field(
        default=None, description="ok, noData (metrics missing) or error (Prometheus down).")
    reason: str | None = Field(default=None, max_length=4096, description="Why not ok.")
    no_data_reason: str | None = Field(
        default=None, max_length=64,
        description="The cause when not ok: NoPrometheusUrl, PrometheusUrlNotAllowed, "
        "CredentialsUnavailable, QueryError, NoTargets, TargetsDown, EmptySeries (the NoData "
        "condition's reason) or ScaledToZero (no pods on purpose: NoData False).")
    targets: int | None = Field(default=None, description="Targets Prometheus has (up series).")
    ttft_p50_ms: float | None = None
    tpot_p50_ms: float | None = None
    tpot_p99_ms: float | None = None
    request_rate: float | None = Field(default=None, description="Finished requests per second.")
    acceptance_rate: float | None = None
    step_predicted_ms: float | None = None
    step_observed_ms: float | None = None
    pods_scraped: int | None = None


class TuningStatus(SpecServeModel):
    """The tuning loop's hysteresis memory and its last decision."""

    over: int = Field(default=0, description="Snapshots in a row with TPOT p90 over target.")
    under: int = Field(default=0, description="Snapshots in a row well inside the target.")
    last_change: float | None = Field(default=None, description="Unix time of the last change.")
    decision: str | None = Field(default=None, max_length=4096)
    time: str | None = None


class ScaleRecommendation(SpecServeModel):
    """One raw replica recommendation, kept for the stabilisation windows."""

    time: float
    replicas: int


class AutoscaleStatus(SpecServeModel):
    """The autoscaler's last decision and the recommendations it stabilises over.

    In autoscaling mode builtin, `desired` (made in that mode) is the engine Deployment's
    replica count; in external mode it is the recommendation the operator exports.
    """

    mode: Literal[AUTOSCALING_MODES] | None = Field(  # type: ignore[valid-type]
        default=None, description="The spec.autoscaling.mode the decision was made in.")
    desired: int | None = None
    raw: int | None = None
    reason: str | None = Field(default=None, max_length=4096)
    time: str | None = None
    recommendations: list[ScaleRecommendation] = Field(default_factory=list, max_length=1000)
    idle_since: float | None = Field(
        default=None, description="Unix time since which every pass saw no request for the "
        "model (spec.autoscaling.scaleToZeroAfterSeconds); unset while busy or unknown.")


class SpecServeDeploymentStatus(SpecServeModel):
    """Observed state, written by the operator."""

    phase: Phase | None = None
    message: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    replicas: ReplicasStatus | None = None
    selector: str | None = Field(default=None, description="Label selector of the engine pods.")
    policy: PolicyStatus | None = None
    slo_snapshot: SloSnapshotStatus | None = None
    tuning: TuningStatus | None = None
    autoscale: AutoscaleStatus | None = None
    k: str | None = Field(default=None, description="Speculation summary (printer column K).")
    slo: str | None = Field(default=None, description="SLO summary (printer column SLO).")


class SpecServeDeployment(SpecServeModel):
    """The whole resource (what the CRD schema describes)."""

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: SpecServeDeploymentSpec
    status: SpecServeDeploymentStatus | None = None


# --------------------------------------------------------------------------------- validation


class SpecError(ValueError):
    """A spec the operator refuses; `str()` is a message for the user (status and event)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid spec: " + "; ".join(problems))


def _location(loc: tuple[int | str, ...]) -> str:
    path = "spec"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _clean(msg: str) -> str:
    # pydantic prefixes messages raised from validators with "Value error, ".
    return re.sub(r"^Value error, ", "", msg)


def format_errors(exc: ValidationError) -> list[str]:
    """One line per problem: `spec.replicas.min: Input should be ...`."""
    return [f"{_location(err['loc'])}: {_clean(err['msg'])}" for err in exc.errors()]


def parse_spec(spec: Any) -> SpecServeDeploymentSpec:
    """Validate a raw `spec` dict; raise SpecError with user-facing messages."""
    if not isinstance(spec, dict):
        raise SpecError(["spec: must be an object"])
    try:
        return SpecServeDeploymentSpec.model_validate(spec)
    except ValidationError as exc:
        raise SpecError(format_errors(exc)) from None
