"""The gateway over HTTP with no engine: unknown models, dead and hung backends, bad requests.

Dead backends are real sockets (see gateway_kit): a refused port is what a killed pod looks like,
a listening socket that never answers is a hung one. Requests go through the official `openai`
client where the client is what users run, and through httpx where headers matter.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from specserve_contract.metrics import GATEWAY_REQUESTS
from specserve_gateway.app import GatewayConfig
from specserve_gateway.holding import HoldConfig
from specserve_gateway.routing import RouteTable
from tests.kits.gateway_kit import (
    dies_mid_stream_fake_backend,
    refused_port,
    running_gateway,
    silent_port,
    unreachable_port,
)


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models_lists_every_route_even_without_ready_backends() -> None:
    with refused_port() as dead:
        table = RouteTable.from_mapping({"tiny": [dead], "cold": [], "chat": [dead]})
        with running_gateway(table) as gw:
            models = client(gw).models.list()
    assert sorted(m.id for m in models.data) == ["chat", "cold", "tiny"]
    assert all(m.owned_by == "specserve" for m in models.data)


def test_unknown_model_is_404_in_openai_shape() -> None:
    with running_gateway(RouteTable.from_mapping({"tiny": []})) as gw:
        with pytest.raises(openai.NotFoundError) as info:
            client(gw).completions.create(model="gpt-9", prompt="hi", max_tokens=2)
        raw = httpx.post(f"{gw}/v1/chat/completions",
                         json={"model": "gpt-9", "messages": []}).json()
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert "gpt-9" in info.value.message
    assert raw["error"]["type"] == "invalid_request_error"
    assert raw["error"]["param"] == "model"


def test_dead_backend_is_503_with_retry_after_quickly() -> None:
    with refused_port() as dead, running_gateway(RouteTable.from_mapping({"tiny": [dead]})) as gw:
        start = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            client(gw).chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        elapsed = time.monotonic() - start
        resp = httpx.post(f"{gw}/v1/completions",
                          json={"model": "tiny", "prompt": "x", "stream": True})
        routes = httpx.get(f"{gw}/gateway/routes").json()
    assert info.value.status_code == 503
    assert info.value.code == "backend_unavailable"
    assert elapsed < 2.0, f"a refused connection must fail fast, took {elapsed:.2f}s"
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "2"
    assert resp.json()["error"]["type"] == "server_error"
    assert routes["backends"][dead]["down"] is True
    assert routes["backends"][dead]["failures"] == 2
    assert routes["backends"][dead]["outstanding"] == 0


def test_model_without_ready_replicas_is_503_not_404() -> None:
    # Holding off (test_gateway_holding.py holds): 503 at once.
    config = GatewayConfig(hold=HoldConfig(max_queued=0))
    with running_gateway(RouteTable.from_mapping({"cold": []}), config) as gw:
        resp = httpx.post(f"{gw}/v1/completions", json={"model": "cold", "prompt": "x"})
    assert resp.status_code == 503
    assert "no ready replicas" in resp.json()["error"]["message"]
    assert resp.headers["retry-after"] == "2"


def test_hung_backend_times_out_instead_of_hanging() -> None:
    config = GatewayConfig(read_timeout=1.0)
    with silent_port() as hung, running_gateway(
        RouteTable.from_mapping({"tiny": [hung]}), config
    ) as gw:
        start = time.monotonic()
        resp = httpx.post(f"{gw}/v1/completions", json={"model": "tiny", "prompt": "x"},
                          timeout=30)
        elapsed = time.monotonic() - start
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "backend_timeout"
    assert elapsed < 5.0


def test_connect_timeout_bounds_an_unroutable_backend() -> None:
    config = GatewayConfig(connect_timeout=0.5)
    with unreachable_port() as far, running_gateway(
        RouteTable.from_mapping({"tiny": [far]}), config
    ) as gw:
        start = time.monotonic()
        resp = httpx.post(f"{gw}/v1/completions", json={"model": "tiny", "prompt": "x"},
                          timeout=30)
        elapsed = time.monotonic() - start
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "backend_unavailable"
    assert 0.5 <= elapsed < 3.0


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"not json", "must be JSON"), (b'{"prompt": "x"}', "`model`"), (b"[1]", "`model`")],
)
def test_bad_requests_are_400(body: bytes, message: str) -> None:
    with running_gateway(RouteTable.from_mapping({"tiny": []})) as gw:
        resp = httpx.post(f"{gw}/v1/completions", content=body,
                          headers={"content-type": "application/json"})
    assert resp.status_code == 400
    assert message in resp.json()["error"]["message"]


def test_unknown_path_and_method_answer_in_openai_shape() -> None:
    with running_gateway(RouteTable.from_mapping({"tiny": []})) as gw:
        missing = httpx.post(f"{gw}/v1/embeddings", json={"model": "tiny"})
        wrong = httpx.get(f"{gw}/v1/completions")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "404"
    assert wrong.status_code == 405


def test_metrics_count_requests_by_model_and_status() -> None:
    with refused_port() as dead, running_gateway(RouteTable.from_mapping({"tiny": [dead]})) as gw:
        httpx.post(f"{gw}/v1/completions", json={"model": "tiny", "prompt": "x"})
        httpx.post(f"{gw}/v1/completions", json={"model": "nope", "prompt": "x"})
        text = httpx.get(f"{gw}/metrics").text
    counts = {tuple(sorted(s.labels.items())): s.value
              for family in text_string_to_metric_families(text) for s in family.samples
              if s.name == GATEWAY_REQUESTS}
    assert counts == {(("code", "503"), ("model", "tiny"), ("path", "/v1/completions")): 1,
                      (("code", "404"), ("model", "__unknown__"),
                       ("path", "/v1/completions")): 1}


def test_backend_dying_mid_stream_ends_the_stream_with_an_error_event() -> None:
    first = (b'data: {"id":"c1","object":"text_completion","created":0,"model":"tiny",'
             b'"choices":[{"index":0,"text":"Hel","finish_reason":null,"logprobs":null}]}\n\n')
    with dies_mid_stream_fake_backend(first) as dying, running_gateway(
        RouteTable.from_mapping({"tiny": [dying]})
    ) as gw:
        texts: list[str] = []
        start = time.monotonic()
        with pytest.raises(openai.APIError) as info:
            for event in client(gw).completions.create(
                model="tiny", prompt="x", max_tokens=8, stream=True
            ):
                texts.append(event.choices[0].text)
        elapsed = time.monotonic() - start
        routes = httpx.get(f"{gw}/gateway/routes").json()
    assert texts == ["Hel"]  # what arrived before the backend died was passed on
    assert "failed mid-stream" in info.value.message
    assert elapsed < 5.0
    assert routes["backends"][dying]["outstanding"] == 0
    assert routes["backends"][dying]["down"] is True
