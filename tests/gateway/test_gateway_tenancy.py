"""Issue #24 over HTTP, no engine: tenancy of model names, bounded metric labels, API keys.

Backends are `gateway_kit.completion_fake_backend` (tiny real HTTP servers, NOT engines) whose
answer names the server and echoes the `model` it was sent, so a test sees which tenant's pod
got the request and under which name.
"""

from __future__ import annotations

import os
import random
import string
import time
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from specserve_contract.metrics import GATEWAY_REQUESTS, GATEWAY_ROUTE_CONFLICTS
from specserve_gateway import kube_routes
from specserve_gateway.app import GatewayConfig
from specserve_gateway.auth import ApiKeys, bearer, parse_keys
from specserve_gateway.routing import RouteTable
from tests.kits.gateway_kit import completion_fake_backend, running_gateway


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name}


def ssd(name: str, ns: str, served: str, created: str) -> dict:
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": {"model": {"target": "tiny", "servedName": served}}}


def slice_for(service: str, ns: str, url: str) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return {"metadata": {"name": f"{service}-x", "namespace": ns,
                         "labels": {kube_routes.SERVICE_NAME_LABEL: service}},
            "ports": [{"name": "http", "port": int(port)}],
            "endpoints": [{"addresses": [host], "conditions": {"ready": True}}]}


def test_a_later_tenant_claiming_a_served_name_gets_none_of_its_traffic() -> None:
    with completion_fake_backend("team-a") as pod_a, completion_fake_backend("team-b") as pod_b:
        table = kube_routes.table_from_cluster(
            [ssd("chat", "team-b", "llama", "2026-03-01T00:00:00Z"),  # later claim, listed first
             ssd("chat", "team-a", "llama", "2026-01-01T00:00:00Z")],
            [slice_for("chat", "team-a", pod_a), slice_for("chat", "team-b", pod_b)])
        with running_gateway(table) as gw:
            bare = [httpx.post(f"{gw}/v1/completions",
                               json={"model": "llama", "prompt": "secret"}).json()
                    for _ in range(6)]
            explicit = httpx.post(f"{gw}/v1/completions",
                                  json={"model": "team-b/llama", "prompt": "x"}).json()
            routes = httpx.get(f"{gw}/gateway/routes").json()
            metrics = httpx.get(f"{gw}/metrics").text
    assert {r["choices"][0]["text"] for r in bare} == {"team-a"}  # never team-b's pod
    assert explicit["choices"][0]["text"] == "team-b"
    assert explicit["model"] == "llama"  # forwarded under the name the engine serves
    assert [(c["model"], c["namespace"], c["holder"]) for c in routes["conflicts"]] == [
        ("llama", "team-b", "team-a/chat")]
    assert samples(metrics, GATEWAY_ROUTE_CONFLICTS) == {
        (("model", "llama"), ("namespace", "team-b")): 1.0}


def test_unknown_model_names_share_one_metric_series() -> None:
    rng = random.Random(24)
    names = {"".join(rng.choices(string.ascii_lowercase, k=12)) for _ in range(1000)}
    with running_gateway(RouteTable.from_mapping({"tiny": []})) as gw, httpx.Client() as http:
        for name in names:
            assert http.post(f"{gw}/v1/completions",
                             json={"model": name, "prompt": "x"}).status_code == 404
        counts = samples(http.get(f"{gw}/metrics").text, GATEWAY_REQUESTS)
    assert counts == {(("code", "404"), ("model", "__unknown__"),
                       ("path", "/v1/completions")): float(len(names))}


# ------------------------------------------------------------------------------- API keys


def test_key_parsing() -> None:
    assert parse_keys("k1\n\n# a comment\n  k2  \n") == {"k1", "k2"}
    assert parse_keys("k1,k2") == {"k1", "k2"}
    assert bearer("Bearer abc") == "abc" and bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None and bearer("Bearer ") is None and bearer(None) is None
    assert ApiKeys.from_options(None, env={}) is None  # nothing given: no check


def test_api_keys_guard_everything_but_probes_and_metrics(tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("sk-one\n")
    config = GatewayConfig(api_keys=ApiKeys(keys))
    with completion_fake_backend() as pod, running_gateway(
            RouteTable.from_mapping({"tiny": [pod]}), config) as gw:
        def ask(key: str | None) -> httpx.Response:
            headers = {} if key is None else {"Authorization": f"Bearer {key}"}
            return httpx.post(f"{gw}/v1/completions", headers=headers,
                              json={"model": "tiny", "prompt": "x"})

        missing, wrong, right = ask(None), ask("sk-two"), ask("sk-one")
        with pytest.raises(openai.AuthenticationError) as info:
            openai.OpenAI(base_url=f"{gw}/v1", api_key="sk-bad", max_retries=0).models.list()
        listed = openai.OpenAI(base_url=f"{gw}/v1", api_key="sk-one", max_retries=0)
        assert [m.id for m in listed.models.list().data] == ["tiny"]
        assert httpx.get(f"{gw}/gateway/routes").status_code == 401
        assert httpx.get(f"{gw}/no-such-path").status_code == 401  # nothing leaks unasked
        open_paths = {p: httpx.get(f"{gw}{p}").status_code
                      for p in ("/health", "/ready", "/metrics")}

        # the Secret rotates: the new key works and the old one is refused, no restart
        keys.write_text("sk-new\n")
        os.utime(keys, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
        rotated_old, rotated_new = ask("sk-one"), ask("sk-new")
        keys.unlink()  # unreadable: fail closed
        gone = ask("sk-new")
        metrics = httpx.get(f"{gw}/metrics").text
    for resp in (missing, wrong):
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"].startswith("Bearer")
        body = resp.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["code"] == "invalid_api_key"
        assert "sk-two" not in body["error"]["message"]  # a key is never echoed
    assert right.status_code == 200
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"
    assert open_paths == {"/health": 200, "/ready": 200, "/metrics": 200}
    assert (rotated_old.status_code, rotated_new.status_code, gone.status_code) == (401, 200, 401)
    counts = samples(metrics, GATEWAY_REQUESTS)
    assert counts[(("code", "401"), ("model", ""), ("path", "/v1/completions"))] == 4.0


def test_api_keys_from_the_environment() -> None:
    keys = ApiKeys.from_options(None, env={"SPECSERVE_GATEWAY_API_KEYS": "a,b"})
    assert keys is not None
    assert keys.allows("Bearer a") and keys.allows("Bearer b") and not keys.allows("Bearer c")
