"""The SLO loop end to end: the operator (kopf, against the kmock Kubernetes emulator) reads a
real Prometheus scraping a real SpecServe engine under load, tunes the policy, pushes it to the
engine's control port, and the engine acknowledges it (specserve_policy_version). Then
Prometheus goes down: the last good policy stays, .status says why, the replica count stays
(the Deployment's: autoscaling mode builtin never writes the spec).

A second, fast test needs no engine: a real engine control server (no vLLM) stands in for the
pod and Prometheus is unreachable from the start.

Prometheus is the Debian package `prometheus` (make setup installs it); the engine test skips
only when the binary cannot be found.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

# Read when the operator starts (specserve_operator.config); the first start in this process
# registers the timers with it.
os.environ.setdefault("SPECSERVE_SLO_INTERVAL_S", "2")

import httpx
import pytest

from specserve_contract import POLICY_KEY, TOKEN_KEY, series_labels
from specserve_contract.metrics import POLICY_VERSION
from specserve_engine.launcher import ServerProcess, free_port
from specserve_engine.policy.params import Policy
from specserve_engine.policy_store import PolicyStore
from specserve_engine.vllm.control import ControlServer
from specserve_operator import handlers, names, tuning
from specserve_operator.config import LoopConfig
from tests.kits.operator_kit import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NS,
    SSD,
    create,
    events,
    eventually,
    live,
    running_operator,
    ssd,
)
from tests.kits.prometheus_kit import Prometheus, prometheus_binary

pytestmark = pytest.mark.asyncio

NAME = "tiny"  # the app_kubernetes_io_instance label Prometheus attaches, as the monitors do
UID = "uid-tiny"
OWNER = names.Owner(NAME, NS, UID)


# ----------------------------------------------------------------------------------- helpers


@pytest.fixture()
def loop_config(monkeypatch: pytest.MonkeyPatch) -> LoopConfig:
    """Fast loop settings for tests (the operator runs in this process, so they take effect)."""
    cfg = LoopConfig(
        # The tests' Prometheus URLs (random local ports) are named in the specs: allow any.
        prometheus_url=None, allowed_urls=("*",), window="60s", prometheus_timeout_s=2.0,
        push_timeout_s=3.0,
        retries=1, tuning=tuning.TuningConfig(over_patience=1, cooldown_s=0.0, min_steps=10))
    monkeypatch.setattr(handlers.RUNTIME, "loop_override", cfg)
    return cfg


async def add_ready_pod(kmock: Any, name: str = f"{NAME}-0") -> None:
    """An engine pod as the kubelet would report it: Running, Ready, with an IP."""
    body = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": names.selector_labels(OWNER)},
        "spec": {"containers": [{"name": "engine", "image": "x"}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7",
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }
    r = await kmock.post(f"/api/v1/namespaces/{NS}/pods", json=body)
    assert r.status < 300, await r.text()


def ssd_spec(prometheus_url: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"target": "tiny", "draft": "tiny"},
        "speculation": {"mode": "adaptive", "kMax": 4},  # the session engine runs --k-max 4
        # 1 ms TPOT cannot be met on CPU: the loop must tighten (and scale out if it may).
        "slo": {"tpotP90Ms": 1, "ttftP90Ms": 2000, "attainment": 0.9},
        "replicas": {"min": 1, "max": 3, "initial": 1},
    }
    if prometheus_url:
        spec["metrics"] = {"prometheusUrl": prometheus_url}
    return spec


def stored_policy(kmock: Any) -> Policy:
    return Policy.model_validate_json(live(kmock, CONFIGMAPS, f"{NAME}-policy")["data"][
        POLICY_KEY])


def status(kmock: Any) -> dict[str, Any]:
    return (live(kmock, SSD, NAME) or {}).get("status") or {}


def condition(kmock: Any, type_: str) -> dict[str, Any]:
    return next(c for c in status(kmock).get("conditions", []) if c["type"] == type_)


def loop_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    out = []
    for rec in caplog.records:
        msg = rec.getMessage()
        if msg.startswith("slo loop: "):
            out.append(json.loads(msg.removeprefix("slo loop: ")))
    return out


def loop_story(caplog: pytest.LogCaptureFixture, last: int = 12) -> str:
    """The operator's last log lines about the SLO loop and timers: what a failed wait shows."""
    lines = [f"{time.strftime('%H:%M:%S', time.gmtime(rec.created))} {rec.levelname} "
             f"{rec.getMessage()[:300]}" for rec in caplog.records
             if rec.name.startswith("kopf") or rec.getMessage().startswith("slo loop")]
    return "\n".join(lines[-last:])


@contextlib.asynccontextmanager
async def load(url: str, concurrency: int = 2, max_tokens: int = 32) -> AsyncIterator[list[int]]:
    """Completions against the engine until the block ends; yields the finished count."""
    done = [0]
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        async with httpx.AsyncClient(timeout=120.0) as client:
            n = 0
            while not stop.is_set():
                r = await client.post(f"{url}/v1/completions", json={
                    "model": "tiny", "prompt": f"def function_{i}_{n}(x):", "max_tokens":
                    max_tokens, "temperature": 0.0, "ignore_eos": True})
                assert r.status_code == 200, r.text
                done[0] += 1
                n += 1

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        yield done
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def engine_policy_version(control_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{control_port}/metrics", timeout=5.0).text
    line = next(x for x in text.splitlines() if x.startswith(f"{POLICY_VERSION} "))
    return float(line.split()[1])


# ------------------------------------------------------------------------- the engine test


@pytest.fixture()
def prometheus(spec_engine: ServerProcess, control_port: int, tmp_path: Path
               ) -> Iterator[Prometheus]:
    binary = prometheus_binary()
    if binary is None:
        pytest.skip("the `prometheus` binary was not found on PATH: install the Debian package "
                    "`prometheus` (make setup does)")
    prom = Prometheus.static(
        binary, [f"127.0.0.1:{spec_engine.port}", f"127.0.0.1:{control_port}"],
        {"namespace": NS, **series_labels(NAME)}, tmp_path)
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


async def add_token_secret(kmock: Any, token: str) -> None:
    """The control-token Secret, made before the operator would mint a random one (the engine
    was started with this token)."""
    r = await kmock.post(f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": names.secret_name(OWNER), "namespace": NS},
        "data": {TOKEN_KEY: base64.b64encode(token.encode()).decode()}})
    assert r.status < 300, await r.text()


@pytest.mark.engine
async def test_loop_tunes_and_pushes_to_a_real_engine_then_survives_prometheus_down(
    cluster: Any, prometheus: Prometheus, spec_engine: ServerProcess, control_port: int,
    control_token: str, loop_config: LoopConfig, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await add_token_secret(cluster, control_token)
    loop_config.address = lambda pod: f"http://127.0.0.1:{control_port}"
    await eventually(lambda: prometheus.value(
        f'count(up{{app_kubernetes_io_instance="{NAME}"}} == 1)') == 2, 30)
    before = engine_policy_version(control_port)

    async with load(spec_engine.url) as finished:
        await eventually(lambda: finished[0] >= 6, 120)
        await eventually(lambda: (prometheus.value(
            "sum(vllm:request_time_per_output_token_seconds_count)") or 0) >= 6, 30)
        await add_ready_pod(cluster)
        async with running_operator():
            await create(cluster, ssd(NAME, ssd_spec(prometheus.url), UID))
            # snapshot -> decision (tuned, new version) -> ConfigMap -> push -> engine ack
            await eventually(lambda: any(
                r["decision"]["changed"] and r["push"]["acknowledged"] == [f"{NAME}-0"]
                for r in loop_records(caplog)), 90)
            await eventually(lambda: status(cluster)["policy"]["appliedPods"] == 1
                             and status(cluster)["policy"]["version"]
                             == stored_policy(cluster).version, 20)
            tuned = stored_policy(cluster)
            assert tuned.version >= 2 and tuned.version > before
            assert (tuned.tpot_headroom < 0.9 or tuned.confidence_floor > 0
                    or tuned.model.source.startswith("operator refit"))
            # The loop may tune again meanwhile: the engine follows the ConfigMap.
            await eventually(lambda: engine_policy_version(control_port)
                             >= stored_policy(cluster).version >= tuned.version, 20)
            engine = httpx.get(f"http://127.0.0.1:{control_port}/specserve/policy",
                               timeout=5.0).json()["policy"]
            assert engine["version"] >= tuned.version
            snap = status(cluster)["sloSnapshot"]
            assert snap["state"] == "ok" and snap["tpotP90Ms"] > 1 and snap["requestRate"] > 0
            await eventually(lambda: condition(cluster, "SLOMet")["status"] == "False", 10)
            await eventually(lambda: condition(cluster, "PolicyApplied")["status"] == "True", 10)

            record = next(r for r in loop_records(caplog) if r["decision"]["changed"]
                          and r["push"]["acknowledged"])
            print("\nONE LOOP ITERATION:", json.dumps(record, indent=1, sort_keys=True))

            # ---- Prometheus goes down: last good policy kept, status says why, no scaling
            # Off this loop: kmock serves the operator from it while Prometheus shuts down.
            await asyncio.to_thread(prometheus.stop)
            await eventually(lambda: status(cluster)["sloSnapshot"]["state"] == "error", 30,
                             explain=lambda: loop_story(caplog))
            version = stored_policy(cluster).version
            replicas = live(cluster, DEPLOYMENTS, NAME)["spec"]["replicas"]
            n = len(loop_records(caplog))
            # Two more passes (2 s apart, each one a few seconds on a loaded 2-core machine).
            await eventually(lambda: len(loop_records(caplog)) >= n + 2, 60,
                             explain=lambda: loop_story(caplog))
        assert stored_policy(cluster).version == version
        await eventually(lambda: engine_policy_version(control_port) == version, 10)
        assert live(cluster, DEPLOYMENTS, NAME)["spec"]["replicas"] == replicas
        assert live(cluster, SSD, NAME)["spec"]["replicas"]["initial"] == 1  # never written
        st = status(cluster)
        assert "Prometheus answered no query" in st["sloSnapshot"]["reason"]
        assert "no data" in st["autoscale"]["reason"]
        assert condition(cluster, "SLOMet")["reason"] == "PrometheusUnavailable"
        last = loop_records(caplog)[-1]
        assert not last["decision"]["changed"] and last["scale"]["desired"] == replicas
        print("PROMETHEUS DOWN:", json.dumps(last["decision"]["reasons"]),
              last["scale"]["reason"])


# ------------------------------------------------------------------ the fast test (no engine)


async def test_without_prometheus_the_policy_is_still_pushed_and_nothing_scales(
    cluster: Any, loop_config: LoopConfig,
) -> None:
    """Prometheus unreachable from the start; the 'pod' is a real engine control server."""
    r = await cluster.post(f"/api/v1/namespaces/{NS}/secrets", json={
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": names.secret_name(OWNER), "namespace": NS},
        "data": {TOKEN_KEY: base64.b64encode(b"tok").decode()}})
    assert r.status < 300
    store = PolicyStore(Policy(), engine_k_max=4, token="tok")
    server = ControlServer(store, lambda: b"", "127.0.0.1", 0).start()
    loop_config.address = lambda pod: f"http://127.0.0.1:{server.httpd.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        await add_ready_pod(cluster)
        async with running_operator():
            await create(cluster, ssd(NAME, ssd_spec(dead), UID))
            await eventually(lambda: status(cluster)["sloSnapshot"]["state"] == "error", 30)
            await eventually(lambda: status(cluster)["policy"]["appliedPods"] == 1, 20)
            await asyncio.sleep(4)  # two more passes
            st = status(cluster)
        assert store.policy.version == 1 == stored_policy(cluster).version  # pushed, not tuned
        assert "ConnectError" in st["sloSnapshot"]["reason"]
        assert st["autoscale"]["desired"] == 1 and "no data" in st["autoscale"]["reason"]
        assert live(cluster, SSD, NAME)["spec"]["replicas"]["initial"] == 1
        assert live(cluster, DEPLOYMENTS, NAME)["spec"]["replicas"] == 1
        assert "no data" in st["tuning"]["decision"]
        slo = next(c for c in st["conditions"] if c["type"] == "SLOMet")
        assert (slo["status"], slo["reason"]) == ("Unknown", "PrometheusUnavailable")
        no_data = next(c for c in st["conditions"] if c["type"] == "NoData")
        assert (no_data["status"], no_data["reason"]) == ("True", "QueryError")
        assert st["sloSnapshot"]["noDataReason"] == "QueryError"
        # One Warning for the loss of data, not one per pass.
        warned = [e for e in events(cluster, NAME) if e["reason"] == "NoData"]
        assert len(warned) == 1 and warned[0]["type"] == "Warning"
        assert warned[0]["message"].startswith("QueryError: ")
    finally:
        server.stop()


async def test_one_failing_deployment_does_not_block_another(
    cluster: Any, loop_config: LoopConfig,
) -> None:
    """Two resources; resolving the pods of one of them raises. The other is still pushed."""
    store = PolicyStore(Policy(), engine_k_max=4, token="tok")
    server = ControlServer(store, lambda: b"", "127.0.0.1", 0).start()

    def address(pod: Any) -> str:
        if pod["metadata"]["name"].startswith("broken"):
            raise RuntimeError("this pod cannot be addressed")
        return f"http://127.0.0.1:{server.httpd.server_address[1]}"

    loop_config.address = address
    broken = names.Owner("broken", NS, "uid-broken")
    try:
        for owner in (OWNER, broken):
            r = await cluster.post(f"/api/v1/namespaces/{NS}/secrets", json={
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": names.secret_name(owner), "namespace": NS},
                "data": {TOKEN_KEY: base64.b64encode(b"tok").decode()}})
            assert r.status < 300
            r = await cluster.post(f"/api/v1/namespaces/{NS}/pods", json={
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{owner.name}-0", "namespace": NS,
                             "labels": names.selector_labels(owner)},
                "status": {"phase": "Running", "podIP": "10.0.0.8",
                           "conditions": [{"type": "Ready", "status": "True"}]}})
            assert r.status < 300
        async with running_operator():
            await create(cluster, ssd("broken", ssd_spec(None), "uid-broken"))
            await create(cluster, ssd(NAME, ssd_spec(None), UID))
            await eventually(lambda: status(cluster)["policy"]["appliedPods"] == 1, 30)
            bad = await eventually(
                lambda: (x := (live(cluster, SSD, "broken") or {}).get("status", {})
                         .get("sloSnapshot", {})).get("state") == "error" and x, 30)
        assert "this pod cannot be addressed" in bad["reason"]
        assert store.policy.version == 1
        assert "no Prometheus URL" in status(cluster)["sloSnapshot"]["reason"]
    finally:
        server.stop()
