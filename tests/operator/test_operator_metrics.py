"""The operator's /metrics: scraped over HTTP while it runs against kmock."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from typing import Any

# Read when the operator starts; kopf keeps the first timer intervals of the process (as in
# test_operator_slo_loop.py): SLO passes every 2 s.
os.environ.setdefault("SPECSERVE_SLO_INTERVAL_S", "2")

import httpx
import pytest

from specserve_contract import ENV_METRICS_PORT
from specserve_contract.metrics import (
    OPERATOR_API_CALLS,
    OPERATOR_POLICY_PUSHES,
    OPERATOR_RECONCILES,
    OPERATOR_SLO_LOOP_FAILURES,
    OPERATOR_SLO_LOOP_SECONDS,
    OPERATOR_SLO_NO_DATA,
    OPERATOR_SLO_NO_DATA_PASSES,
)
from specserve_operator import metrics
from tests.kits.operator_kit import SSD, create, eventually, live, running_operator, ssd

pytestmark = pytest.mark.asyncio

SPEC: dict[str, Any] = {"model": {"target": "org/target-1b", "draft": "org/draft-100m"}}
NO_DATA_GOOD = '{name="good",namespace="ns1",reason="NoPrometheusUrl"}'
BAD: dict[str, Any] = {**SPEC, "replicas": {"min": 3, "max": 2, "initial": 2}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _value(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def test_metrics_count_reconciles_slo_passes_pushes_and_api_calls(
        cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    port = metrics._served[0] if metrics._served else _free_port()
    monkeypatch.setenv(ENV_METRICS_PORT, str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    async def scrape() -> str:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url)).text

    async with running_operator():
        await create(cluster, ssd("good", SPEC))
        await create(cluster, ssd("bad", BAD))
        await eventually(lambda: live(cluster, SSD, "bad").get("status", {}).get("phase"))
        await eventually(lambda: live(cluster, SSD, "good").get("status", {}).get("phase"))
        text = ""
        for _ in range(100):  # until an SLO pass has run (every 2 s)
            text = await scrape()
            # (the registry is the process's: earlier tests may have counted passes already)
            if _value(text, f"{OPERATOR_SLO_LOOP_SECONDS}_count") >= 1 and _value(
                    text, OPERATOR_SLO_NO_DATA, NO_DATA_GOOD):
                break
            await asyncio.sleep(0.2)
    assert _value(text, OPERATOR_RECONCILES, '{result="ok"}') >= 1
    assert _value(text, OPERATOR_RECONCILES, '{result="invalid"}') >= 1
    assert _value(text, f"{OPERATOR_SLO_LOOP_SECONDS}_count") >= 1
    assert OPERATOR_SLO_LOOP_FAILURES in text
    assert f'{OPERATOR_POLICY_PUSHES}{{result="acknowledged"}}' in text
    created = re.findall(  # server-side apply: a PATCH that creates
        rf'^{OPERATOR_API_CALLS}\{{code="(\d+)",resource="deployments",'
        r'verb="patch"\} (\S+)$', text, re.MULTILINE)
    assert created and all(code.startswith("2") for code, _ in created), created
    assert _value(text, OPERATOR_API_CALLS,
                  '{code="200",resource="specservedeployments/status",verb="patch"}') >= 1
    # "good" has no Prometheus URL: no data, by cause, per resource (the alert's input).
    assert _value(text, OPERATOR_SLO_NO_DATA, NO_DATA_GOOD) == 1
    assert _value(text, OPERATOR_SLO_NO_DATA_PASSES,
                  '{reason="NoPrometheusUrl"}') >= 1

