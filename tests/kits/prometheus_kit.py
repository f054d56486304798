"""A real Prometheus for tests, the scrape configuration the Prometheus Operator generates for a
ServiceMonitor or a PodMonitor, and a tiny exporter of vllm:* / specserve_* series.

`Prometheus` runs the Debian package's `prometheus` on 127.0.0.1 (temporary storage, 1 s
scrapes). Kubernetes service discovery is not available without a cluster, so
`monitor_scrape_configs` turns a monitor object (the operator's ServiceMonitor, the chart's
PodMonitor) into scrape configs whose static targets carry the `__meta_kubernetes_*` labels
that Kubernetes SD would attach (role `endpoints` for a ServiceMonitor, `pod` for a PodMonitor),
followed by the relabel_configs the Prometheus Operator generates for that monitor kind. Those
rules are transcribed from prometheus-operator's pkg/prometheus/promcfg.go
(`generateServiceMonitorConfig` and `generatePodMonitorConfig`, read at commit
6adcebc5076c34f4f55f8f5f7b1e528929373ac7): keep by selector labels, keep by port name, then
namespace/service/pod/container, the running-pod filter, targetLabels/podTargetLabels (sanitized,
regex "(.+)"), job (the Service name; "<namespace>/<name>" for a PodMonitor) and endpoint (the
port name). Left out, because the monitors here do not use them: jobLabel, sharding, scrape
classes, relabelings/metricRelabelings of the endpoints, node labels.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from specserve_contract.metrics import (
    SPECULATIVE_K,
    STEP_TIME_OBSERVED,
    STEP_TIME_PREDICTED,
    VLLM_E2E_LATENCY,
    VLLM_REQUEST_GENERATION_TOKENS,
    VLLM_REQUEST_PROMPT_TOKENS,
    VLLM_RUNNING,
    VLLM_SPEC_ACCEPTED_TOKENS,
    VLLM_SPEC_DRAFT_TOKENS,
    VLLM_TPOT,
    VLLM_TTFT,
    VLLM_WAITING,
)
from specserve_engine.launcher import free_port


def prometheus_binary() -> str | None:
    return shutil.which("prometheus") or next(
        (p for p in ("/usr/bin/prometheus", "/usr/sbin/prometheus") if Path(p).exists()), None)


class Prometheus:
    """`prometheus` on 127.0.0.1:<free port>, 1 s scrapes, temporary storage."""

    def __init__(self, binary: str, scrape_configs: list[dict[str, Any]], workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": scrape_configs,
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={workdir / 'prometheus.yml'}",
                 f"--storage.tsdb.path={workdir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def static(cls, binary: str, targets: list[str], labels: Mapping[str, str],
               workdir: Path) -> Prometheus:
        """One job scraping `targets`, each with `labels` attached."""
        return cls(binary, [{"job_name": "specserve", "static_configs": [
            {"targets": targets, "labels": dict(labels)}]}], workdir)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.3)
        raise AssertionError(f"prometheus not ready:\n{self.log.read_text()[-2000:]}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5.0).json()
        assert r["status"] == "success", r
        return list(r["data"]["result"])

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


# ------------------------------------------------------------- the Prometheus Operator's rules


def sanitize(name: str) -> str:
    """promcfg.go's sanitizeLabelName: [^a-zA-Z0-9_] -> "_"."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


@dataclass(frozen=True)
class PodTarget:
    """One container port of one pod, as Kubernetes service discovery would see it."""

    namespace: str
    pod: str
    pod_labels: Mapping[str, str]
    container: str
    port_name: str
    address: str  # host:port where the test's exporter listens
    service: str | None = None  # the Service whose Endpoints list this port (ServiceMonitor)
    service_labels: Mapping[str, str] = field(default_factory=dict)
    phase: str = "Running"


def _label_meta(prefix: str, labels: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for key, value in labels.items():
        out[f"{prefix}_label_{sanitize(key)}"] = value
        out[f"{prefix}_labelpresent_{sanitize(key)}"] = "true"
    return out


def pod_meta(t: PodTarget) -> dict[str, str]:
    """The `__meta_kubernetes_*` labels of role `pod` (and the pod part of role endpoints)."""
    return {
        "__meta_kubernetes_namespace": t.namespace,
        "__meta_kubernetes_pod_name": t.pod,
        "__meta_kubernetes_pod_phase": t.phase,
        "__meta_kubernetes_pod_container_name": t.container,
        "__meta_kubernetes_pod_container_port_name": t.port_name,
        **_label_meta("__meta_kubernetes_pod", t.pod_labels),
    }


def endpoints_meta(t: PodTarget) -> dict[str, str]:
    """Role `endpoints`: the Service and endpoint port, plus the pod's labels."""
    assert t.service is not None, "a ServiceMonitor target needs its Service"
    return {
        **pod_meta(t),
        "__meta_kubernetes_service_name": t.service,
        **_label_meta("__meta_kubernetes_service", t.service_labels),
        "__meta_kubernetes_endpoint_port_name": t.port_name,
        "__meta_kubernetes_endpoint_address_target_kind": "Pod",
        "__meta_kubernetes_endpoint_address_target_name": t.pod,
    }


def _keep_selected(prefix: str, match_labels: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"action": "keep",
             "source_labels": [f"{prefix}_label_{sanitize(k)}",
                               f"{prefix}_labelpresent_{sanitize(k)}"],
             "regex": f"({match_labels[k]});true"} for k in sorted(match_labels)]


def _copy_labels(prefix: str, names: Sequence[str]) -> list[dict[str, Any]]:
    return [{"source_labels": [f"{prefix}_label_{sanitize(n)}"], "target_label": sanitize(n),
             "regex": "(.+)", "replacement": "${1}"} for n in names]


RUNNING_FILTER = {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"],
                  "regex": "(Failed|Succeeded)"}
JOB_TO_TMP = {"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}


def servicemonitor_relabelings(sm: Mapping[str, Any], ep: Mapping[str, Any]
                               ) -> list[dict[str, Any]]:
    spec = sm["spec"]
    target = ["__meta_kubernetes_endpoint_address_target_kind",
              "__meta_kubernetes_endpoint_address_target_name"]
    return [
        JOB_TO_TMP,
        *_keep_selected("__meta_kubernetes_service", spec["selector"].get("matchLabels", {})),
        {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"],
         "regex": ep["port"]},
        {"source_labels": target, "separator": ";", "regex": "Node;(.*)",
         "replacement": "${1}", "target_label": "node"},
        {"source_labels": target, "separator": ";", "regex": "Pod;(.*)",
         "replacement": "${1}", "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        RUNNING_FILTER,
        *_copy_labels("__meta_kubernetes_service", spec.get("targetLabels", [])),
        *_copy_labels("__meta_kubernetes_pod", spec.get("podTargetLabels", [])),
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job",
         "replacement": "${1}"},
        {"target_label": "endpoint", "replacement": ep["port"]},
    ]


def podmonitor_relabelings(pm: Mapping[str, Any], ep: Mapping[str, Any]) -> list[dict[str, Any]]:
    spec, meta = pm["spec"], pm["metadata"]
    return [
        JOB_TO_TMP,
        RUNNING_FILTER,
        *_keep_selected("__meta_kubernetes_pod", spec["selector"].get("matchLabels", {})),
        {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
         "regex": ep["port"]},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        *_copy_labels("__meta_kubernetes_pod", spec.get("podTargetLabels", [])),
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
        {"target_label": "endpoint", "replacement": ep["port"]},
    ]


def _in_namespaces(monitor: Mapping[str, Any], namespace: str) -> bool:
    sel = monitor["spec"].get("namespaceSelector") or {}
    if sel.get("any"):
        return True
    names = sel.get("matchNames") or [monitor["metadata"]["namespace"]]
    return namespace in names


def monitor_scrape_configs(monitor: Mapping[str, Any], targets: Sequence[PodTarget]
                           ) -> list[dict[str, Any]]:
    """The scrape configs the Prometheus Operator would generate for `monitor` (one per
    endpoint, job_name `serviceMonitor/NS/NAME/i` or `podMonitor/NS/NAME/i`), with `targets`
    standing in for what Kubernetes SD discovers in the monitor's namespaces."""
    kind, meta = monitor["kind"], monitor["metadata"]
    if kind == "ServiceMonitor":
        endpoints, relabel = monitor["spec"]["endpoints"], servicemonitor_relabelings
        sd: Callable[[PodTarget], dict[str, str]] = endpoints_meta
        found = [t for t in targets if t.service is not None]
        job = "serviceMonitor"
    elif kind == "PodMonitor":
        endpoints, relabel = monitor["spec"]["podMetricsEndpoints"], podmonitor_relabelings
        sd, found, job = pod_meta, list(targets), "podMonitor"
    else:
        raise ValueError(kind)
    found = [t for t in found if _in_namespaces(monitor, t.namespace)]
    out = []
    for i, ep in enumerate(endpoints):
        out.append({
            "job_name": f"{job}/{meta['namespace']}/{meta['name']}/{i}",
            "metrics_path": ep.get("path", "/metrics"),
            "scrape_interval": "1s",
            # Kubernetes SD yields every port of every selected pod; relabelling keeps ep's.
            "static_configs": [{"targets": [t.address], "labels": sd(t)} for t in found],
            "relabel_configs": relabel(monitor, ep),
        })
    return out


# ----------------------------------------------------------------------------- the exporter


@dataclass(frozen=True)
class EngineSeries:
    """Rates (per second) that the exporter's counters grow at, and its gauges. Histograms
    are given as cumulative fractions per bucket bound."""

    request_rate: float = 2.0
    ttft_buckets: tuple[tuple[str, float], ...] = (("0.1", 0.2), ("0.5", 0.7), ("1.0", 0.95),
                                                   ("+Inf", 1.0))
    tpot_buckets: tuple[tuple[str, float], ...] = (("0.01", 0.1), ("0.025", 0.5),
                                                   ("0.05", 0.85), ("0.1", 0.97), ("+Inf", 1.0))
    output_tokens: float = 64.0
    prompt_tokens: float = 200.0
    drafted_per_s: float = 300.0
    accepted_per_s: float = 225.0  # acceptance 0.75
    running: float = 3.0
    waiting: float = 1.0
    steps_per_s: float = 40.0
    mean_k: float = 2.5
    step_observed_s: float = 0.030
    step_predicted_s: float = 0.027


def _histogram(name: str, labels: str, buckets: Sequence[tuple[str, float]], count: float,
               mean: float) -> list[str]:
    lines = [f"# TYPE {name} histogram"]
    for le, frac in buckets:
        lines.append(f'{name}_bucket{{{labels}le="{le}"}} {frac * count:.6f}')
    lines += [f"{name}_sum{{{labels.rstrip(',')}}} {mean * count:.6f}",
              f"{name}_count{{{labels.rstrip(',')}}} {count:.6f}"]
    return lines


def _sample(name: str, kind: str, labels: str, value: object) -> list[str]:
    return [f"# TYPE {name} {kind}", f"{name}{{{labels.rstrip(',')}}} {value}"]


def vllm_exposition(s: EngineSeries, t: float) -> str:
    """What vLLM's /metrics would say `t` seconds after start at these constant rates."""
    m = 'model_name="tiny",'
    n = s.request_rate * t
    lines = [
        *_histogram(VLLM_TTFT, m, s.ttft_buckets, n, 0.3),
        *_histogram(VLLM_TPOT, m, s.tpot_buckets, n, 0.03),
        *_histogram(VLLM_E2E_LATENCY, m, (("+Inf", 1.0),), n, 2.0),
        *_histogram(VLLM_REQUEST_GENERATION_TOKENS, m, (("+Inf", 1.0),), n, s.output_tokens),
        *_histogram(VLLM_REQUEST_PROMPT_TOKENS, m, (("+Inf", 1.0),), n, s.prompt_tokens),
        *_sample(VLLM_SPEC_DRAFT_TOKENS, "counter", m, f"{s.drafted_per_s * t:.6f}"),
        *_sample(VLLM_SPEC_ACCEPTED_TOKENS, "counter", m, f"{s.accepted_per_s * t:.6f}"),
        *_sample(VLLM_RUNNING, "gauge", m, s.running),
        *_sample(VLLM_WAITING, "gauge", m, s.waiting),
    ]
    return "\n".join(lines) + "\n"


def control_exposition(s: EngineSeries, t: float) -> str:
    """What the SpecServe control port's /metrics would say (specserve_*)."""
    steps = s.steps_per_s * t
    lines = [
        *_histogram(SPECULATIVE_K, "", (("+Inf", 1.0),), steps, s.mean_k),
        *_histogram(STEP_TIME_OBSERVED, "", (("+Inf", 1.0),), steps, s.step_observed_s),
        *_histogram(STEP_TIME_PREDICTED, "", (("+Inf", 1.0),), steps, s.step_predicted_s),
    ]
    return "\n".join(lines) + "\n"


class Exporter:
    """An HTTP server on 127.0.0.1 answering GET /metrics with `render(seconds since start)`."""

    def __init__(self, render: Callable[[float], str]) -> None:
        start = time.monotonic()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = render(time.monotonic() - start).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
