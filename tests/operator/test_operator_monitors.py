"""The SLO loop's PromQL finds a deployment's series whichever monitor scraped them.

One real Prometheus (Debian `prometheus`) scrapes real HTTP exporters of vllm:* and specserve_*
series, two engine pods per namespace. In namespace `team-sm` it scrapes them as the operator's
ServiceMonitor (manifests.servicemonitor) makes the Prometheus Operator do; in `team-pm` as the
chart's PodMonitor does. The scrape configs come from the monitor objects themselves, through
the Prometheus Operator's relabelling rules (tests/kits/prometheus_kit.py says where they were
taken from). Both namespaces must give the same SloSnapshot, and series of other pods (another
resource, a non-SpecServe pod with the same instance label) must stay out of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from specserve_contract import CONTROL_PORT_NAME, HTTP_PORT_NAME
from specserve_engine.launcher import free_port
from specserve_operator import manifests, names, prometheus
from specserve_operator.prometheus import PrometheusClient, SloSnapshot
from specserve_operator.spec import parse_spec
from tests.kits.prometheus_kit import (
    EngineSeries,
    Exporter,
    PodTarget,
    Prometheus,
    control_exposition,
    monitor_scrape_configs,
    prometheus_binary,
    vllm_exposition,
)

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (chart render)")
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
NAME = "chat"
SM_NS, PM_NS, DOWN_NS = "team-sm", "team-pm", "team-down"
SPEC = parse_spec({"model": {"target": "tiny", "draft": "tiny"}})
SERIES = EngineSeries()
WINDOW = "5s"  # data older than the window exists by then, so rates are not diluted
TPOT_TARGET_S, TTFT_TARGET_S = 0.05, 0.5


def chart_podmonitor(namespace: str) -> dict[str, Any]:
    """The chart's engine PodMonitor, rendered by Helm, watching `namespace`."""
    out = helm.Chart.load(ROOT / "charts" / "specserve").render(
        # The PodMonitor instead of the operator's ServiceMonitors (the chart refuses both).
        {"watchNamespaces": [namespace], "monitoring": {"podMonitor": {"enabled": True}},
         "operator": {"manageServiceMonitors": False}},
        name="specserve", namespace="specserve-system")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    (pm,) = [d for d in docs if d["kind"] == "PodMonitor"]
    return pm


def engine_pods(owner: names.Owner, exporters: dict[str, Exporter], count: int
                ) -> list[PodTarget]:
    """Pods as the operator's Deployment makes them, each port served by a test exporter."""
    dep = manifests.deployment(owner, SPEC)
    template = dep["spec"]["template"]
    (container,) = template["spec"]["containers"]
    svc = manifests.service(owner, SPEC)
    out = []
    for i in range(count):
        pod = f"{owner.name}-5d8f9c7b6-{i:05d}"
        for port in (HTTP_PORT_NAME, CONTROL_PORT_NAME):
            out.append(PodTarget(
                namespace=owner.namespace, pod=pod, pod_labels=template["metadata"]["labels"],
                container=container["name"], port_name=port, address=exporters[port].address,
                service=svc["metadata"]["name"], service_labels=svc["metadata"]["labels"]))
    return out


@dataclass
class Setup:
    prom: Prometheus


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("the `prometheus` binary was not found: install the Debian package "
                    "`prometheus` (make setup does)")
    exporters = {HTTP_PORT_NAME: Exporter(lambda t: vllm_exposition(SERIES, t)),
                 CONTROL_PORT_NAME: Exporter(lambda t: control_exposition(SERIES, t))}
    sm_owner = names.Owner(NAME, SM_NS, "uid-sm")
    pm_owner = names.Owner(NAME, PM_NS, "uid-pm")
    other = names.Owner(f"{NAME}-x", SM_NS, "uid-x")  # another resource, a similar name
    sm = manifests.servicemonitor(sm_owner, SPEC, {"release": "kube-prometheus-stack"})
    sm_other = manifests.servicemonitor(other, SPEC)
    pm = chart_podmonitor(PM_NS)
    pm_targets = engine_pods(pm_owner, exporters, 2)
    # Not SpecServe: a pod of a Helm release that happens to be called `chat` too, scraped by
    # some other PodMonitor copying the same label.
    stranger = PodTarget(namespace=PM_NS, pod="chat-redis-0", container="redis",
                         pod_labels={"app.kubernetes.io/name": "redis",
                                     "app.kubernetes.io/instance": NAME},
                         port_name="metrics", address=exporters[HTTP_PORT_NAME].address)
    stranger_pm = {"kind": "PodMonitor", "metadata": {"name": "redis", "namespace": PM_NS},
                   "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
                            "podTargetLabels": ["app.kubernetes.io/instance"],
                            "podMetricsEndpoints": [{"port": "metrics"}]}}
    # Pods whose ports nobody listens on: targets that exist, and are down.
    down_owner = names.Owner(NAME, DOWN_NS, "uid-down")
    dead = free_port()
    down_targets = [replace(t, address=f"127.0.0.1:{dead}")
                    for t in engine_pods(down_owner, exporters, 1)]
    configs = [
        *monitor_scrape_configs(manifests.servicemonitor(down_owner, SPEC), down_targets),
        *monitor_scrape_configs(sm, engine_pods(sm_owner, exporters, 2)),
        *monitor_scrape_configs(sm_other, engine_pods(other, exporters, 1)),
        # The PodMonitor's namespaceSelector (watchNamespaces) keeps it to team-pm; the
        # stranger's port is not one of the engine ports, so only its own monitor scrapes it.
        *monitor_scrape_configs(pm, [*pm_targets, stranger]),
        *monitor_scrape_configs(stranger_pm, [stranger]),
    ]
    prom = Prometheus(binary, configs, tmp_path_factory.mktemp("prometheus"))
    try:
        prom.wait_ready()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if (prom.value("count(up == 1)") or 0) >= 11:  # 4 + 2 + 4 + 1 targets
                break
            time.sleep(0.5)
        else:
            raise AssertionError(prom.query("up"))
        time.sleep(6)  # a window full of scrapes of every target
        yield Setup(prom)
    finally:
        prom.stop()
        for e in exporters.values():
            e.stop()


async def snapshot(prom: Prometheus, namespace: str) -> SloSnapshot:
    return await PrometheusClient(prom.url, timeout_s=5.0, retries=0).snapshot(
        namespace, NAME, WINDOW, time.time(), TPOT_TARGET_S, TTFT_TARGET_S)


# Fields that are ratios of series scraped together (quantiles, attainment, means) come out the
# same whatever the scrape phase; rates carry Prometheus' extrapolation to the window edges.
EXACT = ("pods_scraped", "running", "waiting", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
         "tpot_p50_s", "tpot_p90_s", "tpot_p99_s", "tpot_attainment", "ttft_attainment",
         "acceptance_rate", "mean_k", "output_tokens_per_request", "prompt_tokens_per_request",
         "step_predicted_mean_s", "step_observed_mean_s")
RATES = ("request_rate", "step_rate")


async def test_service_monitor_and_pod_monitor_series_give_the_same_snapshot(
    setup: Setup,
) -> None:
    sm, pm = await asyncio.gather(snapshot(setup.prom, SM_NS), snapshot(setup.prom, PM_NS))
    for kind, snap in (("ServiceMonitor", sm), ("PodMonitor", pm)):
        shown = snap.model_dump(exclude_none=True, exclude={"namespace", "name", "time"})
        print(f"\n{kind} snapshot: {shown}")
    assert (sm.state, sm.reasons) == ("ok", [])
    assert (pm.state, pm.reasons) == ("ok", [])
    for name in EXACT:
        assert getattr(sm, name) == pytest.approx(getattr(pm, name), rel=1e-4), name
    for name in RATES:
        assert getattr(sm, name) == pytest.approx(getattr(pm, name), rel=0.2), name
    # ... and both are what the exporters serve (2 pods x 2 ports; the other resource's pod and
    # the stranger are not counted).
    assert sm.pods_scraped == 4 and sm.running == 6.0 and sm.waiting == 2.0
    assert sm.acceptance_rate == pytest.approx(0.75, rel=1e-4)
    assert sm.mean_k == pytest.approx(2.5, rel=1e-4)
    assert sm.output_tokens_per_request == pytest.approx(64.0, rel=1e-4)
    assert sm.tpot_p90_s == pytest.approx(0.05 + (0.9 - 0.85) / (0.97 - 0.85) * 0.05, rel=1e-4)
    assert sm.tpot_attainment == pytest.approx(0.85, rel=1e-4)
    assert sm.request_rate == pytest.approx(2 * SERIES.request_rate, rel=0.25)


def test_what_each_monitor_kind_attaches(setup: Setup) -> None:
    """The labels the selector relies on are on both kinds; `service` only on one (the reason
    the selector does not use it), and the job differs as the Prometheus Operator sets it."""
    sel_labels = ("namespace", "app_kubernetes_io_name", "app_kubernetes_io_instance", "pod")
    sm = setup.prom.query(f'up{{namespace="{SM_NS}",app_kubernetes_io_instance="{NAME}"}}')
    pm = setup.prom.query(f'up{{namespace="{PM_NS}",app_kubernetes_io_name="specserve-engine"}}')
    assert len(sm) == len(pm) == 4
    for series in sm + pm:
        assert all(series["metric"].get(k) for k in sel_labels), series["metric"]
        assert series["metric"]["container"] == "engine"
        assert series["metric"]["endpoint"] in (HTTP_PORT_NAME, CONTROL_PORT_NAME)
    assert {s["metric"]["job"] for s in sm} == {NAME}
    assert {s["metric"]["service"] for s in sm} == {NAME}
    assert {s["metric"]["job"] for s in pm} == {"specserve-system/specserve-engines"}
    assert not any("service" in s["metric"] for s in pm)
    # The selector of before (namespace + service) found nothing through a PodMonitor.
    assert setup.prom.query(f'up{{namespace="{PM_NS}",service="{NAME}"}}') == []
    assert setup.prom.query(f'up{{{prometheus.selector(PM_NS, NAME)}}}') != []


@pytest.mark.parametrize(("namespace", "cause"), [("team-none", "NoTargets"),
                                                  (DOWN_NS, "TargetsDown")])
async def test_no_data_says_whether_targets_are_missing_or_down(setup: Setup, namespace: str,
                                                                cause: str) -> None:
    snap = await snapshot(setup.prom, namespace)
    assert (snap.state, snap.no_data_reason) == ("noData", cause)
    assert snap.targets == (0 if cause == "NoTargets" else 2) and snap.pods_scraped == 0


async def test_grouped_queries_give_each_resource_its_own_snapshot(setup: Setup) -> None:
    """Issue #24: the one grouped round every SLO pass shares (`GroupedSnapshots`) must give each
    resource what its own ~24 queries give, on a real Prometheus holding several resources'
    series (two monitor kinds, another resource, a stranger pod, targets down, none)."""
    client = PrometheusClient(setup.prom.url, timeout_s=5.0, retries=0)
    grouped = prometheus.GroupedSnapshots(max_age_s=60.0)
    for namespace in (SM_NS, PM_NS, DOWN_NS, "team-none"):
        now = time.time()
        own = await client.snapshot(namespace, NAME, WINDOW, now, TPOT_TARGET_S, TTFT_TARGET_S,
                                    model=NAME, idle_window="30s")
        shared = await grouped.snapshot(client, namespace, NAME, WINDOW, now, TPOT_TARGET_S,
                                        TTFT_TARGET_S, model=NAME, idle_window="30s")
        assert (shared.state, shared.no_data_reason, shared.targets) == (
            own.state, own.no_data_reason, own.targets), namespace
        for name, rel in [*((n, 1e-3) for n in EXACT), *((n, 0.25) for n in RATES)]:
            want = getattr(own, name)
            assert getattr(shared, name) == (None if want is None else pytest.approx(
                want, rel=rel)), (namespace, name)
    assert grouped.rounds == 1  # one round of queries for all four
