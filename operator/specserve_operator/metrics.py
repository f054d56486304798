"""The operator's own metrics, served on /metrics (prometheus_client, its own registry).

    specserve_operator_reconciles_total{result}            ok, invalid (spec refused), error
    specserve_operator_slo_loop_seconds                    one SLO-loop pass (histogram)
    specserve_operator_slo_loop_failures_total             passes that raised (status says why)
    specserve_operator_policy_pushes_total{result}         per pod: acknowledged, failed
    specserve_operator_api_calls_total{verb,resource,code} every call of the operator's client
    specserve_operator_desired_replicas{namespace,name}    the SLO loop's replica decision
                                                           (what an HPA/KEDA acts on in
                                                           autoscaling mode external)

Served on SPECSERVE_METRICS_PORT (default 8081; 0 turns it off) from start-up; kopf's own
liveness endpoint stays on its port.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("specserve_operator_reconciles", "Reconcile passes by result.",
                     ["result"], registry=REGISTRY)
SLO_LOOP_SECONDS = Histogram(
    "specserve_operator_slo_loop_seconds", "Duration of one SLO-loop pass.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=REGISTRY)
SLO_LOOP_FAILURES = Counter("specserve_operator_slo_loop_failures",
                            "SLO-loop passes that raised.", registry=REGISTRY)
POLICY_PUSHES = Counter("specserve_operator_policy_pushes",
                        "Policy pushes to engine pods, by result (per pod).", ["result"],
                        registry=REGISTRY)
API_CALLS = Counter("specserve_operator_api_calls",
                    "Kubernetes API calls of the operator's client.",
                    ["verb", "resource", "code"], registry=REGISTRY)
# Set by every SLO-loop pass, in every autoscaling mode; a resource's series goes with it
# (`forget`). In mode external an HPA (External metric through prometheus-adapter, target
# AverageValue 1) or a KEDA prometheus trigger (threshold 1) turns it into the replica count.
DESIRED_REPLICAS = Gauge("specserve_operator_desired_replicas",
                         "Engine replicas the SLO loop decided (builtin) or recommends "
                         "(external; off: spec.replicas.initial).", ["namespace", "name"],
                         registry=REGISTRY)

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
