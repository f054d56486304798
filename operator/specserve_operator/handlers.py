"""kopf handlers: wire the pure functions (spec, manifests, status) to the Kubernetes API.

    kopf run -m specserve_operator.handlers --all-namespaces

One reconcile function serves create, update (of .spec), resume (operator restart) and a
periodic timer (status refresh and drift repair). It is idempotent: it reads every child,
creates what is missing, patches what differs from the desired manifest (JSON merge patch of
the fields we own), and leaves everything else alone, so a restart with nothing changed
writes nothing. A spec that fails validation is reported in .status (phase Invalid, Ready=False,
Degraded=True with the message) and as a Warning event; existing children are left running.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
from typing import Any

import kopf

from specserve_operator import manifests as m
from specserve_operator import spec as s
from specserve_operator import status as st
from specserve_operator.kube import Kube, KubeError

# How often the timer refreshes .status from the Deployment and repairs drift.
STATUS_INTERVAL_S = float(os.environ.get("SPECSERVE_STATUS_INTERVAL_S", "15"))
FINALIZER = f"{s.GROUP}/cleanup"
SERVICEMONITOR_API = "monitoring.coreos.com/v1"


class _Client:
    """The API client, made at operator startup (so a restarted operator re-reads its config)."""

    kube: Kube | None = None


def kube() -> Kube:
    if _Client.kube is None:
        _Client.kube = Kube.from_environment()
    return _Client.kube


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: .status has a strict schema and belongs to us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=s.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=s.GROUP, key="last-handled-configuration"
    )
    # Events: the explicit ones below (Created/Updated/InvalidSpec) plus kopf's own warnings;
    # routine log lines stay in the operator's log.
    settings.posting.level = logging.WARNING
    _Client.kube = Kube.from_environment()


# ------------------------------------------------------------------------------ reconciliation


def _ensure(
    api: Kube, desired: dict[str, Any], current: dict[str, Any] | None, body: Any, logger: Any
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
    wanted = m.patch_for(desired)
    if m.is_subset(wanted, current):
        return current
    patched = api.patch(desired["apiVersion"], kind, meta["namespace"], meta["name"], wanted)
    kopf.event(body, type="Normal", reason="Updated", message=f"updated {what}")
    logger.info(f"updated {what}")
    return patched or current


def _ensure_secret(api: Kube, owner: m.Owner, spec: s.SpecServeDeploymentSpec, body: Any,
                   logger: Any) -> None:
    """The control token is made once; an existing Secret is never rewritten (nor logged)."""
    if api.get("v1", "Secret", owner.namespace, m.secret_name(owner)) is not None:
        return
    _ensure(api, m.secret(owner, spec, secrets.token_urlsafe(32)), None, body, logger)


def _ensure_policy(api: Kube, owner: m.Owner, spec: s.SpecServeDeploymentSpec, body: Any,
                   logger: Any) -> int:
    """Store the policy (bumping its version only when the spec changes it); return the version."""
    current = api.get("v1", "ConfigMap", owner.namespace, m.configmap_name(owner))
    policy, _changed = m.merge_policy(m.parse_policy(current), spec)
    _ensure(api, m.configmap(owner, spec, policy), current, body, logger)
    return int(policy["version"])


def reconcile_children(
    api: Kube, owner: m.Owner, spec: s.SpecServeDeploymentSpec, body: Any, logger: Any
) -> tuple[dict[str, Any], int]:
    """Bring every child to the desired state; return (the Deployment, the policy version)."""
    _ensure_secret(api, owner, spec, body, logger)
    version = _ensure_policy(api, owner, spec, body, logger)
    current = api.get("apps/v1", "Deployment", owner.namespace, m.deployment_name(owner))
    dep = _ensure(api, m.deployment(owner, spec), current, body, logger)
    current = api.get("v1", "Service", owner.namespace, m.service_name(owner))
    _ensure(api, m.service(owner, spec), current, body, logger)
    if spec.metrics.service_monitor and api.serves(SERVICEMONITOR_API, "servicemonitors"):
        name = m.servicemonitor_name(owner)
        current = api.get(SERVICEMONITOR_API, "ServiceMonitor", owner.namespace, name)
        _ensure(api, m.servicemonitor(owner, spec), current, body, logger)
    return dep, version


def _write_status(patch: Any, old: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in st.status_patch(old, new).items():
        patch.status[key] = value


def reconcile(
    body: Any, meta: Any, status: Any, namespace: str, name: str, uid: str, patch: Any,
    logger: Any,
) -> None:
    owner = m.Owner(name=name, namespace=namespace, uid=uid)
    old = dict(status or {})
    generation = meta.get("generation")
    try:
        spec = s.parse_spec(body.get("spec"))
    except s.SpecError as exc:
        message = str(exc)
        if old.get("phase") != "Invalid" or old.get("message") != message:
            kopf.warn(body, reason="InvalidSpec", message=message)
            logger.info(message)
        _write_status(patch, old, st.invalid_status(message, old, _now(), generation))
        return
    dep, version = reconcile_children(kube(), owner, spec, body, logger)
    new = st.running_status(spec, owner, dep, version, old, _now(), generation)
    _write_status(patch, old, new)


@kopf.on.create(s.GROUP, s.VERSION, s.PLURAL)
@kopf.on.update(s.GROUP, s.VERSION, s.PLURAL, field="spec")
@kopf.on.resume(s.GROUP, s.VERSION, s.PLURAL)
def on_change(**kwargs: Any) -> None:
    reconcile(**_reconcile_kwargs(kwargs))


@kopf.timer(s.GROUP, s.VERSION, s.PLURAL, interval=STATUS_INTERVAL_S, idle=STATUS_INTERVAL_S)
def refresh(**kwargs: Any) -> None:
    """Follow the Deployment into .status and repair drift (a deleted or edited child)."""
    if not (kwargs["status"] or {}).get("phase"):
        return  # not reconciled by on_change yet: do not race the create handler
    reconcile(**_reconcile_kwargs(kwargs))


def _reconcile_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("body", "meta", "status", "namespace", "name", "uid", "patch", "logger")
    return {k: kwargs[k] for k in keys}


# ------------------------------------------------------------------------------------ deletion


def children(owner: m.Owner) -> list[tuple[str, str, str]]:
    """(apiVersion, kind, name) of everything a resource may own, deleted in this order."""
    return [
        (SERVICEMONITOR_API, "ServiceMonitor", m.servicemonitor_name(owner)),
        ("apps/v1", "Deployment", m.deployment_name(owner)),
        ("v1", "Service", m.service_name(owner)),
        ("v1", "ConfigMap", m.configmap_name(owner)),
        ("v1", "Secret", m.secret_name(owner)),
    ]


def _owned_by(obj: dict[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == uid for ref in refs)


@kopf.on.delete(s.GROUP, s.VERSION, s.PLURAL)
def on_delete(namespace: str, name: str, uid: str, logger: Any, **_: Any) -> None:
    """Delete the children now (owner references let the garbage collector do it too)."""
    api = kube()
    owner = m.Owner(name=name, namespace=namespace, uid=uid)
    has_monitors = api.serves(SERVICEMONITOR_API, "servicemonitors")
    for api_version, kind, child in children(owner):
        if api_version == SERVICEMONITOR_API and not has_monitors:
            continue
        obj = api.get(api_version, kind, namespace, child)
        if obj is None or not _owned_by(obj, uid):
            continue
        if api.delete(api_version, kind, namespace, child):
            logger.info(f"deleted {kind} {child}")
