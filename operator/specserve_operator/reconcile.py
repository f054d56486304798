"""Child reconcile: bring a resource's children to the desired manifests and shape .status.

Idempotent: it reads every child, creates what is missing, patches what differs from the desired
manifest (JSON merge patch of the fields we own), and leaves everything else alone, so a restart
with nothing changed writes nothing. A spec that fails validation is reported in .status (phase
Invalid, Ready=False, Degraded=True with the message) and as a Warning event; existing children
are left running.

ServiceMonitors are optional: with `manage_monitors` off (the chart's
operator.manageServiceMonitors: false, whose RBAC then grants none) they are never read or
written, and a 403 or 404 on one (no RBAC for it, the CRD removed meanwhile) is logged and
skipped, so it can hold up neither the other children nor .status.
"""

from __future__ import annotations

import datetime
import secrets
from typing import Any

import kopf

from specserve_operator.kube_client import KubeClient, KubeError
from specserve_operator.manifests import (
    SERVICEMONITOR_API,
    Owner,
    configmap,
    configmap_name,
    deployment,
    deployment_name,
    is_subset,
    merge_policy,
    parse_policy,
    patch_for,
    secret,
    secret_name,
    service,
    service_name,
    servicemonitor,
    servicemonitor_name,
)
from specserve_operator.spec import SpecError, SpecServeDeploymentSpec, parse_spec
from specserve_operator.status import invalid_status, running_status, status_patch


def now_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure(
    api: KubeClient, desired: dict[str, Any], current: dict[str, Any] | None, body: Any, logger: Any
) -> dict[str, Any]:
    """Create or patch one child so that it contains `desired`; return the object as stored."""
    kind, meta = desired["kind"], desired["metadata"]
    what = f"{kind} {meta['name']}"
    if current is None:
        try:
            created = api.create(desired)
        except KubeError as exc:
            if exc.status != 409:  # 409: created meanwhile (a concurrent pass); next pass checks
                raise
            return desired
        kopf.event(body, type="Normal", reason="Created", message=f"created {what}")
        logger.info(f"created {what}")
        return created or desired
    wanted = patch_for(desired)
    if is_subset(wanted, current):
        return current
    patched = api.patch(desired["apiVersion"], kind, meta["namespace"], meta["name"],
                        patch_for(desired, current))
    kopf.event(body, type="Normal", reason="Updated", message=f"updated {what}")
    logger.info(f"updated {what}")
    return patched or current


def _ensure_secret(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any,
                   logger: Any) -> None:
    """The control token is made once; an existing Secret is never rewritten (nor logged)."""
    if api.get("v1", "Secret", owner.namespace, secret_name(owner)) is not None:
        return
    ensure(api, secret(owner, spec, secrets.token_urlsafe(32)), None, body, logger)


def _ensure_policy(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any,
                   logger: Any) -> int:
    """Store the policy (bumping its version only when the spec changes it); return the version."""
    current = api.get("v1", "ConfigMap", owner.namespace, configmap_name(owner))
    policy, _changed = merge_policy(parse_policy(current), spec)
    ensure(api, configmap(owner, spec, policy), current, body, logger)
    return int(policy["version"])


# Answers on an optional child that mean "not for us here": skip it, never fail the pass.
OPTIONAL_CHILD_SKIPPED = (403, 404)


def _ensure_servicemonitor(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec,
                           body: Any, logger: Any) -> None:
    if not api.serves(SERVICEMONITOR_API, "servicemonitors"):
        return
    name = servicemonitor_name(owner)
    try:
        current = api.get(SERVICEMONITOR_API, "ServiceMonitor", owner.namespace, name)
        ensure(api, servicemonitor(owner, spec), current, body, logger)
    except KubeError as exc:
        if exc.status not in OPTIONAL_CHILD_SKIPPED:
            raise
        logger.warning(f"ServiceMonitor {name} skipped (HTTP {exc.status}: set the chart's "
                       f"operator.manageServiceMonitors to false, or grant servicemonitors)")


def reconcile_children(
    api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any, logger: Any,
    manage_monitors: bool = True,
) -> tuple[dict[str, Any], int]:
    """Bring every child to the desired state; return (the Deployment, the policy version)."""
    _ensure_secret(api, owner, spec, body, logger)
    version = _ensure_policy(api, owner, spec, body, logger)
    current = api.get("apps/v1", "Deployment", owner.namespace, deployment_name(owner))
    dep = ensure(api, deployment(owner, spec), current, body, logger)
    current = api.get("v1", "Service", owner.namespace, service_name(owner))
    ensure(api, service(owner, spec), current, body, logger)
    if manage_monitors and spec.metrics.service_monitor:
        _ensure_servicemonitor(api, owner, spec, body, logger)
    return dep, version


def write_status(patch: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Put the top-level status keys that changed into kopf's patch."""
    for key, value in status_patch(old, new).items():
        patch.status[key] = value


def reconcile(
    api: KubeClient, body: Any, meta: Any, status: Any, namespace: str, name: str, uid: str,
    patch: Any, logger: Any, manage_monitors: bool = True,
) -> None:
    """One reconcile pass of one resource: validate the spec, reconcile children, write status."""
    owner = Owner(name=name, namespace=namespace, uid=uid)
    old = dict(status or {})
    generation = meta.get("generation")
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        message = str(exc)
        if old.get("phase") != "Invalid" or old.get("message") != message:
            kopf.warn(body, reason="InvalidSpec", message=message)
            logger.info(message)
        write_status(patch, old, invalid_status(message, old, now_stamp(), generation))
        return
    dep, version = reconcile_children(api, owner, spec, body, logger, manage_monitors)
    new = running_status(spec, owner, dep, version, old, now_stamp(), generation)
    write_status(patch, old, new)
