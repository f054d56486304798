"""push.py against real engine control servers (the engine's own PolicyStore + ControlServer, no
vLLM needed): acks, stale versions, bad tokens, dead pods, concurrency; pod readiness rules."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from specserve_engine.launcher import free_port
from specserve_engine.policy.params import ModelParams, Policy
from specserve_engine.policy_store import PolicyStore
from specserve_engine.vllm.control import ControlServer
from specserve_operator import push

TOKEN = "t0ken"


@pytest.fixture()
def servers() -> Iterator[list[tuple[PolicyStore, str]]]:
    """Three control servers, as three engine pods would run them (engine K_max 4)."""
    out, running = [], []
    for _ in range(3):
        store = PolicyStore(Policy(version=1, k_max=4, static_k=3), engine_k_max=4, token=TOKEN)
        server = ControlServer(store, lambda: b"", "127.0.0.1", 0).start()
        running.append(server)
        out.append((store, f"http://127.0.0.1:{server.httpd.server_address[1]}"))
    yield out
    for s in running:
        s.stop()


def doc(version: int, **kw: Any) -> dict[str, Any]:
    return Policy(version=version, k_max=4, static_k=3, **kw).model_dump(mode="json")


async def test_every_pod_acknowledges_a_new_version(servers: list[tuple[PolicyStore, str]]
                                                    ) -> None:
    targets = [push.PodTarget(f"pod-{i}", url) for i, (_, url) in enumerate(servers)]
    result = await push.push_policy(targets, doc(2, tpot_headroom=0.8), TOKEN)
    assert result.acknowledged == ["pod-0", "pod-1", "pod-2"] and result.failed == []
    assert all(store.policy.version == 2 and store.policy.tpot_headroom == 0.8
               for store, _ in servers)
    again = await push.push_policy(targets, doc(2, tpot_headroom=0.8), TOKEN)  # idempotent
    assert len(again.acknowledged) == 3
    assert again.describe() == "policy v2 acknowledged by 3/3"


async def test_stale_bad_token_and_dead_pods_fail_without_blocking_the_others(
        servers: list[tuple[PolicyStore, str]]) -> None:
    (ahead, ahead_url), (_, ok_url), _ = servers
    ahead.put(b'{"version": 9, "k_max": 4}', f"Bearer {TOKEN}")
    dead = push.PodTarget("dead", f"http://127.0.0.1:{free_port()}")
    targets = [push.PodTarget("ahead", ahead_url), push.PodTarget("ok", ok_url), dead]
    started = time.monotonic()
    result = await push.push_policy(targets, doc(3), TOKEN, timeout_s=1.0, retries=1,
                                  backoff_s=0.05)
    assert time.monotonic() - started < 5
    assert result.acknowledged == ["ok"]
    by_pod = {a.pod: a for a in result.failed}
    assert by_pod["ahead"].http_status == 409 and by_pod["ahead"].current_version == 9
    assert result.highest_pod_version == 9
    assert "ConnectError" in by_pod["dead"].error
    bad = await push.push_policy([push.PodTarget("ok", ok_url)], doc(4), "wrong")
    assert bad.failed[0].http_status == 401 and "token" in bad.failed[0].error


async def test_policy_the_engine_refuses_is_reported(servers: list[tuple[PolicyStore, str]]
                                                    ) -> None:
    _, url = servers[0]
    too_big = {**doc(5), "k_max": 8, "static_k": 3}  # engine was started with --k-max 4
    result = await push.push_policy([push.PodTarget("p", url)], too_big, TOKEN)
    assert result.failed[0].http_status == 422 and "exceeds" in result.failed[0].error


async def test_fetch_model_reads_what_a_pod_measured(servers: list[tuple[PolicyStore, str]]
                                                     ) -> None:
    dead = push.PodTarget("dead", f"http://127.0.0.1:{free_port()}")
    (first, first_url), (second, second_url), _ = servers
    targets = [dead, push.PodTarget("a", first_url), push.PodTarget("b", second_url)]
    assert await push.fetch_model(targets, timeout_s=1.0) is None  # no pod has fitted anything
    second.fitted = ModelParams(prior_acceptance=0.77, source="profile p.json")
    assert await push.fetch_model(targets, timeout_s=1.0) == second.fitted
    first.fitted = ModelParams(prior_acceptance=0.6, source="profile q.json")
    assert await push.fetch_model(targets, timeout_s=1.0) == first.fitted


def pod(name: str, *, ready: bool = True, phase: str = "Running", ip: str | None = "10.0.0.1",
        labels: dict[str, str] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels if labels is not None else {"a": "b"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status: dict[str, Any] = {"phase": phase,
                              "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "status": status}


def test_ready_pods_filters_and_sorts() -> None:
    pods = [pod("z"), pod("a"), pod("not-ready", ready=False), pod("pending", phase="Pending"),
            pod("no-ip", ip=None), pod("other", labels={"a": "c"}), pod("gone", deleting=True)]
    assert [p["metadata"]["name"] for p in push.ready_pods(pods, {"a": "b"})] == ["z", "a"][::-1]


def test_addresses_and_paths() -> None:
    assert push.pod_ip_address(pod("x", ip="10.1.2.3")) == "http://10.1.2.3:8001"
    assert push.pods_path("ns", {"b": "2", "a": "1"}) == (
        "/api/v1/namespaces/ns/pods?labelSelector=a%3D1%2Cb%3D2")
