"""What the engine, the operator, the gateway and the Helm chart must agree on, in one place.

Pure constants and string functions, standard library only, so every component (including the
slim operator/gateway image, which has no vLLM) imports it without pulling anything else in.
Change a value here and every side follows; the wire values are also pinned by tests
(tests/operator, tests/chart), so a change is a deliberate, visible break of the contract.
Prometheus metric names (exported and read) are in `specserve_contract.metrics`.

Environment variables (one constant each below; who writes them, who reads them):

    variable                         written by                          read by
    SPECSERVE_CONTROL_TOKEN_FILE     operator manifests (Secret mount)   engine scheduler
    SPECSERVE_CONTROL_TOKEN          user (`specserve serve`), profiler, engine scheduler (when
                                     tests                               no token file is set)
    SPECSERVE_POLICY_FILE            operator manifests (ConfigMap       engine scheduler
                                     mount), serving.engine_env
    SPECSERVE_PROFILE_FILE           operator manifests (profile mount), engine scheduler
                                     serving.engine_env
    SPECSERVE_MODE                   serving.engine_env (--mode)         engine scheduler
    SPECSERVE_STATIC_K               serving.engine_env (--static-k)     engine scheduler
    SPECSERVE_CONTROL_HOST           serving.engine_env                  engine scheduler
    SPECSERVE_CONTROL_PORT           serving.engine_env                  engine scheduler
    SPECSERVE_RECORD_STEPS           profiler                            engine scheduler
    SPECSERVE_RECORD_VERIFICATIONS   profiler                            engine scheduler
    SPECSERVE_RECORD_CYCLES          bench (cycle error)                 engine scheduler
    SPECSERVE_CACHE                  user, engine/Dockerfile             tiny (model cache)
    SPECSERVE_STATUS_INTERVAL_S      user, Helm chart                    operator (start-up)
    SPECSERVE_SLO_INTERVAL_S         user                                operator (start-up)
    SPECSERVE_PROMETHEUS_URL         user                                operator (start-up)
    SPECSERVE_SLO_WINDOW             user                                operator (start-up)
    SPECSERVE_MANAGE_SERVICEMONITORS Helm chart (manageServiceMonitors)  operator (start-up)
    SPECSERVE_METRICS_PORT           user                                operator (start-up)
    SPECSERVE_MONITOR_LABELS         Helm chart (monitoring.labels)      operator (start-up)
    SPECSERVE_PROMETHEUS_ALLOWED_URLS  Helm chart (operator.prometheus)  operator (start-up)
    SPECSERVE_PROMETHEUS_TOKEN_FILE  Helm chart (operator.prometheus)    operator (each pass)
    SPECSERVE_PROMETHEUS_CA_FILE     Helm chart (operator.prometheus)    operator (each pass)
    SPECSERVE_TEST_DTYPE             user, CI                            tests (engine fixtures)
"""

from __future__ import annotations

# ------------------------------------------------------------------------- the custom resource
# The CRD's coordinates: the operator serves them, the gateway watches them, crdgen writes them.

GROUP = "specserve.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SpecServeDeployment"
PLURAL = "specservedeployments"
SINGULAR = "specservedeployment"
SHORT_NAMES = ("ssd",)
# kopf's finalizer on every SpecServeDeployment. It guards the per-resource timers only (kopf
# stops them before the object goes); the children go with the owner's garbage collection.
FINALIZER = f"{GROUP}/cleanup"

# ---------------------------------------------------------------------------------- labels
# Kubernetes recommended labels. LABEL_NAME=APP_NAME selects engine pods everywhere: the
# Deployment's selector, the Service, the ServiceMonitor, the operator's pod listing, and the
# gateway's EndpointSlice watch (Kubernetes copies a Service's labels to its EndpointSlices).

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_VERSION = "app.kubernetes.io/version"
APP_NAME = "specserve-engine"
PART_OF = "specserve"
MANAGED_BY = "specserve-operator"
ENGINE_SELECTOR = f"{LABEL_NAME}={APP_NAME}"


# ----------------------------------------------------------------------------------- names
# The objects a SpecServeDeployment NAME owns. The gateway finds a model's pods through
# service_name; the operator creates all of them.


def deployment_name(name: str) -> str:
    return name


def service_name(name: str) -> str:
    return name


def secret_name(name: str) -> str:
    """The Secret holding the control-port bearer token."""
    return f"{name}-control"


def configmap_name(name: str) -> str:
    """The ConfigMap holding the policy the engines load at start-up."""
    return f"{name}-policy"


def servicemonitor_name(name: str) -> str:
    return name


def disruption_budget_name(name: str) -> str:
    """The PodDisruptionBudget of the engine pods."""
    return name


def selector_labels(name: str) -> dict[str, str]:
    """Labels that select the engine pods of one resource (immutable in a Deployment)."""
    return {LABEL_NAME: APP_NAME, LABEL_INSTANCE: name}


# The pod labels every monitor copies onto the series it scrapes (`podTargetLabels` of the
# operator's ServiceMonitor and of the chart's PodMonitor), so one PromQL selector finds a
# resource's series whichever monitor scraped them: {namespace, app_kubernetes_io_name,
# app_kubernetes_io_instance}. (A ServiceMonitor also sets `service`, a PodMonitor does not.)
SERIES_POD_LABELS = (LABEL_NAME, LABEL_INSTANCE)


def series_label(pod_label: str) -> str:
    """The series label a pod label becomes: Prometheus label names allow [a-zA-Z0-9_] only
    (the Prometheus Operator's sanitizeLabelName: every other character becomes "_")."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in pod_label)


def series_labels(name: str) -> dict[str, str]:
    """Series labels (besides namespace) that select one resource's engine series."""
    pod = selector_labels(name)
    return {series_label(key): pod[key] for key in SERIES_POD_LABELS}


# ----------------------------------------------------------------------------------- ports
# HTTP_PORT: vLLM's OpenAI server (/v1/*, /health, /metrics with vllm:*).
# CONTROL_PORT: SpecServe's control server (policy GET/PUT, /metrics with specserve_*); a
# `specserve serve` without --control-port puts it at the serving port + CONTROL_PORT_OFFSET.

HTTP_PORT = 8000
CONTROL_PORT_OFFSET = 1
CONTROL_PORT = HTTP_PORT + CONTROL_PORT_OFFSET
HTTP_PORT_NAME = "http"
CONTROL_PORT_NAME = "control"

# ----------------------------------------------------------------------------------- paths
# HTTP paths on the engine's ports, and where the operator mounts files into the engine pod.

POLICY_PATH = "/specserve/policy"  # control port: GET the policy (+ fitted model), PUT a policy
METRICS_PATH = "/metrics"
HEALTH_PATH = "/health"

MODELS_MOUNT = "/models"  # a PVC with weights; relative model paths resolve under it
SHM_DIR = "/dev/shm"  # a memory-backed emptyDir: vLLM's workers exchange tensors through it
# Writable emptyDirs of the engine pod, so that it runs under any UID (OpenShift assigns one
# from the namespace's range, with no passwd entry and no writable HOME) and with a read-only
# root file system: HOME (XDG, vLLM, Triton and FlashInfer caches under it), /tmp, and the
# model cache (HF_HOME: spec.model.cache, an emptyDir or a PVC), which outlives restarts.
HOME_DIR = "/home/specserve"  # engine/Dockerfile's user's home, too
TMP_DIR = "/tmp"
MODEL_CACHE_DIR = "/var/cache/huggingface"
ENGINE_UID = 10001  # engine/Dockerfile's USER; pods do not pin it (any non-root UID works)
POLICY_DIR = "/etc/specserve/policy"
POLICY_KEY = "policy.json"  # the ConfigMap key, also the file name in POLICY_DIR
POLICY_FILE = f"{POLICY_DIR}/{POLICY_KEY}"
PROFILE_DIR = "/etc/specserve/profile"
PROFILE_KEY = "profile.json"  # default key of spec.profile.configMap
# `specserve profile` writes here inside the model folder; `specserve serve` finds it there.
PROFILE_FILENAME = "specserve-profile.json"
TOKEN_KEY = "token"  # the Secret key of the control token
# The control-token Secret, mounted as a directory (never with subPath: the kubelet then stops
# updating it), so a recreated Secret reaches running pods.
CONTROL_TOKEN_DIR = "/etc/specserve/control"
CONTROL_TOKEN_FILE = f"{CONTROL_TOKEN_DIR}/{TOKEN_KEY}"

# ------------------------------------------------------------------- environment variables
# See the table in the module docstring.

ENV_CONTROL_TOKEN = "SPECSERVE_CONTROL_TOKEN"
ENV_CONTROL_TOKEN_FILE = "SPECSERVE_CONTROL_TOKEN_FILE"
ENV_POLICY_FILE = "SPECSERVE_POLICY_FILE"
ENV_PROFILE_FILE = "SPECSERVE_PROFILE_FILE"
ENV_MODE = "SPECSERVE_MODE"
ENV_STATIC_K = "SPECSERVE_STATIC_K"
ENV_CONTROL_HOST = "SPECSERVE_CONTROL_HOST"
ENV_CONTROL_PORT = "SPECSERVE_CONTROL_PORT"
ENV_RECORD_STEPS = "SPECSERVE_RECORD_STEPS"
ENV_RECORD_VERIFICATIONS = "SPECSERVE_RECORD_VERIFICATIONS"
ENV_RECORD_REQUESTS = "SPECSERVE_RECORD_REQUESTS"
ENV_RECORD_CYCLES = "SPECSERVE_RECORD_CYCLES"
ENV_CACHE = "SPECSERVE_CACHE"
ENV_STATUS_INTERVAL_S = "SPECSERVE_STATUS_INTERVAL_S"
ENV_SLO_INTERVAL_S = "SPECSERVE_SLO_INTERVAL_S"
ENV_PROMETHEUS_URL = "SPECSERVE_PROMETHEUS_URL"
ENV_SLO_WINDOW = "SPECSERVE_SLO_WINDOW"
ENV_MANAGE_SERVICEMONITORS = "SPECSERVE_MANAGE_SERVICEMONITORS"
ENV_METRICS_PORT = "SPECSERVE_METRICS_PORT"
ENV_PEERING = "SPECSERVE_PEERING"
ENV_PEERING_LIFETIME_S = "SPECSERVE_PEERING_LIFETIME_S"
# A JSON object of labels every ServiceMonitor the operator creates carries (so a Prometheus
# whose serviceMonitorSelector asks for e.g. `release: kube-prometheus-stack` selects them).
ENV_MONITOR_LABELS = "SPECSERVE_MONITOR_LABELS"
# Comma-separated Prometheus base URLs that spec.metrics.prometheusUrl may name (besides
# SPECSERVE_PROMETHEUS_URL itself; "*": any). The operator does not query any other.
ENV_PROMETHEUS_ALLOWED_URLS = "SPECSERVE_PROMETHEUS_ALLOWED_URLS"
# Files (mounted from Secrets) with the bearer token and the CA bundle for
# SPECSERVE_PROMETHEUS_URL; never sent to or used for any other URL.
ENV_PROMETHEUS_TOKEN_FILE = "SPECSERVE_PROMETHEUS_TOKEN_FILE"
ENV_PROMETHEUS_CA_FILE = "SPECSERVE_PROMETHEUS_CA_FILE"
ENV_TEST_DTYPE = "SPECSERVE_TEST_DTYPE"

# ---------------------------------------------------------------------------- limits, modes

# The largest K anything accepts. vLLM sizes its speculative buffers (and CUDA graphs) for every
# K it may be asked for; 16 is far beyond the point where a draft still pays off, and keeps the
# per-step decision loop short.
K_LIMIT = 16

# Speculation modes of a policy. "threshold" (confidence-threshold drafting) is a benchmark
# baseline the engine runs, not a mode the operator offers: OPERATOR_MODES is what a
# SpecServeDeployment may ask for.
MODES = ("adaptive", "static", "off", "threshold")
OPERATOR_MODES = ("adaptive", "static", "off")

# spec.autoscaling.mode: who sets the engine pod count. builtin: the operator's SLO loop (it
# writes the Deployment and .status, never the spec); external: an HPA or KEDA through the
# scale subresource (spec.replicas.initial), fed by the operator's desired-replicas metric;
# off: spec.replicas.initial, fixed.
AUTOSCALING_MODES = ("builtin", "external", "off")

# Values of model.target / model.draft (and `specserve serve --draft`) with a special meaning.
NO_DRAFT = "none"  # no speculation
TINY = "tiny"  # the engine's built-in tiny models (operator spec only)

# vLLM's data-parallel size, as `vllm serve` spells it (vllm/engine/arg_utils.py: "--data-parallel-
# size", "-dp"; its parser reads underscores in a long flag as dashes). SpecServe refuses it in
# `specserve serve` and in spec.vllmArgs, whatever the value (1 is the default): its scheduler
# and control port live in the EngineCore process, and with --data-parallel-size N vLLM starts N
# EngineCore processes (docs/vllm-seams.md, "Data parallelism").
DATA_PARALLEL_FLAGS = ("--data-parallel-size", "--data_parallel_size", "-dp")
DATA_PARALLEL_REFUSED = (
    "SpecServe needs one vLLM EngineCore per engine pod: with data parallelism every rank is an "
    "EngineCore process of its own, each would bind the same control port "
    "(SPECSERVE_CONTROL_PORT), and a policy pushed to the one that binds would not reach the "
    "others; scale out with replicas instead"
)


def data_parallel_flag(args: list[str] | tuple[str, ...]) -> str | None:
    """The first of DATA_PARALLEL_FLAGS that `args` set (`flag value` or `flag=value`), or None."""
    for arg in args:
        for flag in DATA_PARALLEL_FLAGS:
            if arg == flag or arg.startswith(flag + "="):
                return flag
    return None

# ------------------------------------------------------------------------ CRD schema version
# `helm upgrade` and `kubectl apply` may leave an older SpecServeDeployment CRD in the cluster
# than the operator was built for (Helm never upgrades a chart's crds/). crdgen writes
# CRD_SCHEMA_VERSION into this annotation of the CRD; the operator reads it at start-up and
# refuses to run against an older one (specserve_operator.crd_schema). Bump it with every
# change of the CRD's schema, rules, subresources or printer columns (a test pins the schema
# of each version: tests/data/crd_schema_versions.json).
ANNOTATION_SCHEMA_VERSION = f"{GROUP}/schema-version"
CRD_SCHEMA_VERSION = 1
