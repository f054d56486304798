"""Helpers for the operator tests: the emulator's objects, a running operator, polling.

The operator runs for real (`kopf run` via KopfRunner, in a thread with its own loop) against
kmock's HTTP server (in the test's loop), so tests await while it works and then assert on the
emulator's objects.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import kmock as kmock_lib
import kopf
import kopf.testing

from specserve_contract import API_VERSION, KIND, PLURAL, SHORT_NAMES, SINGULAR

NS = "ns1"
SSD = f"{API_VERSION}/{PLURAL}"
SSD_PATH = f"/apis/{API_VERSION}/namespaces/{NS}/{PLURAL}"
DEPLOYMENTS = "apps/v1/deployments"
SERVICES = "v1/services"
SECRETS = "v1/secrets"
CONFIGMAPS = "v1/configmaps"
SERVICEMONITORS = "monitoring.coreos.com/v1/servicemonitors"
PDBS = "policy/v1/poddisruptionbudgets"


class Emulator:
    """Where the test-only login handler finds the current emulator."""

    url: str | None = None


_STORE = kmock_lib.KubernetesEmulator._handle


def _applies_to_a_missing_object(self: kmock_lib.KubernetesEmulator, request: Any) -> bool:
    """A server-side apply (PATCH, application/apply-patch+yaml) of an object that does not
    exist: a real API server creates it (KEP-555; kmock 0.8 answers 404 to any PATCH of a
    missing object). kmock merges an apply into a stored object like a merge patch, which is
    what an apply of the whole object amounts to, except that it never removes a field; field
    ownership is tests/kits/apiserver.py's (MemoryApiServer)."""
    content_type = {k.lower(): v for k, v in dict(request.headers).items()}.get(
        "content-type", "")
    if (request.resource is None or request.action != kmock_lib.action.UPDATE
            or not content_type.startswith("application/apply-patch") or request.subresource
            or not isinstance(request.data, dict)):
        return False
    key = (request.resource, request.namespace, request.name)
    return key not in self.objects or self.objects[key].deleted


async def _handle_with_uids(self: kmock_lib.KubernetesEmulator, request: Any) -> Any:
    """Store a created object with a metadata.uid, as an API server does (kmock stores what it
    is sent). kopf keys its indexes by (namespace, name, uid): without uids, the operator's
    Deployment, Service and PodDisruptionBudget of one resource (one name) would be one object
    to it, and each kind's event would drop the others from their indexes. And create an object
    that a server-side apply names and that does not exist (`_applies_to_a_missing_object`)."""
    if _applies_to_a_missing_object(self, request):
        # Stored as a create is (with its ADDED event); the apply itself then merges into it.
        obj = dict(request.data)
        obj["metadata"] = {**(obj.get("metadata") or {}), "uid": str(uuid.uuid4())}
        async with self._lock:
            self._objects[request.resource, request.namespace, request.name] = obj
            raw = self._objects[request.resource, request.namespace, request.name].raw
            await self._buses[request.resource].put({"type": "ADDED", "object": raw})
    if (request.resource is not None and request.action == kmock_lib.action.CREATE
            and isinstance(request.data, dict)):
        meta = request.data.setdefault("metadata", {})
        if isinstance(meta, dict):
            meta.setdefault("uid", str(uuid.uuid4()))
    return await _STORE(self, request)


def assign_uids() -> None:
    """Make every emulator of this process give created objects a uid (`_handle_with_uids`)."""
    kmock_lib.KubernetesEmulator._handle = _handle_with_uids  # type: ignore[method-assign]


def add_servicemonitor_crd(kmock: kmock_lib.KubernetesEmulator) -> None:
    info = kmock.resources[SERVICEMONITORS]
    info.kind = "ServiceMonitor"
    info.namespaced = True
    info.verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}


@asynccontextmanager
async def running_operator(namespaces: tuple[str, ...] = (NS,)
                           ) -> AsyncIterator[kopf.testing.KopfRunner]:
    """Run the operator until the block ends (stopping it off the loop kmock serves from)."""
    settings = kopf.OperatorSettings()
    settings.scanning.disabled = True  # kmock 0.8 answers 500 to the cluster-wide namespace list
    runner = kopf.testing.KopfRunner(
        ["run", "--standalone", *(a for ns in namespaces for a in ("-n", ns)),
         "-m", "specserve_operator.handlers"],
        settings=settings,
        timeout=60,
    )
    runner.__enter__()
    try:
        yield runner
    finally:
        await asyncio.to_thread(runner.__exit__, None, None, None)


async def eventually(check: Callable[[], Any], timeout: float = 20.0,
                     explain: Callable[[], str] | None = None) -> Any:
    """Poll `check` until it returns something truthy (returned) or raise after `timeout`;
    `explain` adds what the failure message should show of the state then."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            result = check()
        except (KeyError, AssertionError, TypeError):
            result = None
        if result:
            return result
        if loop.time() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"condition not met within {timeout}s: {check}{detail}")
        await asyncio.sleep(0.1)


def live(kmock: kmock_lib.KubernetesEmulator, resource: str, name: str) -> dict[str, Any] | None:
    """The current object, or None if it never existed or was deleted."""
    try:
        obj = kmock.objects[resource, NS, name]
    except KeyError:
        return None
    return None if obj.deleted else dict(obj.raw)


def versions(kmock: kmock_lib.KubernetesEmulator, resource: str, name: str) -> int:
    try:
        return len(kmock.objects[resource, NS, name].history)
    except KeyError:
        return 0


def count(kmock: kmock_lib.KubernetesEmulator, resource: str) -> int:
    """How many live objects of a resource exist in the namespace."""
    return sum(
        1 for (res, ns, _), obj in kmock.objects.items()
        if f"{res.group + '/' if res.group else ''}{res.version}/{res.plural}" == resource
        and ns == NS and not obj.deleted
    )


def posts(kmock: kmock_lib.KubernetesEmulator) -> list[Any]:
    """Every POST request the emulator received so far (kmock requests, oldest first)."""
    return list(kmock[kmock.method.POST])


def events(kmock: kmock_lib.KubernetesEmulator, involved: str) -> list[dict[str, Any]]:
    """Events posted about an object, from the request log.

    (kopf names events with generateName; kmock 0.8 stores objects by name, so only the first
    of them would survive as an object: read what was sent instead.)
    """
    out = []
    for req in posts(kmock):
        if req.resource is not None and req.resource.plural == "events":
            ev = req.data or {}
            if (ev.get("involvedObject") or {}).get("name") == involved:
                out.append(ev)
    return out


def ssd(name: str, spec: Any, uid: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": NS, "uid": uid or f"uid-{name}",
                     "generation": 1, "resourceVersion": "1"},
        "spec": spec,
    }


def serve_the_crd(kmock: kmock_lib.KubernetesEmulator) -> None:
    """Make the emulator serve the built-in kinds and SpecServeDeployments (as an installed CRD
    would: namespaced, with the status and scale subresources)."""
    kmock.resources.load_bundled()
    info = kmock.resources[SSD]
    info.kind = KIND
    info.singular = SINGULAR
    info.namespaced = True
    info.shortnames = set(SHORT_NAMES)
    info.verbs = {"list", "watch", "get", "create", "patch", "update", "delete"}
    info.subresources = {"status", "scale"}
    install_crd(kmock)


CRDS = "apiextensions.k8s.io/v1/customresourcedefinitions"


def install_crd(kmock: kmock_lib.KubernetesEmulator, crd: dict[str, Any] | None = None) -> None:
    """Store the CRD object itself (the generated one unless given): the operator reads its
    schema-version annotation at start-up and refuses to run without it."""
    from specserve_operator import crdgen

    body = crd if crd is not None else crdgen.crd()
    kmock.objects[CRDS, None, body["metadata"]["name"]] = body


async def create(kmock: kmock_lib.KubernetesEmulator, body: dict[str, Any]) -> None:
    response = await kmock.post(SSD_PATH, json=body)
    assert response.status < 300, await response.text()


def forbid(kmock: kmock_lib.KubernetesEmulator, resource: str) -> Any:
    """Answer every namespaced request for `resource` ("group/version/plural") with the API
    server's 403, as when the operator's RBAC does not grant it (discovery still answers: RBAC
    never hides discovery from an authenticated user). Returns the reaction: iterating it
    gives the requests it answered."""
    group_version, plural = resource.rsplit("/", 1)
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    pattern = re.compile(rf"{re.escape(root)}/namespaces/[^/]+/{re.escape(plural)}(/.*)?")
    return kmock[pattern] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
        "code": 403,
        "message": f'{plural} is forbidden: User "system:serviceaccount:specserve-system:'
                   f'specserve-operator" cannot get resource "{plural}"',
    }


async def collect_garbage(kmock: kmock_lib.KubernetesEmulator) -> int:
    """What the garbage collector does and kmock does not: delete every object whose owner
    references all name owners that no longer exist (background propagation). Returns how many
    objects were deleted."""
    live_uids = {(obj.raw.get("metadata") or {}).get("uid")
                 for obj in kmock.objects.values() if not obj.deleted}
    deleted = 0
    for (res, ns, name), obj in list(kmock.objects.items()):
        if obj.deleted:
            continue
        refs = (obj.raw.get("metadata") or {}).get("ownerReferences") or []
        if not refs or any(ref.get("uid") in live_uids for ref in refs):
            continue
        root = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        response = await kmock.delete(f"{root}/namespaces/{ns}/{res.plural}/{name}")
        assert response.status < 300, await response.text()
        deleted += 1
    return deleted
