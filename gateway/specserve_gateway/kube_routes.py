"""Routes from the cluster: SpecServeDeployments (model name -> Service) and their ready pods.

Kopf-free and client-free: two list+watch loops over plain HTTP (httpx) against the API server,
one for SpecServeDeployments and one for the EndpointSlices of the engine Services (selected by
the `app.kubernetes.io/name=specserve-engine` label, which Kubernetes copies from a Service to its
EndpointSlices). Every change rebuilds the table with the pure `table_from_cluster`.

    model name   = spec.model.servedName, or the resource's name (as the operator starts engines)
    Service      = the resource's name, in its namespace (`specserve_contract.service_name`)
    backends     = http://<ip>:<port named "http"> of every endpoint whose `ready` is not false

One tenant per model name: `model` goes to the first SpecServeDeployment (by creationTimestamp,
then namespace/name) that claimed it, `namespace/model` to that namespace's; a later claim of a
taken name is a `RouteConflict` (logged, exported, never routed by the bare name).
A model whose pods are all unready stays in the table with no backends: requests for it get 503
(try again), not 404 (no such model). RBAC: list/watch on specservedeployments and
endpointslices (the chart's gateway ClusterRole).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from specserve_contract import ENGINE_SELECTOR, GROUP, HTTP_PORT_NAME, PLURAL, VERSION, service_name
from specserve_contract.claims import name_claims
from specserve_contract.claims import served_model as served_model  # re-exported
from specserve_gateway.routing import Route, RouteConflict, RouteTable, qualified
from specserve_gateway.sources import Listeners

log = logging.getLogger("specserve_gateway.kube_routes")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


# ------------------------------------------------------------------------------------ pure


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def slice_urls(eps: dict[str, Any], port_name: str = HTTP_PORT_NAME) -> list[str]:
    """Base URLs of the ready endpoints of one EndpointSlice."""
    ports = [p for p in eps.get("ports") or [] if p.get("name") == port_name and p.get("port")]
    if not ports:
        return []
    port = int(ports[0]["port"])
    urls = []
    for endpoint in eps.get("endpoints") or []:
        # The API: a nil `ready` is to be read as ready.
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in (endpoint.get("addresses") or [])[:1]:
            urls.append(f"http://{_host(address)}:{port}")
    return urls


@dataclass(frozen=True)
class Claim:
    """The SpecServeDeployments of one namespace that serve one model name (pooled: one tenant),
    with their pods' URLs. Who is first is `specserve_contract.claims` (shared with the
    operator's RouteConflict condition)."""

    namespace: str
    model: str
    created: str  # the earliest creationTimestamp among them (RFC 3339, sorts as text)
    names: tuple[str, ...]  # the resources' names, sorted
    backends: tuple[str, ...]


def claims_from_cluster(
    ssds: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]
) -> dict[str, list[Claim]]:
    """model name -> its claims, first claim first (`specserve_contract.claims.name_claims`)."""
    by_service: dict[tuple[str, str], list[str]] = {}
    for eps in slices:
        meta = eps.get("metadata") or {}
        service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if service:
            key = (meta.get("namespace", ""), service)
            by_service.setdefault(key, []).extend(slice_urls(eps))
    return {model: [Claim(c.namespace, model, c.created, c.names,
                          tuple(sorted({u for name in c.names
                                        for u in by_service.get((c.namespace,
                                                                 service_name(name)), [])})))
                    for c in listed]
            for model, listed in name_claims(ssds).items()}


def table_from_cluster(
    ssds: Iterable[dict[str, Any]], slices: Iterable[dict[str, Any]]
) -> RouteTable:
    """SpecServeDeployments + EndpointSlices -> RouteTable, one tenant per model name:

    - `model` routes to the FIRST claim of that name only (`specserve_contract.claims`);
      resources of one namespace that serve one name are one claim and pool their pods;
    - `namespace/model` routes to that namespace's claim (forwarded as `model`), the later
      claims included: the address names the tenant, so it takes no one's traffic;
    - a later claim of a bare name is a `RouteConflict` (in the table, logged, exported); so is
      a bare name that spells another namespace's `namespace/model` (the qualified one wins:
      only that namespace can create it).
    """
    claims = claims_from_cluster(ssds, slices)
    routes: dict[str, Route] = {}
    for model, listed in claims.items():
        for claim in listed:
            key = qualified(claim.namespace, model)
            routes[key] = Route(key, claim.backends, model, listed=False)
    conflicts: list[RouteConflict] = []
    for model, listed in sorted(claims.items()):
        first = listed[0]
        if model in routes:  # a bare name that is another namespace's qualified address
            conflicts.extend(RouteConflict(model, c.namespace, c.names, model)
                             for c in listed)
            continue
        routes[model] = Route(model, first.backends)
        winner = qualified(first.namespace, first.names[0] if first.names else "")
        conflicts.extend(RouteConflict(model, c.namespace, c.names, winner) for c in listed[1:])
    return RouteTable(routes, tuple(conflicts))


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def apply_event(store: dict[str, dict[str, Any]], event: dict[str, Any]) -> str | None:
    """Apply one watch event to `store` (key -> object). Returns the resourceVersion to resume
    from, or None when the watch must restart with a fresh list (410 Gone, other errors)."""
    kind = event.get("type")
    obj = event.get("object") or {}
    version = (obj.get("metadata") or {}).get("resourceVersion")
    if kind in ("ADDED", "MODIFIED"):
        store[object_key(obj)] = obj
    elif kind == "DELETED":
        store.pop(object_key(obj), None)
    elif kind == "BOOKMARK":
        pass
    else:  # ERROR (e.g. 410 Gone: our resourceVersion is too old) or something unknown
        return None
    return version


# ---------------------------------------------------------------------------------- adapter


class KubeApi:
    """Where the API server is and how to authenticate (the pod's service account)."""

    def __init__(self, base_url: str, token_file: Path | None = None,
                 ca_file: Path | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token_file = token_file
        self.ca_file = ca_file

    @classmethod
    def in_cluster(cls) -> KubeApi:
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise RuntimeError(
                "not running in a pod (KUBERNETES_SERVICE_HOST unset): pass --kube-api URL, "
                "e.g. the address of `kubectl proxy`"
            )
        return cls(f"https://{_host(host)}:{port}", SA_DIR / "token", SA_DIR / "ca.crt")

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.token_file is not None:  # re-read: bound tokens are rotated
            headers["Authorization"] = f"Bearer {self.token_file.read_text().strip()}"
        return headers

    def client(self) -> httpx.AsyncClient:
        verify: ssl.SSLContext | bool = True
        if self.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(self.ca_file))
        return httpx.AsyncClient(
            base_url=self.base_url, verify=verify, timeout=httpx.Timeout(10.0, read=None)
        )


class Watch:
    """list, then watch from the list's resourceVersion; relist when the watch says so."""

    def __init__(self, api: KubeApi, path: str, params: dict[str, str],
                 on_change: Callable[[], None], timeout_s: int = 300) -> None:
        self.api = api
        self.path = path
        self.params = params
        self.on_change = on_change
        self.timeout_s = timeout_s
        self.objects: dict[str, dict[str, Any]] = {}
        self.listed = False  # a first list has come back

    async def _list(self, client: httpx.AsyncClient) -> str:
        resp = await client.get(self.path, params=self.params, headers=self.api.headers())
        resp.raise_for_status()
        body = resp.json()
        self.objects = {object_key(o): o for o in body.get("items") or []}
        self.listed = True
        self.on_change()
        return str((body.get("metadata") or {}).get("resourceVersion", ""))

    async def _watch(self, client: httpx.AsyncClient, version: str) -> None:
        while True:
            params = {**self.params, "watch": "1", "resourceVersion": version,
                      "allowWatchBookmarks": "true", "timeoutSeconds": str(self.timeout_s)}
            async with client.stream("GET", self.path, params=params,
                                     headers=self.api.headers()) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    next_version = apply_event(self.objects, event)
                    if next_version is None:
                        log.info("watch of %s ended: %s", self.path, line[:200])
                        return
                    version = next_version or version
                    if event.get("type") != "BOOKMARK":
                        self.on_change()

    async def run(self) -> None:
        backoff = 1.0
        async with self.api.client() as client:
            while True:
                try:
                    version = await self._list(client)
                    backoff = 1.0
                    await self._watch(client, version)
                except (httpx.HTTPError, ValueError, OSError) as exc:
                    log.warning("watching %s failed: %s; retrying in %.0fs", self.path, exc,
                                backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)


class KubeSource(Listeners):
    """The RouteSource of a gateway running in the cluster."""

    def __init__(self, api: KubeApi, namespaces: Sequence[str] = ()) -> None:
        super().__init__()
        self.api = api
        self._table = RouteTable()
        self._ssd_watches: list[Watch] = []
        self._slice_watches: list[Watch] = []
        scopes = [f"/namespaces/{ns}" for ns in namespaces] or [""]
        for scope in scopes:
            self._ssd_watches.append(
                Watch(api, f"/apis/{GROUP}/{VERSION}{scope}/{PLURAL}", {}, self._rebuild))
            self._slice_watches.append(
                Watch(api, f"/apis/discovery.k8s.io/v1{scope}/endpointslices",
                      {"labelSelector": ENGINE_SELECTOR}, self._rebuild))
        self._tasks: list[asyncio.Task[None]] = []

    def _rebuild(self) -> None:
        ssds = [o for w in self._ssd_watches for o in w.objects.values()]
        slices = [o for w in self._slice_watches for o in w.objects.values()]
        table = table_from_cluster(ssds, slices)
        changed = table != self._table
        if changed:
            log.info("routes: %s", json.dumps(table.to_json()))
            for c in set(table.conflicts) - set(self._table.conflicts):
                log.warning("route conflict: %s", c.message())
        self._table = table
        if changed:
            self.notify()

    def table(self) -> RouteTable:
        return self._table

    def ready(self) -> bool:
        """Every watch has listed once. Later watch failures keep the last table and readiness:
        stale routes serve better than none while the API server is away."""
        return all(w.listed for w in self._ssd_watches + self._slice_watches)

    async def start(self) -> None:
        for watch in self._ssd_watches + self._slice_watches:
            self._tasks.append(asyncio.create_task(watch.run()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
