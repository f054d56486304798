"""The operator's own metrics, served on /metrics (prometheus_client, its own registry).

    specserve_operator_reconciles_total{result}            ok, invalid (spec refused), error
    specserve_operator_slo_loop_seconds                    one SLO-loop pass (histogram)
    specserve_operator_slo_loop_failures_total             passes that raised (status says why)
    specserve_operator_policy_pushes_total{result}         per pod: acknowledged, failed
    specserve_operator_api_calls_total{verb,resource,code} every call of the operator's client
    specserve_operator_slo_no_data{namespace,name,reason}  1 per resource whose last SLO pass had
                                                           no data (reason: the NoData cause)
    specserve_operator_slo_no_data_passes_total{reason}    SLO passes without data, by cause
    specserve_operator_desired_replicas{namespace,name}    the SLO loop's replica decision
                                                           (what an HPA/KEDA acts on in
                                                           autoscaling mode external)

The no-data gauge lists only resources whose last pass is recent (within `NoDataTracker.ttl_s`,
three SLO intervals): a deleted resource's series goes once its timer stops, without a deletion
handler.

Served on SPECSERVE_METRICS_PORT (default 8081; 0 turns it off) from start-up; kopf's own
liveness endpoint stays on its port.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from specserve_contract.metrics import (
    OPERATOR_API_CALLS,
    OPERATOR_DESIRED_REPLICAS,
    OPERATOR_POLICY_PUSHES,
    OPERATOR_RECONCILES,
    OPERATOR_SLO_LOOP_FAILURES,
    OPERATOR_SLO_LOOP_SECONDS,
    OPERATOR_SLO_NO_DATA,
    OPERATOR_SLO_NO_DATA_PASSES,
)

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter(OPERATOR_RECONCILES, "Reconcile passes by result.",
                     ["result"], registry=REGISTRY)
SLO_LOOP_SECONDS = Histogram(
    OPERATOR_SLO_LOOP_SECONDS, "Duration of one SLO-loop pass.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
SLO_LOOP_FAILURES = Counter(OPERATOR_SLO_LOOP_FAILURES,
                            "SLO-loop passes that raised.", registry=REGISTRY)
POLICY_PUSHES = Counter(OPERATOR_POLICY_PUSHES,
                        "Policy pushes to engine pods, by result (per pod).", ["result"],
                        registry=REGISTRY)
API_CALLS = Counter(OPERATOR_API_CALLS,
                    "Kubernetes API calls of the operator's client.",
                    ["verb", "resource", "code"], registry=REGISTRY)
# Set by every SLO-loop pass, in every autoscaling mode; a resource's series goes with it
# (`forget`). In mode external an HPA (External metric through prometheus-adapter, target
# AverageValue 1) or a KEDA prometheus trigger (threshold 1) turns it into the replica count.
DESIRED_REPLICAS = Gauge(OPERATOR_DESIRED_REPLICAS,
                         "Engine replicas the SLO loop decided (builtin) or recommends "
                         "(external; off: spec.replicas.initial).", ["namespace", "name"],
                         registry=REGISTRY)

NO_DATA_PASSES = Counter(OPERATOR_SLO_NO_DATA_PASSES,
                         "SLO-loop passes without data, by cause.", ["reason"],
                         registry=REGISTRY)


class NoDataTracker(Collector):
    """specserve_operator_slo_no_data{namespace,name,reason}: 1 for each resource whose last
    pass (within ttl_s) had no data."""

    def __init__(self, ttl_s: float = 90.0) -> None:
        self.ttl_s = ttl_s
        self._last: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    def observe(self, namespace: str, name: str, reason: str | None,
                now: float | None = None) -> None:
        """One pass of one resource: `reason` the no-data cause, None when it had data."""
        if reason is not None:
            NO_DATA_PASSES.labels(reason).inc()
        with self._lock:
            self._last[(namespace, name)] = (reason, time.time() if now is None else now)

    def current(self, now: float | None = None) -> dict[tuple[str, str], str]:
        """(namespace, name) -> cause, for resources without data now."""
        now = time.time() if now is None else now
        with self._lock:
            for key in [k for k, (_, t) in self._last.items() if now - t > self.ttl_s]:
                del self._last[key]
            return {k: r for k, (r, _) in self._last.items() if r is not None}

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            OPERATOR_SLO_NO_DATA,
            "1 for each SpecServeDeployment whose last SLO pass had no data, by cause.",
            labels=["namespace", "name", "reason"])
        for (namespace, name), reason in sorted(self.current().items()):
            family.add_metric([namespace, name, reason], 1.0)
        yield family


NO_DATA = NoDataTracker()
REGISTRY.register(NO_DATA)

_served: list[int] = []


def forget(namespace: str, name: str) -> None:
    """Drop a deleted resource's series (a no-op when it has none)."""
    with contextlib.suppress(KeyError):
        DESIRED_REPLICAS.remove(namespace, name)


def serve(port: int) -> None:
    """Start the /metrics server once per process (a second start in tests is a no-op)."""
    if port and not _served:
        start_http_server(port, registry=REGISTRY)
        _served.append(port)
