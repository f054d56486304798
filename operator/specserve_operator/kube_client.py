"""A thin, synchronous Kubernetes REST client for the handlers: get/create/patch/delete on dicts.

Built on the official client's ApiClient for configuration and authentication (in-cluster
service account or kubeconfig); objects stay plain dicts end to end (no model classes).
Patches are JSON merge patches (RFC 7386): we own whole fields and replace lists wholesale.
"""

from __future__ import annotations

import json
import os
from typing import Any

from kubernetes import client, config

from specserve_contract import API_VERSION, KIND, PLURAL
from specserve_operator.manifests import SERVICEMONITOR_API

# (apiVersion, kind) -> plural, for every kind the operator touches.
PLURALS: dict[tuple[str, str], str] = {
    ("apps/v1", "Deployment"): "deployments",
    ("v1", "Service"): "services",
    ("v1", "Secret"): "secrets",
    ("v1", "ConfigMap"): "configmaps",
    (SERVICEMONITOR_API, "ServiceMonitor"): "servicemonitors",
    (API_VERSION, KIND): PLURAL,
}

MERGE_PATCH = "application/merge-patch+json"
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
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        self.status = status
        super().__init__(f"{method} {path} -> HTTP {status}: {body[:500]}")


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


class KubeClient:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api = api_client

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
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        args = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*args)
        data = response.read() or b""
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
        return self.request("POST", path, obj) or {}

    def patch(
        self, api_version: str, kind: str, namespace: str, name: str, body: dict[str, Any],
        subresource: str = "",
    ) -> dict[str, Any] | None:
        path = resource_path(api_version, kind, namespace, name, subresource)
        return self.request("PATCH", path, body, MERGE_PATCH)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """True if something was deleted, False if it was already gone."""
        path = resource_path(api_version, kind, namespace, name)
        return self.request("DELETE", path) is not None

    def serves(self, api_version: str, plural: str) -> bool:
        """Does the API server serve this resource (e.g. is a CRD installed)? Via discovery."""
        root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            listing = self.request("GET", root)
        except KubeError:
            return False
        names = {r.get("name") for r in (listing or {}).get("resources", [])}
        return plural in names
