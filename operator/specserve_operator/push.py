"""Push a policy to every ready engine pod's control port and collect acknowledgements.

    PUT http://<pod>:8001/specserve/policy   Authorization: Bearer <token>   body: Policy JSON

The engine answers 200 when it runs the version (re-sending the current policy is an idempotent
200), 409 with `current_version` when it already runs a higher one, 401 on a bad token and 422
on a policy it refuses. Timeouts, refused connections and 5xx are retried with backoff; 401/409/
422 are final. The caller writes the ConfigMap *before* pushing, so a pod that starts or restarts
meanwhile loads the same policy from its file.

`fetch_model` reads back what the engines measured: GET on the same path returns, under
"fitted", the efficiency-model parameters a pod runs (its profile plus what it learned online),
which the timing refit scales instead of the built-in defaults.

Where a pod is reached is injectable (`AddressResolver`): in a cluster it is `podIP:8001`; tests
map pods to 127.0.0.1 and the engine's control port.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from specserve_contract import CONTROL_PORT, POLICY_PATH
from specserve_engine.policy.params import ModelParams

AddressResolver = Callable[[Mapping[str, Any]], str]


def pod_ip_address(pod: Mapping[str, Any]) -> str:
    """In-cluster default: the pod's IP and the control port."""
    return f"http://{pod['status']['podIP']}:{CONTROL_PORT}"


def label_selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def pods_path(namespace: str, labels: Mapping[str, str]) -> str:
    return f"/api/v1/namespaces/{namespace}/pods?labelSelector={quote(label_selector(labels))}"


def is_ready(pod: Mapping[str, Any]) -> bool:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running" or not status.get(
            "podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def ready_pods(pods: Sequence[Mapping[str, Any]], labels: Mapping[str, str]
               ) -> list[Mapping[str, Any]]:
    """Running, Ready, addressable pods carrying every label (filtered here too: not every API
    server honours labelSelector, e.g. test emulators), sorted by name."""
    def matches(p: Mapping[str, Any]) -> bool:
        have = (p.get("metadata") or {}).get("labels") or {}
        return all(have.get(k) == v for k, v in labels.items())
    chosen = [p for p in pods if matches(p) and is_ready(p)]
    return sorted(chosen, key=lambda p: str((p.get("metadata") or {}).get("name")))


@dataclass(frozen=True)
class PodTarget:
    name: str
    url: str


class PodAck(BaseModel):
    model_config = ConfigDict(frozen=True)

    pod: str
    acknowledged: bool
    http_status: int | None = None
    version: int | None = None
    current_version: int | None = None
    error: str = ""


class PushResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    version: int
    acks: list[PodAck]

    @property
    def acknowledged(self) -> list[str]:
        return [a.pod for a in self.acks if a.acknowledged]

    @property
    def failed(self) -> list[PodAck]:
        return [a for a in self.acks if not a.acknowledged]

    @property
    def highest_pod_version(self) -> int | None:
        """The highest version a pod said it runs when it refused ours as stale (409)."""
        seen = [a.current_version for a in self.acks if a.current_version is not None]
        return max(seen) if seen else None

    def describe(self) -> str:
        text = f"policy v{self.version} acknowledged by {len(self.acknowledged)}/{len(self.acks)}"
        bad = [f"{a.pod}: {a.error}" for a in self.failed]
        return text + (" (" + "; ".join(bad) + ")" if bad else "")


async def push_one(
    client: httpx.AsyncClient, target: PodTarget, policy: Mapping[str, Any], token: str,
    retries: int, backoff_s: float,
) -> PodAck:
    version = int(policy["version"])
    last = ""
    for attempt in range(retries + 1):
        try:
            r = await client.put(f"{target.url.rstrip('/')}{POLICY_PATH}", json=dict(policy),
                                 headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}".rstrip(": ")
        else:
            try:
                body = r.json()
            except ValueError:
                body = {}
            if r.status_code == 200:
                return PodAck(pod=target.name, acknowledged=True, http_status=200,
                              version=int(body.get("version", version)))
            error = str(body.get("error") or r.text[:200])
            if r.status_code in (401, 409, 422) or r.status_code < 500:
                return PodAck(pod=target.name, acknowledged=False, http_status=r.status_code,
                              current_version=body.get("current_version"),
                              error=f"HTTP {r.status_code}: {error}")
            last = f"HTTP {r.status_code}: {error}"
        if attempt < retries:
            await asyncio.sleep(backoff_s * 2**attempt)
    return PodAck(pod=target.name, acknowledged=False, error=last)


async def push_policy(
    targets: Sequence[PodTarget],
    policy: Mapping[str, Any],
    token: str,
    timeout_s: float = 5.0,
    retries: int = 2,
    backoff_s: float = 0.2,
    transport: httpx.AsyncBaseTransport | None = None,
) -> PushResult:
    """PUT `policy` to every target concurrently; one slow or dead pod does not hold the others
    beyond its own timeout and retries."""
    async with _client(timeout_s, transport) as client:
        acks = await asyncio.gather(*(push_one(client, t, policy, token, retries, backoff_s)
                                      for t in targets))
    return PushResult(version=int(policy["version"]), acks=list(acks))


@functools.cache
def _trust() -> ssl.SSLContext:
    """The system CAs, loaded once: httpx loads them for every client it makes (~20 ms of CPU
    each on a 2-core EPYC), and every SLO pass of every resource makes two (issue #24)."""
    return ssl.create_default_context()


def _client(timeout_s: float, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_s, transport=transport, verify=_trust())


async def fetch_model(
    targets: Sequence[PodTarget],
    timeout_s: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ModelParams | None:
    """The fitted efficiency-model parameters of the first pod (by name) that reports valid ones;
    None when no pod answers with any (not started, unreachable, or an older engine)."""

    async def one(client: httpx.AsyncClient, target: PodTarget) -> ModelParams | None:
        try:
            r = await client.get(f"{target.url.rstrip('/')}{POLICY_PATH}")
            fitted = r.json().get("fitted") if r.status_code == 200 else None
            return ModelParams.model_validate(fitted) if fitted else None
        except (httpx.HTTPError, ValueError, AttributeError, ValidationError):
            return None

    if not targets:
        return None
    async with _client(timeout_s, transport) as client:
        models = await asyncio.gather(*(one(client, t) for t in targets))
    return next((m for m in models if m is not None), None)
