"""SLO measurements of one deployment from Prometheus: PromQL in, an `SloSnapshot` out.

Pure parts (query building, result parsing, attainment from histogram buckets, assembling the
snapshot) are plain functions; `PrometheusClient` is the thin HTTP adapter (timeouts, retries).

Series are selected by `namespace` and the two pod labels every monitor copies onto them
(`specserve_contract.series_labels`: app_kubernetes_io_name="specserve-engine",
app_kubernetes_io_instance=NAME). The Prometheus Operator sets `namespace` on every target, and
`podTargetLabels` copies pod labels, in the same way for a ServiceMonitor (the operator's) and a
PodMonitor (the chart's); a `service` label exists only for ServiceMonitor targets, so it is
not used. Both ports (vllm:* and specserve_*) carry the labels. A plain Prometheus gets them
with the usual `labelmap` of `__meta_kubernetes_pod_label_(.+)`, or as static target labels.

The gateway's demand for the deployment's model (scale from zero, scale to zero: see
autoscale.decide_zero) is selected by `model` alone, the name the gateway serves it under
(spec.model.servedName, else the resource's name, as gateway/kube_routes.served_model reads
it): those series describe requests, not pods, so they exist while the deployment has none.
The gateway exports `specserve_gateway_held_requests{model}` for every model it knows (0 when
nothing is held), so an empty result means "no scraped gateway knows this model", not "no
demand"; `specserve_gateway_holds_total{model,outcome}` likewise starts at 0, so `increase`
counts its first hold. They never decide `state`: a deployment scaled to zero has no engine
targets (NoTargets) and its gateway demand is still read.

"No data" is a state of its own: when the pods are not scraped, or the request rate or the
latency histograms are missing, the snapshot says so (`state` "noData" with the reasons) and
`slo_met` is None. The tuning loop then keeps the current policy and the autoscaler keeps the
replica count: missing metrics never count as "SLO met" and never shrink a deployment.
`no_data_reason` names the cause, one of `NO_DATA_REASONS` (the NoData condition's reason):

    NoPrometheusUrl          no spec.metrics.prometheusUrl and no SPECSERVE_PROMETHEUS_URL
    PrometheusUrlNotAllowed  spec.metrics.prometheusUrl is not on the operator's allow-list
    CredentialsUnavailable   a bearer-token or CA Secret named in spec.metrics cannot be read
    QueryError               Prometheus did not answer, or refused a query (HTTP, TLS, 4xx/5xx)
    NoTargets                Prometheus has no `up` series for the selector (not scraped at all)
    TargetsDown              `up` series exist, none is 1 (the scrapes fail)
    EmptySeries              scraped, but the request-rate or TPOT series are missing
    ScaledToZero             no engine pod because the deployment is at zero replicas: nothing
                             to measure, and not a fault (NoData is False, no event, no alert)
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field

from specserve_contract import APP_NAME, LABEL_INSTANCE, LABEL_NAME, series_label, series_labels
from specserve_contract.metrics import (
    GATEWAY_HELD,
    GATEWAY_HOLDS,
    GATEWAY_REQUESTS,
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

# Finished requests: the count of vLLM's end-to-end latency histogram.
ENGINE_REQUESTS = f"{VLLM_E2E_LATENCY}_count"
QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}

SnapshotState = Literal["ok", "noData", "error"]
NoDataReason = Literal["NoPrometheusUrl", "PrometheusUrlNotAllowed", "CredentialsUnavailable",
                       "QueryError", "NoTargets", "TargetsDown", "EmptySeries", "ScaledToZero"]
NO_DATA_REASONS: tuple[str, ...] = NoDataReason.__args__  # type: ignore[attr-defined]


class SloSnapshot(BaseModel):
    """What Prometheus says about one deployment over the last `window`."""

    model_config = ConfigDict(frozen=True)

    namespace: str
    name: str
    time: float = Field(description="unix seconds of the evaluation")
    window: str
    state: SnapshotState
    reasons: list[str] = Field(default_factory=list, description="why state is not ok")
    no_data_reason: NoDataReason | None = Field(
        default=None, description="the cause when state is not ok (NO_DATA_REASONS)")
    targets: int | None = Field(default=None, description="`up` series for the selector")
    pods_scraped: int | None = Field(default=None, description="targets with up == 1")
    ttft_p50_s: float | None = None
    ttft_p90_s: float | None = None
    ttft_p99_s: float | None = None
    tpot_p50_s: float | None = None
    tpot_p90_s: float | None = None
    tpot_p99_s: float | None = None
    request_rate: float | None = Field(default=None, description="finished requests per second")
    running: float | None = None
    waiting: float | None = None
    output_tokens_per_request: float | None = None
    prompt_tokens_per_request: float | None = None
    acceptance_rate: float | None = Field(
        default=None, description="accepted / drafted tokens (vllm:spec_decode_*)")
    mean_k: float | None = None
    step_rate: float | None = Field(default=None, description="decided steps per second")
    step_predicted_mean_s: float | None = None
    step_observed_mean_s: float | None = None
    tpot_attainment: float | None = Field(
        default=None, description="fraction of requests whose TPOT met the target")
    ttft_attainment: float | None = Field(
        default=None, description="fraction of requests whose TTFT met the p90 target")
    gateway_held: float | None = Field(
        default=None, description="most requests the gateways held at once for the model in the "
        "window (summed over gateway pods); None: no scraped gateway knows the model")
    gateway_holds: float | None = Field(
        default=None, description="requests that found no ready backend at a gateway in the "
        "window (held, or refused with the queue full)")
    gateway_requests_idle: float | None = Field(
        default=None, description="requests the gateways answered for the model over the "
        "idle window (spec.autoscaling.scaleToZeroAfterSeconds)")
    engine_requests_idle: float | None = Field(
        default=None, description="requests the engines finished over the idle window")

    @property
    def has_data(self) -> bool:
        return self.state == "ok"

    @property
    def attainment(self) -> float | None:
        """Fraction of requests meeting both targets (the worse of the two), None if unknown."""
        values = [a for a in (self.tpot_attainment, self.ttft_attainment) if a is not None]
        return min(values) if values else None

    def slo_met(self, tpot_p90_s: float, attainment: float) -> bool | None:
        """True/False against the targets; None when there is no data (never "met")."""
        if not self.has_data or self.tpot_p90_s is None:
            return None
        att = self.attainment
        return self.tpot_p90_s <= tpot_p90_s and (att is None or att >= attainment)


# ------------------------------------------------------------------------------- PromQL (pure)


def _quote(v: str) -> str:
    """A PromQL string literal."""
    return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'


def selector(namespace: str, name: str) -> str:
    """Label matchers for one deployment's series (escaped for PromQL string literals)."""
    pairs = {"namespace": namespace, **series_labels(name)}
    return ",".join(f"{k}={_quote(v)}" for k, v in pairs.items())


def model_selector(model: str) -> str:
    """Label matchers for the gateway's series of one served model name."""
    return f"model={_quote(model)}"


def _ratio(num: str, den: str, sel: str, window: str, by: Sequence[str] = ()) -> str:
    s = f"sum{_by(by)}"
    return f"{s}(rate({num}{{{sel}}}[{window}])) / {s}(rate({den}{{{sel}}}[{window}]))"


def _mean(histogram: str, sel: str, window: str, by: Sequence[str] = ()) -> str:
    """The mean observation of a histogram over the window."""
    return _ratio(f"{histogram}_sum", f"{histogram}_count", sel, window, by)


def _by(by: Sequence[str], *extra: str) -> str:
    """`sum` of one resource (no labels) or `sum by (<labels>)` of all at once (grouped)."""
    labels = [*by, *extra]
    return f" by ({', '.join(labels)}) " if labels else ""


def build_queries(sel: str, window: str, model: str | None = None,
                  idle_window: str | None = None, by: Sequence[str] = ()) -> dict[str, str]:
    """Every instant query of a snapshot, by snapshot field (buckets for attainment too).

    With `model` (the served name): the gateway's demand for it over `window`; with
    `idle_window` as well: the requests over that window at the gateway and at the engines
    (has the deployment been idle long enough to scale to zero?).
    `by`: the labels to group by (`grouped_queries`: every resource in one query); () is one
    resource's aggregate, as `sel` selects it."""
    out: dict[str, str] = {}
    s, c = f"sum{_by(by)}", f"count{_by(by)}"
    for metric, prefix in ((VLLM_TTFT, "ttft"), (VLLM_TPOT, "tpot")):
        buckets = f"sum{_by(by, 'le')}(rate({metric}_bucket{{{sel}}}[{window}]))"
        for name, q in QUANTILES.items():
            out[f"{prefix}_{name}_s"] = f"histogram_quantile({q}, {buckets})"
        out[f"{prefix}_buckets"] = buckets
    out["targets"] = f"{c}(up{{{sel}}})"
    out["pods_scraped"] = f"{c}(up{{{sel}}} == 1)"
    out["request_rate"] = f"{s}(rate({ENGINE_REQUESTS}{{{sel}}}[{window}]))"
    out["running"] = f"{s}({VLLM_RUNNING}{{{sel}}})"
    out["waiting"] = f"{s}({VLLM_WAITING}{{{sel}}})"
    out["output_tokens_per_request"] = _mean(VLLM_REQUEST_GENERATION_TOKENS, sel, window, by)
    out["prompt_tokens_per_request"] = _mean(VLLM_REQUEST_PROMPT_TOKENS, sel, window, by)
    out["acceptance_rate"] = _ratio(VLLM_SPEC_ACCEPTED_TOKENS, VLLM_SPEC_DRAFT_TOKENS, sel,
                                    window, by)
    out["mean_k"] = _mean(SPECULATIVE_K, sel, window, by)
    out["step_rate"] = f"{s}(rate({STEP_TIME_OBSERVED}_count{{{sel}}}[{window}]))"
    out["step_predicted_mean_s"] = _mean(STEP_TIME_PREDICTED, sel, window, by)
    out["step_observed_mean_s"] = _mean(STEP_TIME_OBSERVED, sel, window, by)
    if model is not None:
        out.update(gateway_queries(model_selector(model), window, idle_window))
        if idle_window is not None:
            out["engine_requests_idle"] = (
                f"{s}(increase({ENGINE_REQUESTS}{{{sel}}}[{idle_window}]))")
    return out


def gateway_queries(msel: str, window: str, idle_window: str | None = None,
                    by: Sequence[str] = ()) -> dict[str, str]:
    """The gateway's demand for the models `msel` selects (`by` ("model",): all at once)."""
    s = f"sum{_by(by)}"
    out = {"gateway_held": f"{s}(max_over_time({GATEWAY_HELD}{{{msel}}}[{window}]))",
           "gateway_holds": f"{s}(increase({GATEWAY_HOLDS}{{{msel}}}[{window}]))"}
    if idle_window is not None:
        out["gateway_requests_idle"] = f"{s}(increase({GATEWAY_REQUESTS}{{{msel}}}[{idle_window}]))"
    return out


# ------------------------------------------------------------ grouped: every resource at once
# One query per snapshot field for every resource a Prometheus holds (grouped by the series
# labels that name a resource) instead of one per field and resource: a pass over N resources
# costs O(1) queries, not ~24 N. `split` cuts a grouped answer into the one-resource answers
# `assemble` reads, so both paths give the same snapshot.

RESOURCE_LABELS = ("namespace", series_label(LABEL_INSTANCE))
MODEL_LABELS = ("model",)
ENGINE_SERIES = f"{series_label(LABEL_NAME)}={_quote(APP_NAME)}"  # every resource's series


def grouped_queries(window: str, idle_window: str | None = None) -> dict[str, str]:
    """The snapshot fields for every resource (grouped by `RESOURCE_LABELS`), the gateway's
    for every model (by `MODEL_LABELS`, keys prefixed "gateway_"); with `idle_window` also
    its two idle counts."""
    out = build_queries(ENGINE_SERIES, window, by=RESOURCE_LABELS)
    out.update(gateway_queries("", window, idle_window, by=MODEL_LABELS))
    if idle_window is not None:
        out["engine_requests_idle"] = (f"sum{_by(RESOURCE_LABELS)}(increase({ENGINE_REQUESTS}"
                                       f"{{{ENGINE_SERIES}}}[{idle_window}]))")
    return out


def split(data: Mapping[str, Any] | None, labels: Sequence[str]
          ) -> dict[tuple[str, ...], dict[str, Any]] | None:
    """A grouped instant vector -> {label values: the vector of that group alone}."""
    if data is None:
        return None
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for item in data.get("result") or []:
        metric = item.get("metric") or {}
        key = tuple(str(metric.get(label, "")) for label in labels)
        groups.setdefault(key, {"resultType": "vector", "result": []})["result"].append(item)
    return groups


def results_for(grouped: Mapping[str, dict[tuple[str, ...], dict[str, Any]] | None],
                namespace: str, name: str, model: str | None) -> dict[str, Any]:
    """One resource's answers out of the split grouped ones (None where the query failed, an
    empty vector where the resource has no series: what its own query would have answered)."""
    empty = {"resultType": "vector", "result": []}
    out: dict[str, Any] = {}
    for key, groups in grouped.items():
        if key.startswith("gateway_"):
            if model is None:
                continue
            out[key] = None if groups is None else groups.get((model,), empty)
        else:
            out[key] = None if groups is None else groups.get((namespace, name), empty)
    return out


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def parse_scalar(data: Mapping[str, Any]) -> float | None:
    """The value of a one-element instant vector (or scalar); None when empty or NaN/Inf."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list) and len(result) == 2:
        return _number(result[1])
    if kind == "vector" and isinstance(result, list) and result:
        return _number((result[0].get("value") or [None, None])[1])
    return None


def parse_buckets(data: Mapping[str, Any]) -> list[tuple[float, float]]:
    """`sum by (le)` result -> [(upper bound, cumulative rate)] sorted by bound (+Inf last)."""
    out = []
    for item in data.get("result") or []:
        le = _number((item.get("metric") or {}).get("le")) if (item.get("metric") or {}).get(
            "le") != "+Inf" else math.inf
        value = _number((item.get("value") or [None, None])[1])
        if le is not None and value is not None:
            out.append((le, value))
    return sorted(out)


def fraction_at_most(buckets: Sequence[tuple[float, float]], x: float) -> float | None:
    """Fraction of observations <= x from cumulative histogram buckets (linear within a bucket,
    as histogram_quantile does); None when the histogram is empty."""
    if not buckets or buckets[-1][0] != math.inf:
        return None
    total = buckets[-1][1]
    if total <= 0:
        return None
    lo_bound, lo_count = 0.0, 0.0
    for bound, count in buckets:
        if x < bound:
            if bound == math.inf:
                return lo_count / total
            width = bound - lo_bound
            frac = (x - lo_bound) / width if width > 0 else 1.0
            return min(1.0, (lo_count + frac * (count - lo_count)) / total)
        lo_bound, lo_count = bound, count
    return 1.0


def assemble(
    namespace: str,
    name: str,
    now: float,
    window: str,
    results: Mapping[str, Mapping[str, Any] | None],
    tpot_target_s: float,
    ttft_target_s: float,
) -> SloSnapshot:
    """A snapshot from query results (`None` = that query failed). Pure.

    State: "error" when no query answered at all; "noData" when pods are not scraped or the
    request rate / latency histograms are absent; otherwise "ok". An idle deployment (pods
    scraped, rate 0, no latencies) is "ok" with no quantiles: an observed zero, not a gap.
    `no_data_reason`: the first that applies of QueryError (some query failed: the rest cannot
    be trusted to be complete), NoTargets, TargetsDown, EmptySeries.
    """
    fields: dict[str, Any] = {}
    for key, data in results.items():
        if key.endswith("_buckets") or data is None:
            continue
        value = parse_scalar(data)
        if key in ("targets", "pods_scraped"):  # count() of nothing is an empty vector
            value = int(value) if value is not None else 0 if data.get("result") == [] else None
        fields[key] = value
    tpot_buckets = parse_buckets(results.get("tpot_buckets") or {})
    ttft_buckets = parse_buckets(results.get("ttft_buckets") or {})
    fields["tpot_attainment"] = fraction_at_most(tpot_buckets, tpot_target_s)
    fields["ttft_attainment"] = fraction_at_most(ttft_buckets, ttft_target_s)

    reasons: list[str] = []
    why: NoDataReason | None = None
    sel = "{" + selector(namespace, name) + "}"
    if all(v is None for v in results.values()):
        state: SnapshotState = "error"
        reasons.append("Prometheus answered no query")
        why = "QueryError"
    else:
        failed = sorted(k for k, v in results.items() if v is None)
        if failed:
            reasons.append("queries failed: " + ", ".join(failed))
            why = "QueryError"
        if fields.get("targets") == 0:
            reasons.append(f"Prometheus has no target (no `up` series) for {sel}: is a "
                           "ServiceMonitor or PodMonitor selected by this Prometheus?")
            why = why or "NoTargets"
        elif not fields.get("pods_scraped"):
            reasons.append(f"no engine pod is scraped (up == 1) for {sel}")
            why = why or "TargetsDown"
        rate = fields.get("request_rate")
        if rate is None:
            reasons.append(f"no request-rate series ({ENGINE_REQUESTS})")
        elif rate > 0 and fields.get("tpot_p90_s") is None:
            reasons.append(f"requests are served but no TPOT histogram ({VLLM_TPOT}_bucket)")
        if reasons:
            why = why or "EmptySeries"
        state = "noData" if reasons else "ok"
    return SloSnapshot(namespace=namespace, name=name, time=now, window=window, state=state,
                       reasons=reasons, no_data_reason=why, **fields)


# ------------------------------------------------------------------- which URLs (pure)


def _origin(url: str) -> tuple[str, str, int, str] | None:
    """(scheme, host, port, path) of an http(s) URL without credentials; None otherwise."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    if parts.query or parts.fragment:
        return None
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, parts.hostname.lower(), port or default, parts.path.rstrip("/")


def url_allowed(url: str, allowed: Sequence[str], default: str | None) -> bool:
    """May the operator query `url` (named in a spec)? Yes for its default URL and for URLs
    under an allow-list entry (same scheme, host and port; the entry's path or below it); "*"
    allows any. URLs with credentials, a query or a fragment never."""
    target = _origin(url)
    if target is None:
        return False
    if "*" in allowed:
        return True
    for entry in [*allowed, *([default] if default else [])]:
        base = _origin(entry)
        if base is None or base[:3] != target[:3]:
            continue
        if target[3] == base[3] or target[3].startswith(base[3] + "/"):
            return True
    return False


# ------------------------------------------------------------------------------- HTTP adapter


class PrometheusError(RuntimeError):
    pass


class PrometheusClient:
    """Instant queries against the Prometheus HTTP API (`GET /api/v1/query`)."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 2,
                 backoff_s: float = 0.2, transport: httpx.AsyncBaseTransport | None = None,
                 token: str | None = None, ca_pem: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.transport = transport
        self.token = token  # sent as `Authorization: Bearer <token>`
        self.ca_pem = ca_pem  # PEM bundle the server's certificate must chain to

    def http_client(self) -> httpx.AsyncClient:
        """An HTTP client with this Prometheus' credentials and trust (system CAs without
        ca_pem)."""
        verify: ssl.SSLContext | bool = True
        if self.ca_pem:
            verify = ssl.create_default_context(cadata=self.ca_pem)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        return httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport,
                                 verify=verify, headers=headers)

    async def query(self, client: httpx.AsyncClient, promql: str, at: float) -> dict[str, Any]:
        """The `data` of one query; PrometheusError after the retries (5xx, timeouts, refused)."""
        last = ""
        for attempt in range(self.retries + 1):
            try:
                r = await client.get(f"{self.url}/api/v1/query",
                                     params={"query": promql, "time": f"{at:.3f}"})
                if r.status_code == 200:
                    body = r.json()
                    if body.get("status") == "success":
                        return body.get("data") or {}
                    last = f"{body.get('errorType')}: {body.get('error')}"
                    break  # a bad query does not get better by retrying
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code < 500:
                    break
            except (httpx.HTTPError, ValueError) as exc:
                last = f"{type(exc).__name__}: {exc}" or type(exc).__name__
            if attempt < self.retries:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        raise PrometheusError(f"{self.url}: {last}")

    async def snapshot(
        self, namespace: str, name: str, window: str, now: float,
        tpot_target_s: float, ttft_target_s: float, model: str | None = None,
        idle_window: str | None = None,
    ) -> SloSnapshot:
        """Run every query concurrently and assemble the snapshot (never raises for HTTP);
        `model` and `idle_window` as in `build_queries`."""
        queries = build_queries(selector(namespace, name), window, model, idle_window)
        errors: list[str] = []
        async with self.http_client() as client:
            async def one(q: str) -> dict[str, Any] | None:
                try:
                    return await self.query(client, q, now)
                except PrometheusError as exc:
                    errors.append(str(exc))
                    return None
            values = await asyncio.gather(*(one(q) for q in queries.values()))
        snap = assemble(namespace, name, now, window, dict(zip(queries, values, strict=True)),
                        tpot_target_s, ttft_target_s)
        if errors and snap.state == "error":
            snap = snap.model_copy(update={"reasons": [*snap.reasons, errors[0]]})
        return snap

    async def grouped(self, window: str, now: float, idle_window: str | None = None
                      ) -> GroupedAnswers:
        """Every grouped query (`grouped_queries`), concurrently, split by resource or model:
        (answers by field, None where a query failed; the errors)."""
        queries = grouped_queries(window, idle_window)
        errors: list[str] = []
        async with self.http_client() as client:
            async def one(key: str, q: str) -> dict[tuple[str, ...], dict[str, Any]] | None:
                try:
                    data = await self.query(client, q, now)
                except PrometheusError as exc:
                    errors.append(str(exc))
                    return None
                return split(data, MODEL_LABELS if key.startswith("gateway_")
                             else RESOURCE_LABELS)
            values = await asyncio.gather(*(one(k, q) for k, q in queries.items()))
        return dict(zip(queries, values, strict=True)), errors


GroupedAnswers = tuple[dict[str, dict[tuple[str, ...], dict[str, Any]] | None], list[str]]


class GroupedSnapshots:
    """The grouped answers of each Prometheus, shared by every resource's SLO pass.

    kopf runs one SLO timer per resource; each pass asks `snapshot` for its resource. The first
    pass to ask a Prometheus (URL + credentials + window + idle window) runs the grouped
    queries; the passes after it, until `max_age_s` has gone by, read their resource out of
    that answer (a pass that asks while it is under way waits for it). So a Prometheus gets
    about `interval / max_age_s` rounds of ~24 queries per SLO interval, whatever the number of
    resources, instead of ~24 per resource. The price: a snapshot up to `max_age_s` older than
    the pass (the handlers set it to half the SLO interval; the windows are minutes)."""

    def __init__(self, max_age_s: float = 15.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.clock = clock
        self._answers: dict[tuple[Any, ...],
                            tuple[float, float, asyncio.Task[GroupedAnswers]]] = {}
        self.rounds = 0  # grouped rounds run (tests, the benchmark)

    async def answers(self, client: PrometheusClient, window: str, now: float,
                      idle_window: str | None) -> tuple[float, GroupedAnswers]:
        """(the evaluation time, the answers) of a round at most `max_age_s` old."""
        key = (client.url, client.token, client.ca_pem, window, idle_window)
        loop = asyncio.get_running_loop()
        held = self._answers.get(key)
        if (held is None or self.clock() - held[0] >= self.max_age_s
                or held[2].get_loop() is not loop):
            self.rounds += 1
            task = loop.create_task(client.grouped(window, now, idle_window))
            held = self._answers[key] = (self.clock(), now, task)
        return held[1], await asyncio.shield(held[2])

    async def snapshot(
        self, client: PrometheusClient, namespace: str, name: str, window: str, now: float,
        tpot_target_s: float, ttft_target_s: float, model: str | None = None,
        idle_window: str | None = None,
    ) -> SloSnapshot:
        """What `PrometheusClient.snapshot` gives, from the shared grouped answers."""
        at, (grouped, errors) = await self.answers(client, window, now, idle_window)
        results = results_for(grouped, namespace, name, model)
        if idle_window is None or model is None:
            results.pop("engine_requests_idle", None)
            results.pop("gateway_requests_idle", None)
        snap = assemble(namespace, name, at, window, results, tpot_target_s, ttft_target_s)
        if errors and snap.state == "error":
            snap = snap.model_copy(update={"reasons": [*snap.reasons, errors[0]]})
        return snap


# The SLO timers' shared rounds (`handlers.configure` sets max_age_s to half the SLO interval).
GROUPED = GroupedSnapshots()
