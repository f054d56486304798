"""A thin, synchronous Kubernetes REST client for the handlers: get/create/patch/delete on dicts.

Built on the official client's ApiClient for configuration and authentication (in-cluster
service account or kubeconfig); objects stay plain dicts end to end (no model classes).

Children are written by server-side apply (`apply`: the whole desired object, under the field
manager `FIELD_MANAGER`; the API server merges it, records which fields the manager owns in
metadata.managedFields, and removes the fields the manager owned before and no longer sends).
The other writes are JSON merge patches (RFC 7386) of single fields: the status subresource,
the SLO loop's scale and tuned policy.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, ClassVar

import urllib3
from kubernetes import client, config

from specserve_contract import API_VERSION, GROUP, KIND, PLURAL
from specserve_operator import metrics
from specserve_operator.manifests import PDB_API, SERVICEMONITOR_API

# (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "Pod"): "pods",
    ("v1", "ConfigMap"): "configmaps",
    (SERVICEMONITOR_API, "ServiceMonitor"): "servicemonitors",
    (PDB_API, "PodDisruptionBudget"): "poddisruptionbudgets",
    (API_VERSION, KIND): PLURAL,
}

MERGE_PATCH = "application/merge-patch+json"
# Server-side apply (KEP-555; kubernetes.io/docs/reference/using-api/server-side-apply/). The
# body is YAML, and JSON is YAML.
APPLY_PATCH = "application/apply-patch+yaml"
# The field manager of every write the operator makes, as metadata.managedFields shows it
# (`kubectl get deploy NAME --show-managed-fields`).
FIELD_MANAGER = "specserve-operator"
# (connect, read) seconds for one API call. Without it a connection the API server (or a proxy)
# stops answering hangs the handler, and a kopf timer stuck in a handler never fires again.
REQUEST_TIMEOUT_S = (5.0, 30.0)

# Every (verb, API group, resource) this client may issue: the operator's own API calls. The
# client refuses any other (`UnlistedApiCall`), and tests/chart checks that the chart's RBAC is
# exactly these plus kopf's (KOPF_CALLS) and the admission grant (ADMISSION_GRANTS): nothing
# missing, nothing unused.
API_CALLS: frozenset[tuple[str, str, str]] = frozenset({
    # reconcile: children are read and server-side applied (a PATCH, authorized as `patch`, and
    # as `create` where it creates), never deleted (garbage collection).
    *((verb, "apps", "deployments") for verb in ("get", "create", "patch")),
    *((verb, "", "services") for verb in ("get", "create", "patch")),
    *((verb, "", "configmaps") for verb in ("get", "create", "patch")),
    ("get", "", "secrets"), ("create", "", "secrets"),  # the token: made once, never patched
    *((verb, "monitoring.coreos.com", "servicemonitors") for verb in ("get", "create", "patch")),
    # The one delete: the PodDisruptionBudget of a resource whose spec turned it off.
    *((verb, "policy", "poddisruptionbudgets") for verb in ("get", "create", "patch", "delete")),
    # write_status (and reconcile, before it undoes a scale) reads the resource; status patches.
    # No spec patch: the operator never writes the spec (the SLO loop scales the Deployment).
    ("get", GROUP, PLURAL), ("patch", GROUP, f"{PLURAL}/status"),
    # The SLO loop's ready engine pods: from kopf's pod index; a LIST only when the index lags
    # the Deployment (its ready replicas not in the index yet).
    ("list", "", "pods"),
    # At start-up: the SpecServeDeployment CRD's schema version (crd_schema; the chart grants
    # `get` on that one CRD by name).
    ("get", "apiextensions.k8s.io", "customresourcedefinitions"),
})
# What kopf itself calls: it watches the resources, patches their finalizer and annotations,
# posts events, and watches CRDs; and it watches the children it keeps in indexes
# (`children.WATCHED`, selected by the operator's managed-by label) so that a status-timer
# pass reads them from memory instead of GETting each.
KOPF_CALLS: frozenset[tuple[str, str, str]] = frozenset({
    ("list", GROUP, PLURAL), ("watch", GROUP, PLURAL), ("patch", GROUP, PLURAL),
    ("create", "", "events"),
    *((verb, group, plural) for verb in ("list", "watch") for group, plural in (
        ("apps", "deployments"), ("", "services"), ("", "configmaps"),
        ("policy", "poddisruptionbudgets"))),
    # The engine pods (`children.PODS`, selected by the engine label), for the SLO loop.
    ("list", "", "pods"), ("watch", "", "pods"),
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions"),
})
# kopf's watch of the control-token Secrets (`children.SECRETS`), only where the operator may
# list and watch Secrets wherever it watches (SPECSERVE_WATCH_SECRETS; the chart sets it with
# watchNamespaces or operator.clusterWideSecrets, and grants these with the Secret rights).
KOPF_SECRET_CALLS: frozenset[tuple[str, str, str]] = frozenset({
    ("list", "", "secrets"), ("watch", "", "secrets"),
})
# kopf peering (several replicas, one acts: `peering`): it watches the peering object of its scope
# and patches its keep-alive into it; cluster-wide (ClusterKopfPeering) when it watches all
# namespaces, else the KopfPeering in each watched namespace.
KOPF_PEERING_CALLS: dict[str, frozenset[tuple[str, str, str]]] = {
    "cluster": frozenset((verb, "kopf.dev", "clusterkopfpeerings")
                         for verb in ("list", "watch", "patch")),
    "namespaced": frozenset((verb, "kopf.dev", "kopfpeerings")
                            for verb in ("list", "watch", "patch")),
}
# Not a call: OwnerReferencesPermissionEnforcement admits a child with blockOwnerDeletion only
# from whoever may update the owner's finalizers.
ADMISSION_GRANTS: frozenset[tuple[str, str, str]] = frozenset({
    ("update", GROUP, f"{PLURAL}/finalizers"),
})
_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


class UnlistedApiCall(AssertionError):
    """A call that API_CALLS (and so the chart's RBAC) does not list: a bug, found in tests."""


def api_call(method: str, path: str) -> tuple[str, str, str] | None:
    """(verb, group, resource[/subresource]) of a request path; None for discovery paths."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    if parts[:1] == ["api"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"]:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    elif rest[:1] == ["namespaces"] or not rest:
        return None  # discovery, or namespaces themselves (never called)
    resource, name, sub = rest[0], rest[1:2], rest[2:3]
    verb = _VERBS.get(method) or ("get" if name else "list")
    return verb, group, resource + (f"/{sub[0]}" if sub else "")
CONFLICT = 409  # a create of an existing name, or a write whose resourceVersion is stale
# Read-modify-write attempts before a conflict is given up on (the next pass starts afresh).
CONFLICT_ATTEMPTS = 5


def precondition(body: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
    """`body` made conditional on `current` being what the server still stores: a merge patch
    that names metadata.resourceVersion is refused with 409 Conflict if the object changed
    since it was read (optimistic concurrency). Objects without one (tests' fakes) go as is."""
    version = ((current or {}).get("metadata") or {}).get("resourceVersion")
    if not version:
        return body
    return {**body, "metadata": {**(body.get("metadata") or {}), "resourceVersion": version}}


class KubeError(RuntimeError):
    """A failed API call: `status` is the HTTP status, 0 when no response came (timeout,
    refused or reset connection)."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        what = f"HTTP {status}" if status else "no response"
        super().__init__(f"{method} {path} -> {what}: {body[:500]}")


def resource_path(
    api_version: str, kind: str, namespace: str, name: str | None = None, subresource: str = ""
) -> str:
    plural = PLURALS[(api_version, kind)]
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{plural}"
    if name:
        path += f"/{name}"
    if subresource:
        path += f"/{subresource}"
    return path


# How long a discovery answer (`KubeClient.serves`) is reused: a CRD installed (or removed)
# meanwhile is noticed within this time. Until then a removed one answers 404 on its objects,
# which the caller skips anyway.
DISCOVERY_TTL_S = 300.0


class KubeClient:
    # Every call any client in this process made (tests compare it with API_CALLS).
    issued: ClassVar[set[tuple[str, str, str]]] = set()

    def __init__(self, api_client: client.ApiClient,
                 discovery_ttl_s: float = DISCOVERY_TTL_S) -> None:
        self.api = api_client
        self.discovery_ttl_s = discovery_ttl_s
        self._served: dict[tuple[str, str], tuple[float, bool]] = {}
        self._served_lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> KubeClient:
        """In-cluster service account if present, else $KUBECONFIG (read now) or ~/.kube/config."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
        return cls(client.ApiClient())

    def request(
        self, method: str, path: str, body: Any = None, content_type: str | None = None
    ) -> dict[str, Any] | None:
        """One API call; None on 404, KubeError on any other failure."""
        call = api_call(method, path)
        if call is not None:
            if call not in API_CALLS:
                raise UnlistedApiCall(f"{method} {path}: {call} is not in API_CALLS (nor RBAC)")
            KubeClient.issued.add(call)
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        args = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.api.call_api(*args, _request_timeout=REQUEST_TIMEOUT_S)
            data = response.read() or b""
        except urllib3.exceptions.HTTPError as exc:
            if call is not None:
                metrics.API_CALLS.labels(call[0], call[2], "0").inc()
            raise KubeError(0, method, path, f"{type(exc).__name__}: {exc}") from exc
        if call is not None:
            metrics.API_CALLS.labels(call[0], call[2], str(response.status)).inc()
        if response.status == 404:
            return None
        if not 200 <= response.status < 300:
            raise KubeError(response.status, method, path, data.decode(errors="replace"))
        return json.loads(data) if data else {}

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.request("GET", resource_path(api_version, kind, namespace, name))

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        return self.request("POST", f"{path}?fieldManager={FIELD_MANAGER}", obj) or {}

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any] | None:
        path = resource_path(api_version, kind, namespace, name, subresource)
        return self.request("PATCH", f"{path}?fieldManager={FIELD_MANAGER}", body, MERGE_PATCH)

    def apply(self, obj: dict[str, Any], field_manager: str = FIELD_MANAGER,
              force: bool = False) -> dict[str, Any] | None:
        """Server-side apply of `obj` (a complete object: it creates one that is missing). With
        `force`, fields another manager owns are taken over instead of answering 409 Conflict.
        A create by apply is authorized as `create` (and an update as `patch`), so both are
        recorded as issued."""
        meta = obj["metadata"]
        path = resource_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        query = f"?fieldManager={field_manager}" + ("&force=true" if force else "")
        out = self.request("PATCH", path + query, obj, APPLY_PATCH)
        call = api_call("POST", path.rsplit("/", 1)[0])
        if call is not None and call in API_CALLS:
            KubeClient.issued.add(call)
        return out

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """True if something was deleted, False if it was already gone."""
        path = resource_path(api_version, kind, namespace, name)
        return self.request("DELETE", path) is not None

    def serves(self, api_version: str, plural: str) -> bool:
        """Does the API server serve this resource (e.g. is a CRD installed)? Via discovery,
        asked again once the last answer is `discovery_ttl_s` old (a failed discovery request
        is not remembered)."""
        key, now = (api_version, plural), time.monotonic()
        with self._served_lock:
            known = self._served.get(key)
        if known is not None and now - known[0] < self.discovery_ttl_s:
            return known[1]
        root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            listing = self.request("GET", root)
        except KubeError:
            return False
        names = {r.get("name") for r in (listing or {}).get("resources", [])}
        with self._served_lock:
            self._served[key] = (now, plural in names)
        return plural in names
