"""The gateway is ready only once it has its first route list: a gateway rolled out while the
API server is slow (or refusing it) must not take traffic it would answer 404 for.

The API server is kmock serving SpecServeDeployments and EndpointSlices; the gateway runs for
real (uvicorn in a thread) with its Kubernetes route source. Polling goes through an async client:
kmock serves from this test's event loop.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import kmock as kmock_lib

from specserve_contract import GROUP, PLURAL, VERSION
from specserve_gateway.kube_routes import KubeApi, KubeSource
from tests.kits.gateway_kit import running_gateway
from tests.kits.operator_kit import create, serve_the_crd, ssd


async def test_ready_only_after_the_first_route_list(kmock: kmock_lib.KubernetesEmulator) -> None:
    serve_the_crd(kmock)
    refusing = [True]
    # The list of SpecServeDeployments fails (a 503 from an overloaded API server) until opened.
    kmock[re.compile(rf"/apis/{GROUP}/{VERSION}/{PLURAL}")][lambda: refusing[0]] << 503 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 503,
        "reason": "ServiceUnavailable", "message": "the server is currently unable to handle "
                                                   "the request"}
    await create(kmock, ssd("tiny", {"model": {"servedName": "tiny-chat"}}))
    source = KubeSource(KubeApi(str(kmock.url)))
    with running_gateway(source) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            await asyncio.sleep(1.5)  # the first list and one retry have failed by now
            not_ready = await client.get("/ready")
            models: Any = (await client.get("/v1/models")).json()
            assert not_ready.status_code == 503 and "first route list" in not_ready.text
            assert models["data"] == []
            assert (await client.get("/health")).status_code == 200  # live all along

            refusing[0] = False
            deadline = asyncio.get_running_loop().time() + 30
            while (await client.get("/ready")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, "never ready"
                await asyncio.sleep(0.2)
            listed = (await client.get("/v1/models")).json()
            assert [m["id"] for m in listed["data"]] == ["tiny-chat"]
