"""Holding requests for a model with no ready backend (scale from zero), over real sockets.

The pod that comes up is a tiny real HTTP server (`completion_fake_backend`, not an engine)
started while the request waits and swapped into a `MutableSource`, as the cluster source swaps
in a table when an EndpointSlice says a pod is ready. The re-check rule is a pure function,
tested as a table.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from specserve_contract.metrics import GATEWAY_HELD, GATEWAY_HOLDS, GATEWAY_REQUESTS
from specserve_gateway.app import GatewayConfig
from specserve_gateway.holding import HoldConfig, hold_step
from specserve_gateway.kube_routes import KubeApi, KubeSource
from specserve_gateway.routing import Route, RouteTable
from tests.kits.gateway_kit import MutableSource, completion_fake_backend, running_gateway

COLD = RouteTable.from_mapping({"cold": []})


def client(url: str, timeout: float = 30) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def config(**hold: Any) -> GatewayConfig:
    return GatewayConfig(hold=HoldConfig(**hold))


def metric(gw: str, name: str, **labels: str) -> float | None:
    """One sample of the gateway's /metrics (exactly these labels), None when absent."""
    for line in httpx.get(f"{gw}/metrics").text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match.group(1))) == labels:
            return float(match.group(2))
    return None


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


class Background:
    """One blocking call on a thread; `result()` re-raises what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.done_at: float | None = None

        def run() -> None:
            try:
                self.value = call()
            except BaseException as exc:
                self.error = exc
            self.done_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 30) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        if self.error is not None:
            raise self.error
        return self.value


# ----------------------------------------------------------------------------------- pure


H = HoldConfig(max_queued=4, max_wait_s=10.0)


@pytest.mark.parametrize(("route", "waited", "gone", "want"), [
    (Route("m", ("http://a:1",)), 0.0, False, "routed"),
    (Route("m", ("http://a:1",)), 99.0, True, "routed"),  # a backend beats everything
    (None, 0.0, False, "removed"),
    (Route("m"), 0.0, True, "disconnected"),
    (Route("m"), 10.0, False, "timeout"),
    (Route("m"), 9.9, False, None),  # keep waiting
])
def test_hold_step(route: Route | None, waited: float, gone: bool, want: str | None) -> None:
    assert hold_step(route, waited, gone, H) == want


# ------------------------------------------------------------------------------ over HTTP


@pytest.mark.parametrize("notify", [True, False], ids=["notifying-source", "re-check"])
def test_a_held_request_is_served_once_a_backend_appears(notify: bool) -> None:
    source = MutableSource(COLD, notify=notify)
    with running_gateway(source, config(max_wait_s=30)) as gw:
        assert metric(gw, GATEWAY_HELD, model="cold") == 0
        assert metric(gw, GATEWAY_HOLDS, model="cold", outcome="routed") == 0
        call = Background(lambda: client(gw).completions.create(
            model="cold", prompt="hi", max_tokens=2))
        eventually(lambda: metric(gw, GATEWAY_HELD, model="cold") == 1)
        time.sleep(0.3)
        assert call.done_at is None, "held, not answered"
        with completion_fake_backend("warm") as pod:
            swapped = time.monotonic()
            source.set(RouteTable.from_mapping({"cold": [pod]}))
            answer = call.result()
            latency = (call.done_at or 0) - swapped
            assert metric(gw, GATEWAY_HELD, model="cold") == 0
            assert metric(gw, GATEWAY_HOLDS, model="cold",
                          outcome="routed") == 1
            assert metric(gw, GATEWAY_REQUESTS, model="cold",
                          path="/v1/completions", code="200") == 1
    assert answer.choices[0].text == "warm"
    # Woken by the source at once; without notification, within one re-check (0.5 s).
    assert latency < (0.3 if notify else 1.0), f"{latency:.2f}s after the pod appeared"


def test_full_queue_is_503_at_once_and_the_held_ones_still_get_served() -> None:
    source = MutableSource(COLD)
    with running_gateway(source, config(max_queued=2, max_wait_s=30)) as gw:
        held = [Background(lambda: client(gw).completions.create(
            model="cold", prompt="hi", max_tokens=2)) for _ in range(2)]
        eventually(lambda: metric(gw, GATEWAY_HELD, model="cold") == 2)
        start = time.monotonic()
        resp = httpx.post(f"{gw}/v1/completions", json={"model": "cold", "prompt": "x"})
        elapsed = time.monotonic() - start
        with pytest.raises(openai.InternalServerError) as info:
            client(gw).completions.create(model="cold", prompt="hi", max_tokens=2)
        with completion_fake_backend() as pod:
            source.set(RouteTable.from_mapping({"cold": [pod]}))
            texts = [h.result().choices[0].text for h in held]
        full = metric(gw, GATEWAY_HOLDS, model="cold", outcome="queue_full")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["code"] == "backend_unavailable"
    assert "2 requests already waiting" in resp.json()["error"]["message"]
    assert elapsed < 1.0
    assert info.value.status_code == 503
    assert texts == ["ok", "ok"]
    assert full == 2


def test_hold_times_out_with_503_and_retry_after() -> None:
    with running_gateway(MutableSource(COLD), config(max_wait_s=0.5)) as gw:
        start = time.monotonic()
        resp = httpx.post(f"{gw}/v1/chat/completions",
                          json={"model": "cold", "messages": [], "stream": True}, timeout=30)
        elapsed = time.monotonic() - start
        timeouts = metric(gw, GATEWAY_HOLDS, model="cold", outcome="timeout")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    body = resp.json()["error"]
    assert (body["code"], body["type"]) == ("backend_unavailable", "server_error")
    assert "within 0.5s" in body["message"]
    assert 0.5 <= elapsed < 1.5
    assert timeouts == 1


def test_holding_off_answers_503_at_once_and_still_counts_the_demand() -> None:
    with running_gateway(MutableSource(COLD), config(max_queued=0)) as gw:
        start = time.monotonic()
        resp = httpx.post(f"{gw}/v1/completions", json={"model": "cold", "prompt": "x"})
        elapsed = time.monotonic() - start
        refused = metric(gw, GATEWAY_HOLDS, model="cold", outcome="queue_full")
    assert resp.status_code == 503
    assert "no ready replicas" in resp.json()["error"]["message"]
    assert elapsed < 1.0
    assert refused == 1


def test_a_model_removed_while_held_is_404() -> None:
    source = MutableSource(COLD)
    with running_gateway(source, config(max_wait_s=30)) as gw:
        call = Background(lambda: httpx.post(f"{gw}/v1/completions",
                                             json={"model": "cold", "prompt": "x"}, timeout=30))
        eventually(lambda: metric(gw, GATEWAY_HELD, model="cold") == 1)
        source.set(RouteTable.from_mapping({"other": []}))
        resp = call.result()
        removed = metric(gw, GATEWAY_HOLDS, model="cold", outcome="removed")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert removed == 1


def test_a_client_that_gives_up_frees_its_place() -> None:
    with running_gateway(MutableSource(COLD), config(max_queued=1, max_wait_s=30)) as gw:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{gw}/v1/completions", json={"model": "cold", "prompt": "x"},
                       timeout=httpx.Timeout(5, read=0.5))
        # Noticed at the next re-check: the gauge (the demand the operator sees) drops.
        eventually(lambda: metric(gw, GATEWAY_HELD, model="cold") == 0, 3)
        gone = metric(gw, GATEWAY_HOLDS, model="cold", outcome="disconnected")
    assert gone == 1


def test_the_cluster_source_notifies_only_on_a_real_change() -> None:
    source = KubeSource(KubeApi("http://127.0.0.1:1"))
    calls: list[int] = []
    source.subscribe(lambda: calls.append(1))
    ssd = {"metadata": {"namespace": "ns", "name": "m", "resourceVersion": "1"},
           "spec": {"model": {"target": "t"}}}
    eps = {"metadata": {"namespace": "ns", "name": "m-abc",
                        "labels": {"kubernetes.io/service-name": "m"}},
           "ports": [{"name": "http", "port": 8000}],
           "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}]}
    source._ssd_watches[0].objects = {"ns/m": ssd}
    source._rebuild()
    assert source.table().get("m") == Route("m")
    assert len(calls) == 1
    source._rebuild()  # the same table: nobody to wake
    assert len(calls) == 1
    source._slice_watches[0].objects = {"ns/m-abc": eps}
    source._rebuild()  # the pod is ready
    assert source.table().get("m") == Route("m", ("http://10.0.0.1:8000",))
    assert len(calls) == 2
