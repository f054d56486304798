"""PromQL building, result parsing, attainment from buckets, the snapshot's no-data states, and
the HTTP client's retries (against a stub HTTP server: a real Prometheus serves the integration
test in test_operator_slo_loop.py)."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from specserve_operator import prometheus


def vec(value: float | str | None) -> dict[str, Any]:
    if value is None:
        return {"resultType": "vector", "result": []}
    return {"resultType": "vector", "result": [{"metric": {}, "value": [0, str(value)]}]}


def buckets(pairs: list[tuple[str, float]]) -> dict[str, Any]:
    return {"resultType": "vector",
            "result": [{"metric": {"le": le}, "value": [0, str(v)]} for le, v in pairs]}


SEL = ('namespace="ns1",app_kubernetes_io_name="specserve-engine",'
       'app_kubernetes_io_instance="chat"')


def test_queries_select_the_deployment_and_use_the_window() -> None:
    q = prometheus.build_queries(prometheus.selector("ns1", "chat"), "1m")
    assert q["tpot_p90_s"] == (
        'histogram_quantile(0.9, sum by (le) (rate('
        'vllm:request_time_per_output_token_seconds_bucket{' + SEL + '}[1m])))')
    assert "vllm:time_to_first_token_seconds_bucket" in q["ttft_p99_s"]
    assert q["acceptance_rate"].startswith(
        'sum(rate(vllm:spec_decode_num_accepted_tokens_total{' + SEL + '}')
    assert "specserve_step_time_observed_seconds_sum" in q["step_observed_mean_s"]
    assert {"ttft_p50_s", "ttft_p90_s", "ttft_p99_s", "tpot_p50_s", "tpot_p90_s", "tpot_p99_s",
            "request_rate", "running", "waiting", "pods_scraped"} <= set(q)


def test_selector_escapes_quotes() -> None:
    assert prometheus.selector('a"b', "c\\d") == (
        'namespace="a\\"b",app_kubernetes_io_name="specserve-engine",'
        'app_kubernetes_io_instance="c\\\\d"')


def test_selector_uses_labels_both_monitor_kinds_set() -> None:
    """`service` exists only on ServiceMonitor targets; the selector never uses it."""
    assert "service" not in prometheus.selector("ns", "chat")


@pytest.mark.parametrize(("data", "value"), [
    (vec(0.25), 0.25),
    (vec("NaN"), None),
    (vec("+Inf"), None),
    (vec(None), None),
    ({"resultType": "scalar", "result": [0, "3"]}, 3.0),
    ({}, None),
])
def test_parse_scalar(data: dict[str, Any], value: float | None) -> None:
    assert prometheus.parse_scalar(data) == value


B = [(0.01, 10.0), (0.05, 60.0), (0.1, 90.0), (math.inf, 100.0)]


@pytest.mark.parametrize(("x", "fraction"), [
    (0.005, 0.05), (0.01, 0.10), (0.03, 0.35), (0.1, 0.90), (0.5, 0.90), (0.0, 0.0),
])
def test_fraction_at_most_interpolates_like_histogram_quantile(x: float,
                                                               fraction: float) -> None:
    assert prometheus.fraction_at_most(B, x) == pytest.approx(fraction)


def test_fraction_of_an_empty_histogram_is_unknown() -> None:
    assert prometheus.fraction_at_most([(0.1, 0.0), (math.inf, 0.0)], 0.05) is None
    assert prometheus.fraction_at_most([], 0.05) is None


def test_parse_buckets_sorts_and_reads_inf() -> None:
    data = buckets([("+Inf", 4.0), ("0.05", 2.0), ("0.01", 1.0)])
    assert prometheus.parse_buckets(data) == [(0.01, 1.0), (0.05, 2.0), (math.inf, 4.0)]


def full(**over: dict[str, Any] | None) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {
        k: vec(0.04) for k in prometheus.build_queries(prometheus.selector("n", "m"), "30s")}
    out["targets"] = vec(2)
    out["pods_scraped"] = vec(2)
    out["request_rate"] = vec(3.0)
    out["tpot_buckets"] = buckets([("0.05", 8.0), ("+Inf", 10.0)])
    out["ttft_buckets"] = buckets([("1.0", 10.0), ("+Inf", 10.0)])
    out.update(over)
    return out


def test_assemble_ok_snapshot() -> None:
    s = prometheus.assemble("n", "m", 1.0, "30s", full(), tpot_target_s=0.05, ttft_target_s=2.0)
    assert s.state == "ok" and s.reasons == [] and s.has_data
    assert s.pods_scraped == 2 and s.request_rate == 3.0 and s.tpot_p90_s == 0.04
    assert s.tpot_attainment == pytest.approx(0.8) and s.ttft_attainment == 1.0
    assert s.attainment == pytest.approx(0.8)  # the worse of the two
    assert s.slo_met(0.05, 0.9) is False and s.slo_met(0.05, 0.8) is True


@pytest.mark.parametrize(("over", "reason", "cause"), [
    ({"targets": vec(None), "pods_scraped": vec(None), "request_rate": vec(None)},
     "Prometheus has no target", "NoTargets"),
    ({"pods_scraped": vec(None)}, "no engine pod is scraped", "TargetsDown"),
    ({"request_rate": vec(None)}, "no request-rate series", "EmptySeries"),
    ({"tpot_p90_s": vec("NaN")}, "no TPOT histogram", "EmptySeries"),
    ({"mean_k": None}, "queries failed: mean_k", "QueryError"),
    ({"mean_k": None, "targets": vec(None)}, "queries failed: mean_k", "QueryError"),
])
def test_missing_metrics_are_no_data_and_never_met(over: dict[str, Any], reason: str,
                                                   cause: str) -> None:
    s = prometheus.assemble("n", "m", 1.0, "30s", full(**over), 0.05, 2.0)
    assert s.state == "noData" and not s.has_data
    assert any(reason in r for r in s.reasons), s.reasons
    assert s.no_data_reason == cause
    assert s.slo_met(10.0, 0.0) is None  # not even a generous target counts as met


def test_nothing_answered_is_an_error() -> None:
    s = prometheus.assemble("n", "m", 1.0, "30s", dict.fromkeys(full()), 0.05, 2.0)
    assert s.state == "error" and s.slo_met(1.0, 0.0) is None
    assert s.no_data_reason == "QueryError"


def test_idle_deployment_is_data_without_quantiles() -> None:
    s = prometheus.assemble("n", "m", 1.0, "30s", full(request_rate=vec(0.0), tpot_p90_s=vec("NaN"),
                                              tpot_buckets=buckets([("+Inf", 0.0)])), 0.05, 2.0)
    assert s.state == "ok" and s.request_rate == 0.0 and s.tpot_p90_s is None
    assert s.slo_met(0.05, 0.9) is None


# ------------------------------------------------------------- HTTP client, against a stub server


class _Stub:
    """Answers /api/v1/query: the first `fail` requests with 503, then a fixed vector."""

    def __init__(self, fail: int, value: str = "0.5") -> None:
        self.fail, self.value, self.queries = fail, value, []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                stub.queries.append(self.path)
                if stub.fail > 0:
                    stub.fail -= 1
                    self.send_response(503)
                    self.end_headers()
                    return
                body = json.dumps({"status": "success", "data": vec(stub.value)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture()
def stub() -> Iterator[_Stub]:
    s = _Stub(fail=2)
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


async def test_client_retries_5xx_from_a_stub_server(stub: _Stub) -> None:
    import httpx

    client = prometheus.PrometheusClient(stub.url, timeout_s=2.0, retries=2, backoff_s=0.01)
    async with httpx.AsyncClient(timeout=2.0) as http:
        data = await client.query(http, "up", at=1.0)
    assert prometheus.parse_scalar(data) == 0.5 and len(stub.queries) == 3


async def test_client_gives_up_after_retries_on_a_stub_server() -> None:
    import httpx

    s = _Stub(fail=10)
    try:
        client = prometheus.PrometheusClient(s.url, timeout_s=2.0, retries=1, backoff_s=0.01)
        async with httpx.AsyncClient(timeout=2.0) as http:
            with pytest.raises(prometheus.PrometheusError, match="HTTP 503"):
                await client.query(http, "up", at=1.0)
        assert len(s.queries) == 2
    finally:
        s.httpd.shutdown()
        s.httpd.server_close()


async def test_prometheus_down_gives_an_error_snapshot() -> None:
    from specserve_engine.launcher import free_port

    client = prometheus.PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_s=1.0,
                                         retries=1, backoff_s=0.01)
    s = await client.snapshot("n", "m", "30s", 1.0, 0.05, 2.0)
    assert s.state == "error" and not s.has_data
    assert any("ConnectError" in r for r in s.reasons), s.reasons
