"""The chart on real clusters (issue #24, round 2), rendered offline by Helm's own engine:
the CRD upgraded by `helm upgrade`, the chart as a subchart, one scrape per engine, the e2e and
example values against the operator's own Prometheus allow-list, engine ingress, Secret rights
and a gateway that survives drains."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (chart tests)")
kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

import specserve_contract as contract  # noqa: E402
from specserve_gateway.__main__ import build_parser as gateway_parser  # noqa: E402
from specserve_gateway.__main__ import shutdown_timeout  # noqa: E402
from specserve_operator import crd_schema, names  # noqa: E402
from specserve_operator import manifests as m  # noqa: E402
from specserve_operator import spec as s  # noqa: E402
from specserve_operator.config import OperatorConfig  # noqa: E402
from specserve_operator.slo_loop import NoAccess, prometheus_client  # noqa: E402
from tests.chart.test_chart_render import (  # noqa: E402
    CHART,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    ROOT,
    by_kind,
    container,
    grants,
    is_builtin,
    one,
    render,
)

EXAMPLE_VALUES = ROOT / "examples" / "chart-values.yaml"
EXAMPLES = ROOT / "examples" / "specserve.yaml"


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in filter(is_builtin, docs):
        kv.validate(doc, KUBE_VERSION, strict=True)


def engine_pod() -> dict[str, Any]:
    """The engine pod template the operator makes (its labels and named ports)."""
    owner = names.Owner(name="x", namespace="ns", uid="u")
    return m.deployment(owner, s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}}))[
        "spec"]["template"]


def e2e_run() -> Any:
    """e2e/run.py as a module (its chart values and resource; nothing is run)."""
    spec = importlib.util.spec_from_file_location("e2e_run", ROOT / "e2e" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def operator_config(docs: list[dict[str, Any]]) -> OperatorConfig:
    env = container(one(docs, "Deployment", f"{RELEASE}-operator"))["env"]
    return OperatorConfig.from_environ({e["name"]: e["value"] for e in env if "value" in e})


# ------------------------------------------------------------- 2. the CRD and `helm upgrade`


def test_helm_upgrade_upgrades_the_crd_and_uninstall_keeps_it() -> None:
    """Helm applies templates on every upgrade, never a chart's crds/: the CRD is a template,
    with helm.sh/resource-policy: keep (Helm leaves it on uninstall and when crds.install
    turns false, so the SpecServeDeployments stay), and the schema version the operator
    checks at start-up."""
    chart = helm.Chart.load(CHART)
    assert not [c for c in chart.crds if contract.GROUP in c["filename"]]
    (crd,) = by_kind(render(), "CustomResourceDefinition")
    meta = crd["metadata"]
    assert meta["name"] == crd_schema.CRD_NAME
    assert meta["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd_schema.schema_version(crd) == contract.CRD_SCHEMA_VERSION
    assert crd_schema.problem(crd) is None
    kv.validate(crd, KUBE_VERSION, strict=True)
    assert not by_kind(render({"crds": {"install": False}}), "CustomResourceDefinition")


def test_the_operator_may_read_its_own_crd_and_no_other() -> None:
    """The start-up check reads one CRD: `get` is granted with resourceNames (a get names its
    object, so RBAC can narrow it), in every mode, next to kopf's list/watch."""
    for values in ({}, {"watchNamespaces": ["team-a"]}):
        role = one(render(values), "ClusterRole", f"{RELEASE}-operator")
        gets = [r for r in role["rules"] if "customresourcedefinitions" in r["resources"]
                and "get" in r["verbs"]]
        assert gets == [{"apiGroups": ["apiextensions.k8s.io"],
                         "resources": ["customresourcedefinitions"],
                         "resourceNames": [crd_schema.CRD_NAME], "verbs": ["get"]}]


def test_the_chart_needs_the_kubernetes_the_crd_needs() -> None:
    """The name rules use optionalOldSelf (CRDValidationRatcheting, on by default from 1.30;
    an older API server drops the field and then refuses `oldSelf.hasValue()`)."""
    chart_yaml = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_yaml["kubeVersion"] == ">=1.30.0-0"
    assert chart_yaml["version"] != "0.1.0", "the chart changed: its version too"


# ------------------------------------------------------------------------- 3. as a subchart


def test_global_values_are_accepted() -> None:
    """A parent chart passes `global` to every subchart; values.schema.json must allow it
    (Helm validates a subchart's values, `global` included, against its schema)."""
    validate_all(render({"global": {"imageRegistry": "registry.example.com",
                                    "imagePullSecrets": []}}))


def test_the_chart_renders_as_a_subchart(tmp_path: Path) -> None:
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "specserve")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    (parent / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "platform", "version": "1.0.0",
        "dependencies": [{"name": "specserve", "version": version}]}))
    (parent / "values.yaml").write_text(yaml.safe_dump({
        "global": {"team": "ml"}, "specserve": {"gateway": {"replicas": 3}}}))
    out = helm.Chart.load(parent).render({}, name=RELEASE, namespace=NAMESPACE)
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    assert one(docs, "Deployment", f"{RELEASE}-gateway")["spec"]["replicas"] == 3
    validate_all(docs)


# ------------------------------------------------------------------ 4. one scrape per engine


def test_pod_monitor_and_operator_service_monitors_are_refused_together() -> None:
    """The chart's PodMonitor selects every engine pod, and the operator's per-resource
    ServiceMonitor (operator.manageServiceMonitors, on by default) selects the same pods
    through their Service: Prometheus would keep two copies of every series, sum(rate(...))
    doubles, and the autoscaler asks for twice the replicas."""
    with pytest.raises(Exception, match="scraped twice"):
        render({"monitoring": {"podMonitor": {"enabled": True}}})
    docs = render({"monitoring": {"podMonitor": {"enabled": True}},
                   "operator": {"manageServiceMonitors": False}})
    assert by_kind(docs, "PodMonitor")
    env = container(one(docs, "Deployment", f"{RELEASE}-operator"))["env"]
    assert operator_config(docs).manage_service_monitors is False
    assert {"name": contract.ENV_MANAGE_SERVICEMONITORS, "value": "false"} in env
    # Without the operator in this release, the PodMonitor alone.
    assert by_kind(render({"monitoring": {"podMonitor": {"enabled": True}},
                           "operator": {"enabled": False}}), "PodMonitor")


def test_both_monitors_select_the_same_engine_pods() -> None:
    """Why both at once is double: the PodMonitor's selector and the operator's ServiceMonitor
    (through the engine Service's selector) pick the same pods."""
    pm = one(render({"monitoring": {"podMonitor": {"enabled": True}},
                     "operator": {"manageServiceMonitors": False}}),
             "PodMonitor", f"{RELEASE}-engines")
    owner = names.Owner(name="x", namespace="ns", uid="u")
    spec = s.parse_spec({"model": {"target": "tiny", "draft": "tiny"}})
    pod_labels = engine_pod()["metadata"]["labels"]
    service = m.service(owner, spec)
    assert pm["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()


# ----------------------------------------------- 5. e2e and examples against the allow-list


def _resources(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == contract.KIND]


def _queries(config: OperatorConfig, resource: dict[str, Any]) -> str:
    """The Prometheus URL the operator's SLO loop would query for this resource (the
    operator's own function: NoAccess when its allow-list refuses the URL)."""
    meta = resource["metadata"]
    owner = names.Owner(name=meta["name"], namespace=meta.get("namespace", "default"), uid="u")
    return prometheus_client(None, owner, s.parse_spec(resource["spec"]), config.loop).url


def test_e2e_values_let_the_operator_query_the_e2e_prometheus() -> None:
    """e2e step 8 (scaling) needs Prometheus data: the chart as e2e installs it configures an
    operator that queries the e2e Prometheus for the e2e resource."""
    run = e2e_run()
    docs = render(run.chart_values())
    validate_all(docs)
    config = operator_config(docs)
    assert _queries(config, run.tiny_resource()) == run.PROMETHEUS_URL
    # The resource's namespace is one where the operator may create its Secret.
    roles = [r for r in by_kind(docs, "Role") if ("", "secrets") in grants(r["rules"])]
    assert [r["metadata"]["namespace"] for r in roles] == [run.MODEL_NS]


def test_the_examples_query_the_prometheus_of_their_chart_values() -> None:
    config = operator_config(render(yaml.safe_load(EXAMPLE_VALUES.read_text())))
    assert config.loop.prometheus_url == e2e_run().PROMETHEUS_URL
    resources = _resources(EXAMPLES)
    assert len(resources) >= 2
    for resource in resources:
        assert _queries(config, resource) == config.loop.prometheus_url


def test_a_spec_url_off_the_allow_list_is_refused() -> None:
    """The check the two tests above pass is real: the default chart configures no Prometheus,
    and a URL a spec names is queried only when the allow-list has it."""
    named = {"metadata": {"name": "x"}, "spec": {
        "model": {"target": "tiny", "draft": "tiny"},
        "metrics": {"prometheusUrl": "http://prometheus-operated.monitoring.svc:9090"}}}
    with pytest.raises(NoAccess) as refused:
        _queries(operator_config(render()), named)
    assert refused.value.reason == "PrometheusUrlNotAllowed"
    allowed = render({"operator": {"prometheus": {
        "allowedUrls": ["http://prometheus-operated.monitoring.svc:9090"]}}})
    assert _queries(operator_config(allowed), named) == named["spec"]["metrics"]["prometheusUrl"]


# --------------------------------------------------------------------- 6. engine ingress


def _policies(values: dict[str, Any]) -> list[dict[str, Any]]:
    docs = render(values)
    validate_all(docs)
    return by_kind(docs, "NetworkPolicy")


RELEASE_NS = {"kubernetes.io/metadata.name": NAMESPACE}
DEFAULT_PROMETHEUS = {"namespaceSelector": {},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def open_ports(policy: dict[str, Any]) -> list[tuple[dict[str, Any], set[str]]]:
    """(peer, ports) of every ingress peer of a NetworkPolicy."""
    return [(peer, {p["port"] for p in rule["ports"]})
            for rule in policy["spec"]["ingress"] for peer in rule["from"]]


def ports_for(policy: dict[str, Any], template: dict[str, Any]) -> set[str]:
    """The ports a pod with this template's labels, in the release namespace, may reach."""
    out: set[str] = set()
    for peer, ports in open_ports(policy):
        if (peer.get("namespaceSelector", {}).get("matchLabels") == RELEASE_NS
                and peer["podSelector"]["matchLabels"].items()
                <= template["metadata"]["labels"].items()):
            out |= ports
    return out


def test_engine_ingress_is_open_to_the_operator_gateway_and_prometheus_only() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    policies = by_kind(docs, "NetworkPolicy")
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["team-a", "team-b"]
    pod = engine_pod()
    port_names = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert port_names == {contract.HTTP_PORT_NAME, contract.CONTROL_PORT_NAME}
    gateway = one(docs, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]
    operator = one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]
    for policy in policies:
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        assert spec["podSelector"]["matchLabels"] == {contract.LABEL_NAME: contract.APP_NAME}
        assert spec["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        peers = open_ports(policy)
        assert all(ports <= port_names for _, ports in peers)
        assert ports_for(policy, gateway) == {contract.HTTP_PORT_NAME}  # OpenAI requests
        assert ports_for(policy, operator) == {contract.CONTROL_PORT_NAME}  # policy pushes
        assert (DEFAULT_PROMETHEUS, port_names) in peers  # /metrics on both
        assert len(peers) == 3, "nobody else"


def test_the_policy_follows_the_namespaces_the_operator_reconciles_in() -> None:
    def where(values: dict[str, Any]) -> list[str]:
        return sorted(p["metadata"]["namespace"] for p in _policies(values))

    assert where({"operator": {"secretNamespaces": ["a", "b"]}}) == ["a", "b"]
    assert where({"networkPolicy": {"namespaces": ["c"]}, "watchNamespaces": ["a"]}) == ["c"]
    assert where({"operator": {"clusterWideSecrets": True}}) == []  # unknown: list them
    assert where({"watchNamespaces": ["a"], "networkPolicy": {"enabled": False}}) == []
    mine = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "obs"}},
            "podSelector": {"matchLabels": {"app": "vmagent"}}}
    extra = {"ipBlock": {"cidr": "10.0.0.0/8"}}
    (policy,) = _policies({"watchNamespaces": ["a"], "networkPolicy": {
        "prometheus": mine, "extraFrom": [extra]}})
    assert policy["spec"]["ingress"][-1]["from"] == [mine, extra]


# ---------------------------------------------------------------------- 6. Secret rights


def test_no_secret_of_the_cluster_is_readable_by_default() -> None:
    """get/create on Secrets cannot be narrowed by name (create names no object; the token
    Secrets are named per resource), only by namespace: by default the operator holds none,
    and gets them only in the namespaces listed (or cluster-wide when asked for)."""
    def secret_grants(values: dict[str, Any]) -> list[tuple[str, str | None]]:
        return sorted((d["kind"], d["metadata"].get("namespace")) for d in render(values)
                      if d["kind"] in ("ClusterRole", "Role")
                      and ("", "secrets") in grants(d["rules"]))

    assert secret_grants({}) == []
    assert secret_grants({"operator": {"secretNamespaces": ["a"]}}) == [("Role", "a")]
    assert secret_grants({"watchNamespaces": ["a", "b"]}) == [("Role", "a"), ("Role", "b")]
    assert secret_grants({"operator": {"clusterWideSecrets": True}}) == [("ClusterRole", None)]
    # A listed namespace wins over the cluster-wide switch.
    assert secret_grants({"operator": {"clusterWideSecrets": True,
                                       "secretNamespaces": ["a"]}}) == [("Role", "a")]


# ---------------------------------------------------------------- 7. a gateway that drains


def test_the_gateway_survives_drains_and_rollouts() -> None:
    docs = render()
    validate_all(docs)
    gw = one(docs, "Deployment", f"{RELEASE}-gateway")
    assert gw["spec"]["replicas"] == 2
    pdb = one(docs, "PodDisruptionBudget", f"{RELEASE}-gateway")
    assert pdb["spec"]["selector"] == gw["spec"]["selector"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert not by_kind(render({"gateway": {"disruptionBudget": {"enabled": False}}}),
                       "PodDisruptionBudget")


@pytest.mark.parametrize("read_timeout", [600, 120, 7.5])
def test_a_stopping_gateway_waits_for_its_slowest_backend(read_timeout: float) -> None:
    """preStop sleeps (so endpoints and kube-proxies stop sending first), then SIGTERM; the
    kubelet's SIGKILL comes after terminationGracePeriodSeconds, which covers the sleep plus
    the gateway's own read timeout (as its CLI parses it from the args the chart passes)."""
    docs = render({"gateway": {"readTimeoutSeconds": read_timeout}})
    pod = one(docs, "Deployment", f"{RELEASE}-gateway")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    args = gateway_parser().parse_args(c["args"])
    assert args.read_timeout == read_timeout
    assert pod["terminationGracePeriodSeconds"] >= 5 + args.read_timeout
    assert pod["terminationGracePeriodSeconds"] == 5 + -(-read_timeout // 1) + 10
    # After SIGTERM uvicorn lets requests finish for the shutdown timeout (not a fixed 30 s),
    # and that ends before the kubelet's SIGKILL.
    assert shutdown_timeout(args) == read_timeout
    assert 5 + shutdown_timeout(args) < pod["terminationGracePeriodSeconds"]
