"""Operator-wide settings, read from the environment when the operator starts (not at import).

    SPECSERVE_STATUS_INTERVAL_S   seconds between status refreshes / drift repairs (default 15)
    SPECSERVE_SLO_INTERVAL_S      seconds between SLO loop passes, per resource (default 30)
    SPECSERVE_PROMETHEUS_URL      Prometheus for resources without spec.metrics.prometheusUrl
    SPECSERVE_SLO_WINDOW          the PromQL range of every SLO query (default 2m)
    SPECSERVE_MANAGE_SERVICEMONITORS  false: never read or write ServiceMonitors (default true;
                                  the chart sets it from operator.manageServiceMonitors, which
                                  also decides whether the RBAC grants them)
    SPECSERVE_METRICS_PORT        the operator's /metrics (default 8081; 0: off)
    SPECSERVE_PEERING             kopf peering object that elects the acting replica (see
                                  `peering`); unset or empty: standalone, one replica only
    SPECSERVE_PEERING_LIFETIME_S  seconds a silent replica counts as alive (default 30)
    SPECSERVE_PROMETHEUS_ALLOWED_URLS  comma-separated Prometheus base URLs a spec may name
                                  (besides SPECSERVE_PROMETHEUS_URL; "*": any; default none)
    SPECSERVE_PROMETHEUS_TOKEN_FILE, SPECSERVE_PROMETHEUS_CA_FILE  bearer token and CA bundle
                                  for SPECSERVE_PROMETHEUS_URL only (read on every pass)
    SPECSERVE_MONITOR_LABELS      JSON object: labels of every ServiceMonitor it creates (the
                                  chart sets it from monitoring.labels, by default
                                  {"release": "kube-prometheus-stack"}); default none
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from specserve_contract import (
    ENV_MANAGE_SERVICEMONITORS,
    ENV_METRICS_PORT,
    ENV_MONITOR_LABELS,
    ENV_PEERING,
    ENV_PEERING_LIFETIME_S,
    ENV_PROMETHEUS_ALLOWED_URLS,
    ENV_PROMETHEUS_CA_FILE,
    ENV_PROMETHEUS_TOKEN_FILE,
    ENV_PROMETHEUS_URL,
    ENV_SLO_INTERVAL_S,
    ENV_SLO_WINDOW,
    ENV_STATUS_INTERVAL_S,
)
from specserve_operator.autoscale import AutoscaleConfig
from specserve_operator.push import AddressResolver, pod_ip_address
from specserve_operator.spec import label_problems
from specserve_operator.tuning import TuningConfig

DEFAULT_STATUS_INTERVAL_S = 15.0
DEFAULT_SLO_INTERVAL_S = 30.0
DEFAULT_SLO_WINDOW = "2m"
DEFAULT_PEERING_LIFETIME_S = 30


@dataclass
class LoopConfig:
    """Settings of the SLO loop (from the environment at start-up; tests make their own)."""

    prometheus_url: str | None = None
    # spec.metrics.prometheusUrl values the operator may query (prometheus.url_allowed)
    allowed_urls: tuple[str, ...] = ()
    # credentials of prometheus_url (files mounted from Secrets), never sent elsewhere
    token_file: str | None = None
    ca_file: str | None = None
    window: str = DEFAULT_SLO_WINDOW
    prometheus_timeout_s: float = 5.0
    push_timeout_s: float = 5.0
    retries: int = 2
    address: AddressResolver = pod_ip_address
    tuning: TuningConfig = field(
        default_factory=lambda: TuningConfig(cooldown_s=2 * DEFAULT_SLO_INTERVAL_S))
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)


@dataclass(frozen=True)
class OperatorConfig:
    status_interval_s: float = DEFAULT_STATUS_INTERVAL_S
    slo_interval_s: float = DEFAULT_SLO_INTERVAL_S
    loop: LoopConfig = field(default_factory=LoopConfig)
    manage_service_monitors: bool = True
    metrics_port: int = 0  # 0: no /metrics server (from_environ defaults to 8081)
    peering: str = ""  # "": standalone
    peering_lifetime_s: int = DEFAULT_PEERING_LIFETIME_S
    monitor_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> OperatorConfig:
        slo_interval_s = float(environ.get(ENV_SLO_INTERVAL_S, DEFAULT_SLO_INTERVAL_S))
        loop = LoopConfig(
            prometheus_url=environ.get(ENV_PROMETHEUS_URL) or None,
            allowed_urls=tuple(u.strip() for u in environ.get(ENV_PROMETHEUS_ALLOWED_URLS,
                                                               "").split(",") if u.strip()),
            token_file=environ.get(ENV_PROMETHEUS_TOKEN_FILE) or None,
            ca_file=environ.get(ENV_PROMETHEUS_CA_FILE) or None,
            window=environ.get(ENV_SLO_WINDOW, DEFAULT_SLO_WINDOW),
            # Tuning waits two passes after a change, so the next snapshot measures it.
            tuning=TuningConfig(cooldown_s=2 * slo_interval_s),
        )
        return cls(
            status_interval_s=float(environ.get(ENV_STATUS_INTERVAL_S,
                                                DEFAULT_STATUS_INTERVAL_S)),
            slo_interval_s=slo_interval_s,
            loop=loop,
            manage_service_monitors=_flag(environ.get(ENV_MANAGE_SERVICEMONITORS, "true")),
            metrics_port=int(environ.get(ENV_METRICS_PORT, "8081")),
            peering=environ.get(ENV_PEERING, "").strip(),
            peering_lifetime_s=int(environ.get(ENV_PEERING_LIFETIME_S,
                                               DEFAULT_PEERING_LIFETIME_S)),
            monitor_labels=_labels(environ.get(ENV_MONITOR_LABELS, "")),
        )


def _labels(text: str) -> dict[str, str]:
    """A JSON object of labels ("" or "{}": none); ValueError saying what is wrong."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{ENV_MONITOR_LABELS}: not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{ENV_MONITOR_LABELS}: must be a JSON object of strings: {text!r}")
    problems = label_problems(value)
    if problems:
        raise ValueError(f"{ENV_MONITOR_LABELS}: " + "; ".join(problems))
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{ENV_MANAGE_SERVICEMONITORS}: not a boolean: {text!r}")
