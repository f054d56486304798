"""Deleting a SpecServeDeployment's children (owner references let the garbage collector do it
too; deleting them now makes `kubectl delete` finish with nothing left behind)."""

from __future__ import annotations

from typing import Any

from specserve_operator.kube_client import KubeClient
from specserve_operator.manifests import (
    SERVICEMONITOR_API,
    Owner,
    configmap_name,
    deployment_name,
    secret_name,
    service_name,
    servicemonitor_name,
)


def children(owner: Owner) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of everything a resource may own, deleted in this order."""
    return [
        (SERVICEMONITOR_API, "ServiceMonitor", servicemonitor_name(owner)),
        ("apps/v1", "Deployment", deployment_name(owner)),
        ("v1", "Service", service_name(owner)),
        ("v1", "ConfigMap", configmap_name(owner)),
        ("v1", "Secret", secret_name(owner)),
    ]


def owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


def delete_children(api: KubeClient, owner: Owner, logger: Any) -> None:
    """Delete every child this resource owns; objects someone else owns are left alone."""
    has_monitors = api.serves(SERVICEMONITOR_API, "servicemonitors")
    for api_version, kind, child in children(owner):
        if api_version == SERVICEMONITOR_API and not has_monitors:
            continue
        obj = api.get(api_version, kind, owner.namespace, child)
        if obj is None or not owned_by(obj, owner.uid):
            continue
        if api.delete(api_version, kind, owner.namespace, child):
            logger.info(f"deleted {kind} {child}")
