"""The Helm chart, rendered offline by Helm's own engine (helm-python-sdk embeds Helm's Go SDK):
lint, render with default and non-default values, validate every object against the
Kubernetes 1.32 schemas, and check it agrees with the code it deploys (CRD, RBAC, CLI flags,
metric names)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (chart tests)")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

from specserve_contract import GROUP, KIND, PLURAL, SERIES_POD_LABELS  # noqa: E402
from specserve_contract import metrics as mn  # noqa: E402
from specserve_gateway.__main__ import build_parser as gateway_parser  # noqa: E402
from specserve_operator import manifests as m  # noqa: E402
from specserve_operator import names  # noqa: E402
from specserve_operator import spec as s  # noqa: E402
from specserve_operator.children import WATCHED  # noqa: E402
from specserve_operator.kube_client import (  # noqa: E402
    ADMISSION_GRANTS,
    API_CALLS,
    KOPF_CALLS,
    KOPF_PEERING_CALLS,
    KOPF_SECRET_CALLS,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "specserve"
KUBE_VERSION = "1.32"
RELEASE, NAMESPACE = "specserve", "specserve-system"

NON_DEFAULT: dict[str, dict[str, Any]] = {
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "secret-namespaces": {"operator": {"secretNamespaces": ["team-a", "team-b"]}},
    "cluster-wide-secrets": {"operator": {"clusterWideSecrets": True}},
    "monitoring": {
        # The PodMonitor instead of the operator's ServiceMonitors (the chart refuses both).
        "operator": {"manageServiceMonitors": False},
        "monitoring": {"labels": {"release": "kube-prometheus-stack"},
                       "serviceMonitor": {"enabled": True, "interval": "10s"},
                       "podMonitor": {"enabled": True},
                       "operatorPodMonitor": {"enabled": True}},
        "dashboard": {"namespace": "monitoring"},
    },
    "namespaced-monitoring": {
        "watchNamespaces": ["team-a"],
        "monitoring": {"podMonitor": {"enabled": True}},
        "operator": {"manageServiceMonitors": False, "logLevel": "debug"},
    },
    "customised": {
        "image": {"repository": "registry.example.com/specserve/operator", "tag": "0.2.0-rc1",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "fullnameOverride": "ss",
        "operator": {"statusIntervalSeconds": 5, "logLevel": "verbose",
                     "extraEnv": [{"name": "SPECSERVE_EXTRA", "value": "1"}],
                     "serviceAccount": {"name": "ss-op", "annotations": {"a": "b"}},
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "dedicated", "operator": "Exists",
                                      "effect": "NoSchedule"}],
                     "podAnnotations": {"x": "y"}},
        "gateway": {"replicas": 3, "port": 9000, "connectTimeoutSeconds": 1,
                    "readTimeoutSeconds": 120, "retryAfterSeconds": 5,
                    "service": {"type": "LoadBalancer", "port": 8080},
                    "resources": {"requests": {"cpu": "1", "memory": "1Gi"}},
                    "affinity": {"podAntiAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [{
                            "weight": 1, "podAffinityTerm": {
                                "topologyKey": "kubernetes.io/hostname",
                                "labelSelector": {"matchLabels": {"x": "y"}}}}]}}},
    },
    "gateway-only": {"operator": {"enabled": False}, "dashboard": {"enabled": False}},
    "operator-only": {"gateway": {"enabled": False}},
    "bring-your-own-rbac": {"rbac": {"create": False},
                            "operator": {"serviceAccount": {"create": False, "name": "op"}},
                            "gateway": {"serviceAccount": {"create": False}}},
}
ALL_VALUES = {"default": {}, **NON_DEFAULT}


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = helm.Chart.load(CHART).render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return [d for text in out.values() for d in yaml.safe_load_all(text) if d]


def is_builtin(doc: dict[str, Any]) -> bool:
    """A kind the Kubernetes schemas know (not the Prometheus Operator's, not kopf's)."""
    return not doc["apiVersion"].startswith(("monitoring.coreos.com/", "kopf.dev/"))


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


# ------------------------------------------------------------------------- lint & schemas


@pytest.mark.parametrize("name", list(ALL_VALUES))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, ALL_VALUES[name], strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [msg for msg in report["messages"] if msg["severity"] >= 2]
    assert problems == []


@pytest.mark.parametrize("name", list(ALL_VALUES))
def test_every_rendered_object_is_valid_kubernetes(name: str) -> None:
    docs = render(ALL_VALUES[name])
    assert docs
    checked = 0
    for doc in docs:
        if not is_builtin(doc):
            continue  # checked in test_monitors_match_the_ports, test_operator_peering_*
        kv.validate(doc, KUBE_VERSION, strict=True)
        checked += 1
    assert checked >= 1


def test_values_schema_refuses_typos_and_bad_values() -> None:
    chart = helm.Chart.load(CHART)
    chart.validate_schema({})
    for bad in ({"gateway": {"replica": 2}}, {"operator": {"logLevel": "loud"}},
                {"watchNamespaces": ["Not_A_Namespace"]}, {"gateway": {"port": 0}},
                {"monitoring": {"podMonitor": {"interval": "often"}}}):
        with pytest.raises(helm.HelmValuesError):
            chart.render(bad, name=RELEASE, namespace=NAMESPACE)


# --------------------------------------------------------------------------------- the CRD


SSD_CRD = f"{GROUP}_{PLURAL}.yaml"


def test_chart_crd_is_the_generated_crd() -> None:
    """The SpecServeDeployment CRD is a template (templates/crds.yaml, so `helm upgrade`
    upgrades it) reading charts/specserve/files/crds/, a byte copy of crds/ (generated from
    spec.py; `make crds` copies it); rendered, it is that CRD plus helm.sh/resource-policy:
    keep. kopf's peering CRDs stay in the chart's crds/ (the chart creates peering objects,
    whose kinds Helm must know before it renders), a byte copy of crds/ too."""
    repo = {p.name: p.read_text() for p in (ROOT / "crds").glob("*.yaml")}
    assert (CHART / "files" / "crds" / SSD_CRD).read_text() == repo[SSD_CRD]
    chart = {Path(c["filename"]).name: c["data"] for c in helm.Chart.load(CHART).crds}
    assert sorted(chart) == sorted(set(repo) - {SSD_CRD})
    for name, text in chart.items():
        assert text == repo[name], f"charts/specserve/crds/{name} differs from crds/{name}"
    (rendered,) = by_kind(render(), "CustomResourceDefinition")
    annotations = rendered["metadata"]["annotations"]
    assert annotations.pop("helm.sh/resource-policy") == "keep"
    assert rendered == yaml.safe_load(repo[SSD_CRD])
    assert not by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")


def test_chart_crd_is_valid_and_names_the_resource() -> None:
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    kv.validate(crd, KUBE_VERSION, strict=True)
    assert crd["spec"]["group"] == GROUP
    assert crd["spec"]["names"]["kind"] == KIND
    assert crd["spec"]["names"]["plural"] == PLURAL


# ------------------------------------------------------------------------------ components


def test_default_install_objects() -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted([
        ("CustomResourceDefinition", f"{PLURAL}.{GROUP}"),
        ("PodDisruptionBudget", "specserve-gateway"),
        ("ServiceAccount", "specserve-operator"), ("ClusterRole", "specserve-operator"),
        ("ClusterRoleBinding", "specserve-operator"), ("Deployment", "specserve-operator"),
        ("ServiceAccount", "specserve-gateway"), ("ClusterRole", "specserve-gateway"),
        ("ClusterRoleBinding", "specserve-gateway"), ("Deployment", "specserve-gateway"),
        ("Service", "specserve-gateway"), ("ConfigMap", "specserve-dashboard"),
        ("ClusterKopfPeering", "specserve-operator"),
    ])
    for doc in docs:
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering",
                               "CustomResourceDefinition"):
            assert doc["metadata"]["namespace"] == NAMESPACE
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "specserve"


def test_operator_runs_the_kopf_handlers_cluster_wide() -> None:
    dep = one(render(), "Deployment", "specserve-operator")
    c = container(dep)
    assert dep["spec"]["replicas"] == 2 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["image"] == "specserve/operator:0.1.0"
    assert c["command"] == ["kopf"]
    assert c["args"][0] == "run" and "--standalone" not in c["args"]
    assert {"name": "SPECSERVE_PEERING", "value": "specserve-operator"} in c["env"]
    assert c["args"][-2:] == ["-m", "specserve_operator.handlers"]
    assert "--all-namespaces" in c["args"]
    assert {"name": "SPECSERVE_STATUS_INTERVAL_S", "value": "15"} in c["env"]
    assert {"name": "SPECSERVE_MANAGE_SERVICEMONITORS", "value": "true"} in c["env"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--liveness=http://0.0.0.0:8080/healthz" in c["args"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "specserve-operator"


def test_gateway_args_are_accepted_by_the_gateway_cli() -> None:
    for values, namespaces in ((ALL_VALUES["default"], []),
                               (ALL_VALUES["namespaced"], ["team-a", "team-b"])):
        c = container(one(render(values), "Deployment", "specserve-gateway"))
        assert c["command"] == ["python", "-m", "specserve_gateway"]
        args = gateway_parser().parse_args(c["args"])
        assert args.kubernetes is True
        assert args.namespace == namespaces
        assert args.port == c["ports"][0]["containerPort"] == 8080
        assert (args.connect_timeout, args.read_timeout, args.retry_after) == (2.0, 600.0, 2)
        assert (args.hold_queue, args.hold_timeout) == (64, 120.0)
        # Ready after the first route list (the app's /ready), live while the process is up.
        assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert c["livenessProbe"]["httpGet"]["path"] == "/health"


def test_gateway_api_keys_come_from_an_existing_secret() -> None:
    """gateway.apiKeys.existingSecret: the Secret's key is mounted as a file (a directory
    mount, so rotations reach it) and the gateway CLI gets it as --api-keys-file."""
    assert gateway_parser().parse_args(
        container(one(render(), "Deployment", "specserve-gateway"))["args"]).api_keys_file is None
    for values, key in (({"existingSecret": "gw-keys"}, "api-keys"),
                        ({"existingSecret": "gw-keys", "key": "keys.txt"}, "keys.txt")):
        gw = one(render({"gateway": {"apiKeys": values}}), "Deployment", "specserve-gateway")
        kv.validate(gw, KUBE_VERSION, strict=True)
        pod = gw["spec"]["template"]["spec"]
        c = container(gw)
        args = gateway_parser().parse_args(c["args"])
        (mount,) = c["volumeMounts"]
        assert "subPath" not in mount and mount["readOnly"] is True
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == "gw-keys"
        (item,) = volume["secret"]["items"]
        assert item["key"] == key
        assert args.api_keys_file == Path(mount["mountPath"]) / item["path"]
    chart = helm.Chart.load(CHART)
    for bad in ({"existingSecret": "Not_A_Name"}, {"key": "a/b"}, {"secret": "x"}):
        with pytest.raises(helm.HelmValuesError):
            chart.render({"gateway": {"apiKeys": bad}}, name=RELEASE, namespace=NAMESPACE)


def test_customised_values_reach_the_objects() -> None:
    docs = render(NON_DEFAULT["customised"])
    op = one(docs, "Deployment", "ss-operator")
    gw = one(docs, "Deployment", "ss-gateway")
    assert container(op)["image"] == "registry.example.com/specserve/operator:0.2.0-rc1"
    assert container(op)["imagePullPolicy"] == "Always"
    assert "--verbose" in container(op)["args"]
    assert {"name": "SPECSERVE_STATUS_INTERVAL_S", "value": "5"} in container(op)["env"]
    assert {"name": "SPECSERVE_EXTRA", "value": "1"} in container(op)["env"]
    assert op["spec"]["template"]["spec"]["serviceAccountName"] == "ss-op"
    assert op["spec"]["template"]["spec"]["tolerations"][0]["key"] == "dedicated"
    assert op["spec"]["template"]["metadata"]["annotations"] == {"x": "y"}
    assert gw["spec"]["replicas"] == 3
    args = gateway_parser().parse_args(container(gw)["args"])
    assert (args.port, args.connect_timeout, args.read_timeout, args.retry_after) == (
        9000, 1.0, 120.0, 5)
    svc = one(docs, "Service", "ss-gateway")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"][0] == {"name": "http", "port": 8080, "targetPort": "http",
                                       "protocol": "TCP"}
    assert svc["spec"]["selector"] == gw["spec"]["selector"]["matchLabels"]
    assert one(docs, "ServiceAccount", "ss-op")["metadata"]["annotations"] == {"a": "b"}


def test_disabled_components_render_nothing() -> None:
    gateway_only = render(NON_DEFAULT["gateway-only"])
    assert {d["metadata"]["name"] for d in gateway_only
            if d["kind"] != "CustomResourceDefinition"} == {"specserve-gateway"}
    operator_only = render(NON_DEFAULT["operator-only"])
    assert all("gateway" not in d["metadata"]["name"] for d in operator_only)
    byo = render(NON_DEFAULT["bring-your-own-rbac"])
    assert not by_kind(byo, "ServiceAccount")
    assert not [d for d in byo if d["apiVersion"].startswith("rbac.")]
    assert one(byo, "Deployment", "specserve-operator")["spec"]["template"]["spec"][
        "serviceAccountName"] == "op"
    assert one(byo, "Deployment", "specserve-gateway")["spec"]["template"]["spec"][
        "serviceAccountName"] == "default"


def test_pods_run_unprivileged() -> None:
    for dep in by_kind(render(), "Deployment"):
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        sc = container(dep)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert container(dep)["resources"]["requests"]


def test_chart_pods_pass_restricted_and_openshift_restricted_v2() -> None:
    """Pod Security `restricted` and OpenShift's `restricted-v2` (tests/kits/pod_security.py):
    no fixed UID, GID or fsGroup by default (OpenShift assigns them from the namespace's
    range and refuses others); the images' numeric USER runs elsewhere."""
    from tests.kits.pod_security import openshift_restricted_v2_problems, restricted_problems

    deployments = by_kind(render(), "Deployment")
    assert deployments
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert restricted_problems(pod) == [], dep["metadata"]["name"]
        assert openshift_restricted_v2_problems(pod) == [], dep["metadata"]["name"]


# ------------------------------------------------------------------------------------ RBAC

# The API group and resource of each kind the operator's manifests produce.
RESOURCES = {
    "Deployment": ("apps", "deployments"),
    "Service": ("", "services"),
    "Secret": ("", "secrets"),
    "ConfigMap": ("", "configmaps"),
    "ServiceMonitor": ("monitoring.coreos.com", "servicemonitors"),
    "PodDisruptionBudget": ("policy", "poddisruptionbudgets"),
}
# kopf: list/watch/patch the resource, patch its status, post events; the handlers read the
# resource too. Children: get, create, patch (reconcile.py); never delete (the garbage collector
# removes them through their owner references) but for a PodDisruptionBudget turned off.
# The watched ones (children.WATCHED: kopf's indexes) also list and watch.
CHILD_VERBS = {"get", "create", "patch"}
WATCHED_CHILDREN = {(w.group, w.plural) for w in WATCHED}


def grants(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


# The resource of each kind an owner reference may name: (group, kind) -> plural.
OWNER_RESOURCES = {(GROUP, KIND): PLURAL}


def operator_objects() -> list[dict[str, Any]]:
    """Every object the operator creates, from its own manifests."""
    owner = names.Owner(name="x", namespace="ns", uid="u")
    spec = s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}})
    return [m.deployment(owner, spec), m.service(owner, spec), m.secret(owner, spec, "t"),
            m.configmap(owner, spec, m.policy_from_spec(spec, 1)),
            m.servicemonitor(owner, spec), m.disruption_budget(owner, spec)]


def finalizer_grants() -> dict[tuple[str, str], set[str]]:
    """OwnerReferencesPermissionEnforcement: whoever sets blockOwnerDeletion on a reference to
    an owner must be allowed to update the owner's finalizers subresource."""
    out: dict[tuple[str, str], set[str]] = {}
    for obj in operator_objects():
        for ref in obj["metadata"].get("ownerReferences", []):
            if not ref.get("blockOwnerDeletion"):
                continue
            group = ref["apiVersion"].rsplit("/", 1)[0] if "/" in ref["apiVersion"] else ""
            plural = OWNER_RESOURCES[(group, ref["kind"])]
            out[(group, f"{plural}/finalizers")] = {"update"}
    return out


def operator_children() -> set[tuple[str, str]]:
    """(group, resource) of every object the operator creates, from its own manifests."""
    objs = operator_objects()
    missing = {o["kind"] for o in objs} - set(RESOURCES)
    assert not missing, f"the operator makes {missing}: add them to RESOURCES and the chart RBAC"
    return {RESOURCES[o["kind"]] for o in objs}


def code_grants(service_monitors: bool = True,
                watch_secrets: bool = False) -> dict[tuple[str, str], set[str]]:
    """What the code calls: the operator's own client (API_CALLS, which the client enforces),
    kopf's calls (with its Secret watch, SPECSERVE_WATCH_SECRETS) and the admission grant, as
    (group, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    kopf = KOPF_CALLS | (KOPF_SECRET_CALLS if watch_secrets else frozenset())
    for verb, group, resource in API_CALLS | kopf | ADMISSION_GRANTS:
        if group == "monitoring.coreos.com" and not service_monitors:
            continue
        if (group, resource) in CRD_WATCH:
            continue  # the cluster-wide part (CRD_WATCH)
        out.setdefault((group, resource), set()).add(verb)
    return out


def expected_operator_grants(service_monitors: bool = True,
                             watch_secrets: bool = False) -> dict[tuple[str, str], set[str]]:
    want = {
        (GROUP, PLURAL): {"get", "list", "watch", "patch"},
        (GROUP, f"{PLURAL}/status"): {"patch"},
        ("", "events"): {"create"},
        # The SLO loop's ready engine pods: kopf's pod index, a LIST when it lags (push.py).
        ("", "pods"): {"list", "watch"},
        **finalizer_grants(),
    }
    for child in operator_children():
        if child[0] == "monitoring.coreos.com" and not service_monitors:
            continue
        # The control token is created once and never patched; the one child ever deleted is
        # the PodDisruptionBudget of a resource whose spec turned it off.
        want[child] = (set(CHILD_VERBS) - ({"patch"} if child == ("", "secrets") else set())
                       | ({"delete"} if child == ("policy", "poddisruptionbudgets") else set())
                       | ({"list", "watch"} if child in WATCHED_CHILDREN else set())
                       | ({"list", "watch"} if child == ("", "secrets") and watch_secrets
                          else set()))
    assert want == code_grants(service_monitors, watch_secrets), (
        "the manifests and API_CALLS disagree")
    return want


# kopf's CRD watch, and the operator's start-up read of its own CRD (crd_schema; by name).
CRD_WATCH = {("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"}}


def peering_grants(scope: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for verb, group, resource in KOPF_PEERING_CALLS[scope]:
        out.setdefault((group, resource), set()).add(verb)
    return out


CLUSTER_WIDE = {**CRD_WATCH, **peering_grants("cluster")}  # in the ClusterRole in every mode
GATEWAY_GRANTS = {(GROUP, PLURAL): {"list", "watch"},
                  ("discovery.k8s.io", "endpointslices"): {"list", "watch"}}


def test_operator_rbac_is_exactly_what_the_operator_uses() -> None:
    """With the default values the operator holds no Secret right (docs/helm.md#secrets): the
    ClusterRole is the rest; operator.clusterWideSecrets adds Secrets to it."""
    docs = render()
    role = one(docs, "ClusterRole", "specserve-operator")
    without_secrets = {k: v for k, v in expected_operator_grants().items() if k != ("", "secrets")}
    assert grants(role["rules"]) == {**without_secrets, **CLUSTER_WIDE}
    wide = one(render(NON_DEFAULT["cluster-wide-secrets"]), "ClusterRole", "specserve-operator")
    assert grants(wide["rules"]) == {**expected_operator_grants(watch_secrets=True),
                                     **CLUSTER_WIDE}
    binding = one(docs, "ClusterRoleBinding", "specserve-operator")
    assert binding["roleRef"]["name"] == "specserve-operator"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "specserve-operator",
                                    "namespace": NAMESPACE}]


@pytest.mark.parametrize("name", ["default", "namespaced", "namespaced-monitoring"])
def test_blocking_owner_references_are_allowed_by_the_rbac(name: str) -> None:
    """Every child's ownerReference has blockOwnerDeletion: true, which the API server's
    OwnerReferencesPermissionEnforcement plugin admits only when the creator may update the
    owner's finalizers: the operator's role (cluster-wide or in each watched namespace) must
    grant it, or every create is refused with 403."""
    needed = finalizer_grants()
    assert needed == {(GROUP, f"{PLURAL}/finalizers"): {"update"}}
    docs = render(ALL_VALUES[name])
    roles = [d for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
             if d["metadata"]["name"].endswith("-operator")]
    namespaces = ALL_VALUES[name].get("watchNamespaces")
    granting = [r for r in roles if all(
        verbs <= grants(r["rules"]).get(res, set()) for res, verbs in needed.items())]
    if namespaces:
        assert sorted(r["metadata"]["namespace"] for r in granting) == sorted(namespaces)
    else:
        assert [r["kind"] for r in granting] == ["ClusterRole"]


def _with_secret_roles(role: dict[str, Any], docs: list[dict[str, Any]],
                       values: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """A role's grants, plus the Secret rights operator.secretNamespaces moved out of it."""
    granted = grants(role["rules"])
    operator = values.get("operator", {})
    if role["kind"] == "ClusterRole" and not values.get("watchNamespaces") and operator.get(
            "secretNamespaces"):
        assert ("", "secrets") not in granted
        granted[("", "secrets")] = set.intersection(*(
            grants(r["rules"]).get(("", "secrets"), set()) for r in by_kind(docs, "Role")
            if r["metadata"]["name"].endswith("-operator-secrets")))
    elif role["kind"] == "ClusterRole" and not values.get("watchNamespaces") and not operator.get(
            "clusterWideSecrets"):
        # No namespace listed: no Secret right anywhere, on purpose (docs/helm.md#secrets).
        assert ("", "secrets") not in granted
        assert not [r for r in by_kind(docs, "Role") if ("", "secrets") in grants(r["rules"])]
        granted[("", "secrets")] = {"get", "create"}
    return granted


@pytest.mark.parametrize("name", ["default", "namespaced", "namespaced-monitoring",
                                  "secret-namespaces", "cluster-wide-secrets"])
def test_rbac_is_exactly_the_calls_the_code_makes(name: str) -> None:
    """Both ways: every call in API_CALLS/KOPF_CALLS (the operator's client refuses any other)
    is granted, and nothing is granted that no call uses (with operator.secretNamespaces, the
    Secret rights are in Roles of their own, and in each of them exactly)."""
    values = ALL_VALUES[name]
    monitors = values.get("operator", {}).get("manageServiceMonitors", True)
    docs = render(values)
    roles = [d for d in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
             if d["metadata"]["name"].endswith("-operator")]
    for role in roles:
        granted = _with_secret_roles(role, docs, values)
        if role["kind"] == "ClusterRole" and values.get("watchNamespaces"):
            assert granted == CRD_WATCH
            continue
        watch = watches_secrets(values)
        if role["kind"] == "ClusterRole":
            assert {k: granted.get(k) for k in CLUSTER_WIDE} == CLUSTER_WIDE
            code = code_grants(monitors, watch)
        else:  # a watched namespace: its KopfPeering
            code = {**code_grants(monitors, watch), **peering_grants("namespaced")}
        rest = {k: v for k, v in granted.items() if k not in CLUSTER_WIDE}
        missing = {k: v - rest.get(k, set()) for k, v in code.items() if v - rest.get(k, set())}
        unused = {k: v - code.get(k, set()) for k, v in rest.items() if v - code.get(k, set())}
        assert (missing, unused) == ({}, {}), role["metadata"]


def test_secret_namespaces_move_the_secret_rights_into_roles() -> None:
    """All namespaces watched, Secrets only in the listed ones: the ClusterRole grants no
    Secret; each listed namespace has a Role with exactly get and create on Secrets, bound to
    the operator's service account. With watchNamespaces the value changes nothing."""
    docs = render(NON_DEFAULT["secret-namespaces"])
    cluster = one(docs, "ClusterRole", "specserve-operator")
    assert ("", "secrets") not in grants(cluster["rules"])
    roles = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-secrets")]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    for role in roles:
        assert grants(role["rules"]) == {("", "secrets"): {"get", "create"}}
    bindings = [b for b in by_kind(docs, "RoleBinding") if b["metadata"]["name"].endswith(
        "-secrets")]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": "specserve-operator-secrets"}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "specserve-operator",
                                        "namespace": NAMESPACE}]
    both = render({"watchNamespaces": ["team-a"], "operator": {"secretNamespaces": ["team-b"]}})
    assert render({"watchNamespaces": ["team-a"]}) == both


def watches_secrets(values: dict[str, Any]) -> bool:
    """Does kopf watch the control-token Secrets (SPECSERVE_WATCH_SECRETS)? Only where the
    Secret rights cover every watched namespace."""
    operator = values.get("operator", {})
    return bool(values.get("watchNamespaces")) or bool(
        operator.get("clusterWideSecrets") and not operator.get("secretNamespaces"))


def test_secrets_are_listed_and_watched_only_where_the_operator_watches_them() -> None:
    """Reading every Secret is the widest right an operator can hold: get and create, and list
    and watch only where kopf watches the token Secrets (SPECSERVE_WATCH_SECRETS: the Secret
    rights cover every watched namespace); never patch; nothing in the ClusterRole when the
    watched namespaces are set; never list or watch in operator.secretNamespaces' Roles."""
    for name, values in ALL_VALUES.items():
        docs = render(values)
        ops = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith(
            "-operator")]
        env = container(ops[0])["env"] if ops else None
        watch = watches_secrets(values)
        if env is not None:
            assert ({"name": "SPECSERVE_WATCH_SECRETS", "value": "true"} in env) == watch, name
        for doc in docs:
            if doc["kind"] not in ("ClusterRole", "Role"):
                continue
            secret_verbs = grants(doc["rules"]).get(("", "secrets"), set())
            allowed = {"get", "create"} | ({"list", "watch"} if watch and not doc["metadata"][
                "name"].endswith("-secrets") else set())
            assert secret_verbs <= allowed, (name, doc["metadata"])
            if secret_verbs:
                assert secret_verbs == allowed, (name, doc["metadata"])
            if values.get("watchNamespaces") and doc["kind"] == "ClusterRole":
                assert not secret_verbs, (name, doc["metadata"])


def test_gateway_rbac_is_read_only() -> None:
    role = one(render(), "ClusterRole", "specserve-gateway")
    assert grants(role["rules"]) == GATEWAY_GRANTS


def test_no_rule_uses_wildcards() -> None:
    for name, values in ALL_VALUES.items():
        for doc in render(values):
            for rule in doc.get("rules", []):
                for key in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[key], f"{name}: {doc['metadata']['name']}: {rule}"


def test_namespaced_mode_grants_only_in_the_watched_namespaces() -> None:
    docs = render(NON_DEFAULT["namespaced"])
    cluster_role = one(docs, "ClusterRole", "specserve-operator")
    assert grants(cluster_role["rules"]) == CRD_WATCH  # discovery only, cluster-wide
    assert not [d for d in by_kind(docs, "ClusterRole") if d["metadata"]["name"].endswith(
        "gateway")]
    for ns in ("team-a", "team-b"):
        roles = [d for d in by_kind(docs, "Role") if d["metadata"]["namespace"] == ns]
        by_name = {d["metadata"]["name"]: grants(d["rules"]) for d in roles}
        assert by_name == {
            "specserve-operator": {**expected_operator_grants(watch_secrets=True),
                                   **peering_grants("namespaced")},
            "specserve-gateway": GATEWAY_GRANTS}
        bindings = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["namespace"] == ns]
        assert {b["subjects"][0]["namespace"] for b in bindings} == {NAMESPACE}
    args = container(one(docs, "Deployment", "specserve-operator"))["args"]
    assert "--all-namespaces" not in args
    assert [a for a in args if a.startswith("--namespace=")] == [
        "--namespace=team-a", "--namespace=team-b"]


def test_service_monitor_rights_can_be_left_out() -> None:
    docs = render(NON_DEFAULT["namespaced-monitoring"])
    role = one(docs, "Role", "specserve-operator")
    assert grants(role["rules"]) == {**expected_operator_grants(service_monitors=False,
                                                                watch_secrets=True),
                                     **peering_grants("namespaced")}
    # ... and the operator is told so: it must not even read ServiceMonitors (403 otherwise).
    env = container(one(docs, "Deployment", "specserve-operator"))["env"]
    assert {"name": "SPECSERVE_MANAGE_SERVICEMONITORS", "value": "false"} in env
    from specserve_operator.config import OperatorConfig
    config = OperatorConfig.from_environ({e["name"]: e["value"] for e in env})
    assert config.manage_service_monitors is False
    assert "--debug" in container(one(docs, "Deployment", "specserve-operator"))["args"]


# ------------------------------------------------------------------------------ monitoring


def test_monitors_are_off_by_default() -> None:
    assert not [d for d in render() if d["apiVersion"].startswith("monitoring.coreos.com/")]


def operator_config(values: dict[str, Any]) -> Any:
    from specserve_operator.config import OperatorConfig
    env = container(one(render(values), "Deployment", "specserve-operator"))["env"]
    return OperatorConfig.from_environ({e["name"]: e["value"] for e in env if "value" in e})


def test_monitor_labels_default_to_what_kube_prometheus_stack_selects() -> None:
    """kube-prometheus-stack's Prometheus selects monitors with `release: <its release name>`
    (charts/kube-prometheus-stack/templates/prometheus/prometheus.yaml, while
    serviceMonitorSelectorNilUsesHelmValues / podMonitorSelectorNilUsesHelmValues are true, its
    default): every monitor carries it, the operator's per-deployment ones too."""
    assert operator_config({}).monitor_labels == {"release": "kube-prometheus-stack"}
    docs = render({"monitoring": {"serviceMonitor": {"enabled": True},
                                  "podMonitor": {"enabled": True}},
                   "operator": {"manageServiceMonitors": False}})
    monitors = [d for d in docs if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert len(monitors) == 2
    for mon in monitors:
        assert mon["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Helm merges maps with the defaults: a null removes the default key.
    assert operator_config({"monitoring": {"labels": {"release": None}}}).monitor_labels == {}
    mine = {"release": "prom", "example.com/team": "ml"}
    assert operator_config({"monitoring": {"labels": mine}}).monitor_labels == mine


def test_monitors_match_the_ports() -> None:
    docs = render(NON_DEFAULT["monitoring"])
    sm = one(docs, "ServiceMonitor", "specserve-gateway")
    gw_svc = one(docs, "Service", "specserve-gateway")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"] == gw_svc["spec"]["selector"]
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {
        p["name"] for p in gw_svc["spec"]["ports"]}
    assert sm["spec"]["endpoints"][0]["interval"] == "10s"

    pm = one(docs, "PodMonitor", "specserve-engines")
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    # The PodMonitor selects the engine pods the operator creates, on their named ports.
    owner = names.Owner(name="x", namespace="ns", uid="u")
    engine = m.deployment(owner, s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}}))
    pod_labels = engine["spec"]["template"]["metadata"]["labels"]
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    port_names = {p["name"] for p in container(engine)["ports"]}
    assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} == port_names == {
        "http", "control"}

    # The SLO loop selects series by the labels these copy (specserve_operator.prometheus).
    assert pm["spec"]["podTargetLabels"] == list(SERIES_POD_LABELS)
    assert m.servicemonitor(owner, s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}}))[
        "spec"]["podTargetLabels"] == list(SERIES_POD_LABELS)
    assert set(SERIES_POD_LABELS) <= set(pod_labels)

    namespaced = render(NON_DEFAULT["namespaced-monitoring"])
    pm = one(namespaced, "PodMonitor", "specserve-engines")
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert not [d for d in namespaced if d["metadata"]["name"] == "specserve-operator"
                and d["kind"] == "PodMonitor"]


def test_operator_pod_monitor_keeps_the_resources_labels() -> None:
    """autoscaling.mode external: specserve_operator_desired_replicas{namespace,name} names
    the SpecServeDeployment; honorLabels keeps those over the scraped pod's namespace."""
    docs = render(NON_DEFAULT["monitoring"])
    pm = one(docs, "PodMonitor", "specserve-operator")
    op = one(docs, "Deployment", "specserve-operator")
    assert pm["spec"]["selector"]["matchLabels"] == op["spec"]["selector"]["matchLabels"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    ports = {p["name"]: p["containerPort"] for p in container(op)["ports"]}
    assert endpoint["port"] == "metrics" and ports["metrics"] == 8081
    assert endpoint["honorLabels"] is True and endpoint["path"] == "/metrics"


# ------------------------------------------------------------------------------- dashboard

# The series the dashboard reads: vLLM's (docs/vllm-seams.md, section 8) and ours
# (tests/test_metric_names.py checks every name in the chart against what is exported).
KNOWN_METRICS = {
    mn.VLLM_SPEC_ACCEPTED_TOKENS, mn.VLLM_SPEC_DRAFT_TOKENS, f"{mn.VLLM_TTFT}_bucket",
    f"{mn.VLLM_TPOT}_bucket", mn.VLLM_RUNNING, mn.VLLM_WAITING,
    f"{mn.SPECULATIVE_K}_sum", f"{mn.SPECULATIVE_K}_count", mn.POLICY_VERSION,
    mn.GATEWAY_REQUESTS,
}
PROMQL_WORDS = {"sum", "by", "avg", "max", "count", "rate", "histogram_quantile", "vector",
                "le", "model_name", "namespace", "pod", "model", "code", "label_values"}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # label values
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range selectors
    expr = re.sub(r"\$\w+", "", expr)  # dashboard variables
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
    return {w for w in words if w not in PROMQL_WORDS}


def test_dashboard_configmap() -> None:
    docs = render(NON_DEFAULT["monitoring"])
    cm = one(docs, "ConfigMap", "specserve-dashboard")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["specserve.json"])
    assert dash["uid"] == "specserve"
    titles = " | ".join(p["title"] for p in dash["panels"])
    for topic in ("K chosen", "acceptance", "TTFT", "TPOT", "Replicas"):
        assert topic.lower() in titles.lower(), f"no {topic} panel in: {titles}"
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= metric_names(target["expr"])
    assert used == KNOWN_METRICS
    slo_vars = {v["name"] for v in dash["templating"]["list"]}
    assert {"ttft_slo_ms", "tpot_slo_ms", "model", "namespace"} <= slo_vars


def test_prometheus_access_reaches_the_operator() -> None:
    """The default URL, the allow-list and the credential Secrets (mounted, read as files)."""
    values = {"operator": {"prometheus": {
        "url": "https://kube-prometheus-stack-prometheus.monitoring.svc:9090",
        "allowedUrls": ["http://thanos.monitoring:10902", "https://prom.team-a:9090"],
        "bearerTokenSecret": {"name": "prom-token"}, "caSecret": {"name": "prom-ca"}}}}
    docs = render(values)
    for doc in filter(is_builtin, docs):
        kv.validate(doc, KUBE_VERSION, strict=True)
    config = operator_config(values).loop
    assert config.prometheus_url == "https://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    assert config.allowed_urls == ("http://thanos.monitoring:10902", "https://prom.team-a:9090")
    assert config.token_file == "/etc/specserve/prometheus-token/token"
    assert config.ca_file == "/etc/specserve/prometheus-ca/ca.crt"
    dep = one(docs, "Deployment", "specserve-operator")
    mounts = {v["mountPath"]: v["name"] for v in container(dep)["volumeMounts"]}
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for path, secret, key in ((config.token_file, "prom-token", "token"),
                              (config.ca_file, "prom-ca", "ca.crt")):
        volume = volumes[mounts[str(Path(path).parent)]]
        assert volume["secret"] == {"secretName": secret, "items": [{"key": key, "path": key}]}
    # Defaults: no URL, no allow-list (a spec URL is refused), no credentials.
    plain = operator_config({}).loop
    assert (plain.prometheus_url, plain.allowed_urls, plain.token_file, plain.ca_file) == (
        None, (), None, None)
    with pytest.raises(helm.HelmValuesError):
        render({"operator": {"prometheus": {"allowedUrls": ["prometheus:9090"]}}})


# --------------------------------------------------------------------------------- peering


PEERING_CRDS = CHART / "crds" / "kopf.dev_peerings.yaml"


def test_peering_crds_are_the_resources_kopf_uses() -> None:
    """The hand-written peering CRDs: valid, and named as kopf looks them up (KOPF_PEERING_CALLS
    names the plurals of both scopes)."""
    crds = list(yaml.safe_load_all(PEERING_CRDS.read_text()))
    for crd in crds:
        kv.validate(crd, KUBE_VERSION, strict=True)
    served = {(c["spec"]["group"], c["spec"]["names"]["plural"], c["spec"]["scope"])
              for c in crds}
    assert served == {("kopf.dev", "clusterkopfpeerings", "Cluster"),
                      ("kopf.dev", "kopfpeerings", "Namespaced")}
    assert {(g, r) for calls in KOPF_PEERING_CALLS.values() for _, g, r in calls} == {
        (g, r) for g, r, _ in served}


def test_operator_peering_objects_follow_the_watched_scope() -> None:
    cluster = render()
    (obj,) = by_kind(cluster, "ClusterKopfPeering")
    assert obj["metadata"]["name"] == "specserve-operator" and "namespace" not in obj["metadata"]
    assert not by_kind(cluster, "KopfPeering")
    namespaced = render(ALL_VALUES["namespaced"])
    assert sorted(o["metadata"]["namespace"] for o in by_kind(namespaced, "KopfPeering")) == [
        "team-a", "team-b"]
    assert not by_kind(namespaced, "ClusterKopfPeering")


def test_without_peering_the_operator_is_one_standalone_replica() -> None:
    docs = render({"operator": {"peering": {"enabled": False}, "replicas": 1}})
    dep = one(docs, "Deployment", "specserve-operator")
    c = container(dep)
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert "--standalone" in c["args"]
    assert not [e for e in c["env"] if e["name"].startswith("SPECSERVE_PEERING")]
    assert not by_kind(docs, "ClusterKopfPeering")
    role = one(docs, "ClusterRole", "specserve-operator")
    assert not [r for r in role["rules"] if "kopf.dev" in r["apiGroups"]]
    with pytest.raises(Exception, match="needs operator.peering.enabled"):
        render({"operator": {"peering": {"enabled": False}, "replicas": 2}})
