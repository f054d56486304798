"""Child reconcile: bring a resource's children to the desired manifests and shape .status.

Idempotent: it reads every child (`children.Children`: a GET, or in a status-timer pass the
watch-fed index) and server-side applies the desired manifest (`ensure`) where it is missing or
differs from it (`diff.in_sync`: compared on the fields the operator sets only), so a restart
with nothing changed writes nothing, and neither do fields that others (defaulting, admission
webhooks) added. A spec that fails validation is reported in .status (phase Invalid,
Ready=False, Degraded=True with the message) and as a Warning event; existing children are left
running.

The field manager is `kube_client.FIELD_MANAGER`, and applies are forced: the operator is the
one intended manager of the fields it sets on its own children (a `kubectl edit` of one is
undone, like any drift; see the Kubernetes docs "Server-Side Apply: Using Server-Side Apply in
a controller"). But only on its own children: an object of a child's name whose controller
owner reference is not this resource (another SpecServeDeployment's, another controller's, or
nobody's) is never written (`NameConflict`: reported in .status and as a Warning event); the
other children are still reconciled.

ServiceMonitors are optional: with `manage_monitors` off (the chart's
operator.manageServiceMonitors: false, whose RBAC then grants none) they are never read or
written, and a 403 or 404 on one (no RBAC for it, the CRD removed meanwhile) is logged and
skipped, so it can hold up neither the other children nor .status.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import kopf

from specserve_contract import API_VERSION, KIND
from specserve_contract.claims import claim_record, conflict_for
from specserve_operator.children import Children
from specserve_operator.diff import applied, in_sync
from specserve_operator.kube_client import (
    CONFLICT,
    CONFLICT_ATTEMPTS,
    FIELD_MANAGER,
    KubeClient,
    KubeError,
    precondition,
)
from specserve_operator.manifests import (
    PDB_API,
    SERVICEMONITOR_API,
    configmap,
    deployment,
    deployment_replicas,
    disruption_budget,
    merge_policy,
    parse_policy,
    secret,
    service,
    servicemonitor,
)
from specserve_operator.names import (
    Owner,
    configmap_name,
    deployment_name,
    disruption_budget_name,
    owned_by,
    secret_name,
    served_model,
    service_name,
    servicemonitor_name,
)
from specserve_operator.spec import (
    SpecError,
    SpecServeDeploymentSpec,
    name_problems,
    parse_spec,
)
from specserve_operator.status import RECONCILE, Writer, invalid_status, owned_patch, running_status


def now_stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class NameConflict(Exception):
    """A child's name is taken by an object this resource does not control."""

    def __init__(self, kind: str, name: str, current: dict[str, Any]) -> None:
        self.kind, self.name = kind, name
        super().__init__(f"{kind} {name} already exists and is {holder(current)}: the operator "
                         f"leaves it alone; rename this SpecServeDeployment or remove that "
                         f"{kind}")


def controller_of(obj: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The controller owner reference of an object, if it has one."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


def holder(obj: dict[str, Any]) -> str:
    """Who controls `obj`, in words (for the NameConflict message)."""
    ref = controller_of(obj)
    if ref is None:
        return "not owned by any SpecServeDeployment"
    if ref.get("kind") == KIND and str(ref.get("apiVersion", "")).startswith(API_VERSION):
        return f"owned by SpecServeDeployment {ref.get('name')} (uid {ref.get('uid')})"
    return (f"controlled by {ref.get('kind')} {ref.get('name')}, not by a "
            f"SpecServeDeployment")


def _check_owner(desired: dict[str, Any], current: dict[str, Any] | None) -> None:
    """Raise NameConflict unless `current` is absent or controlled by `desired`'s owner."""
    if current is None:
        return
    mine = controller_of(desired)
    theirs = controller_of(current)
    if mine is None or theirs is None or theirs.get("uid") != mine.get("uid"):
        raise NameConflict(desired["kind"], desired["metadata"]["name"], current)


def apply_child(api: KubeClient, desired: dict[str, Any], current: dict[str, Any] | None,
                body: Any, logger: Any) -> dict[str, Any]:
    """One attempt of `ensure`: the owner check, then the apply unless in sync. A 409 from the
    API server is raised to the caller."""
    _check_owner(desired, current)
    config = applied(desired)
    if current is not None and in_sync(config, current):
        return current
    if current is None:
        stored = api.apply(config, FIELD_MANAGER, force=False)
    else:
        stored = api.apply(precondition(config, current), FIELD_MANAGER, force=True)
    verb = "created" if current is None else "updated"
    what = f"{desired['kind']} {desired['metadata']['name']}"
    kopf.event(body, type="Normal", reason=verb.capitalize(), message=f"{verb} {what}")
    logger.info(f"{verb} {what}")
    return stored or config


def ensure(
    api: KubeClient, desired: dict[str, Any], current: dict[str, Any] | None, body: Any, logger: Any
) -> dict[str, Any]:
    """Server-side apply `desired` to one child unless it is in sync (`diff.in_sync`); return
    the object as stored. Raises NameConflict (writing nothing) if an object of that name
    exists that `desired`'s owner does not control.

    A missing child is created by the apply, unforced: if one of that name appeared meanwhile
    (a concurrent pass, or someone else) its fields conflict (409), and the next pass reads it
    and checks its owner. An existing child is applied with force under a resourceVersion
    precondition (the version its owner was checked on): a 409 means it changed meanwhile (or
    `current` came from a stale index), and the check and the apply are made again on a fresh
    read."""
    meta = desired["metadata"]
    for attempt in range(CONFLICT_ATTEMPTS):
        if attempt:
            current = api.get(desired["apiVersion"], desired["kind"], meta["namespace"],
                              meta["name"])
        try:
            return apply_child(api, desired, current, body, logger)
        except KubeError as exc:
            if exc.status != CONFLICT:
                raise
            if current is None:
                return desired  # created meanwhile; the next pass checks it
            if attempt == CONFLICT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def _ensure_secret(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any,
                   logger: Any, reads: Children | None = None) -> None:
    """The control token is made once (a create: RBAC grants no patch on Secrets); an existing
    Secret is never rewritten (nor logged). One this resource does not own: NameConflict."""
    reads = reads if reads is not None else Children(api)
    name = secret_name(owner)
    if reads.recently_checked("Secret", owner.namespace, name):
        return
    desired = secret(owner, spec, secrets.token_urlsafe(32))
    current = reads.read("v1", "Secret", owner.namespace, name)
    _check_owner(desired, current)
    if current is None:
        try:
            api.create(desired)
        except KubeError as exc:
            if exc.status != CONFLICT:  # created meanwhile (a concurrent pass); next check sees
                raise
        else:
            kopf.event(body, type="Normal", reason="Created", message=f"created Secret {name}")
            logger.info(f"created Secret {name}")
    reads.mark_checked("Secret", owner.namespace, name)


def _ensure_policy(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any,
                   logger: Any, reads: Children | None = None) -> int:
    """Store the policy (bumping its version only when the spec changes it); return the version.

    The policy document has two writers: this one owns the spec's fields (`merge_policy`), the
    SLO loop the tuned ones (`slo_loop.update_policy`). Each reads, merges and writes under a
    resourceVersion precondition, and a 409 Conflict starts again from a fresh read, so neither
    drops what the other wrote in between. (The first read may come from the index: a stale
    one is refused like any other, and the retry reads the API server.)
    """
    reads = reads if reads is not None else Children(api)
    for attempt in range(CONFLICT_ATTEMPTS):
        read = reads.get if attempt == 0 else reads.read
        current = read("v1", "ConfigMap", owner.namespace, configmap_name(owner))
        stored = current if owned_by(current, owner) else None  # a foreign one: NameConflict
        policy, _changed = merge_policy(parse_policy(stored), spec)
        try:
            apply_child(api, configmap(owner, spec, policy), current, body, logger)
            return int(policy["version"])
        except KubeError as exc:
            if exc.status != CONFLICT or attempt == CONFLICT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


# Answers on an optional child that mean "not for us here": skip it, never fail the pass.
OPTIONAL_CHILD_SKIPPED = (403, 404)


def _ensure_servicemonitor(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec,
                           body: Any, logger: Any,
                           monitor_labels: Mapping[str, str] | None = None,
                           reads: Children | None = None) -> None:
    reads = reads if reads is not None else Children(api)
    name = servicemonitor_name(owner)
    if reads.recently_checked("ServiceMonitor", owner.namespace, name):
        return
    if not api.serves(SERVICEMONITOR_API, "servicemonitors"):
        return
    try:
        current = reads.read(SERVICEMONITOR_API, "ServiceMonitor", owner.namespace, name)
        ensure(api, servicemonitor(owner, spec, monitor_labels), current, body, logger)
        reads.mark_checked("ServiceMonitor", owner.namespace, name)
    except KubeError as exc:
        if exc.status not in OPTIONAL_CHILD_SKIPPED:
            raise
        logger.warning(f"ServiceMonitor {name} skipped (HTTP {exc.status}: set the chart's "
                       f"operator.manageServiceMonitors to false, or grant servicemonitors)")


def engine_replicas(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec,
                    status: Mapping[str, Any] | None, current: dict[str, Any] | None) -> int:
    """The Deployment's replicas (`manifests.deployment_replicas`), never undoing a newer scale.

    In builtin mode the SLO loop writes its decision to .status first and scales the Deployment
    after, while `status` (the watch's view) may be older than the Deployment just read. So
    before changing the replicas of an existing Deployment, the decision is read again: a
    Deployment the loop has scaled always finds that decision in a read made after it."""
    replicas = deployment_replicas(spec, status)
    have = ((current or {}).get("spec") or {}).get("replicas")
    if current is None or spec.autoscaling.mode != "builtin" or have == replicas:
        return replicas
    fresh = api.get(API_VERSION, KIND, owner.namespace, owner.name)
    return replicas if fresh is None else deployment_replicas(spec, fresh.get("status"))


def _ensure_disruption_budget(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec,
                              body: Any, logger: Any, reads: Children | None = None) -> None:
    """Create or repair the PodDisruptionBudget; with spec.disruptionBudget.enabled false,
    delete the one this resource owns (the operator's only delete: a budget left behind would
    keep limiting drains). One of the same name that it does not own is left alone."""
    reads = reads if reads is not None else Children(api)
    name = disruption_budget_name(owner)
    current = reads.get(PDB_API, "PodDisruptionBudget", owner.namespace, name)
    if spec.disruption_budget.enabled:
        ensure(api, disruption_budget(owner, spec), current, body, logger)
    elif current is not None and owned_by(current, owner):
        if not api.delete(PDB_API, "PodDisruptionBudget", owner.namespace, name):
            return  # already gone (the index had not seen the deletion yet)
        kopf.event(body, type="Normal", reason="Deleted",
                   message=f"deleted PodDisruptionBudget {name} (disruptionBudget.enabled: false)")
        logger.info(f"deleted PodDisruptionBudget {name}")


def reconcile_children(
    api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any, logger: Any,
    manage_monitors: bool = True, monitor_labels: Mapping[str, str] | None = None,
    status: Mapping[str, Any] | None = None, reads: Children | None = None,
) -> tuple[dict[str, Any] | None, int, list[NameConflict]]:
    """Bring every child to the desired state; return (the Deployment, the policy version, the
    name conflicts). A child whose name is taken by an object this resource does not control
    is left alone and reported in the conflicts (the Deployment then as None, the version 0);
    the other children are reconciled all the same.

    `status`: the resource's .status as last seen (the Deployment's replicas follow the SLO
    loop's decision in it, in autoscaling mode builtin). `reads`: where children are read
    from (default: a GET each)."""
    reads = reads if reads is not None else Children(api)
    conflicts: list[NameConflict] = []

    def step(write: Callable[[], Any], default: Any = None) -> Any:
        try:
            return write()
        except NameConflict as exc:
            conflicts.append(exc)
            return default

    step(lambda: _ensure_secret(api, owner, spec, body, logger, reads))
    version = step(lambda: _ensure_policy(api, owner, spec, body, logger, reads), 0)
    current = reads.get("apps/v1", "Deployment", owner.namespace, deployment_name(owner))
    dep = step(lambda: ensure(
        api, deployment(owner, spec, engine_replicas(api, owner, spec, status, current)),
        current, body, logger))
    current_svc = reads.get("v1", "Service", owner.namespace, service_name(owner))
    step(lambda: ensure(api, service(owner, spec), current_svc, body, logger))
    step(lambda: _ensure_disruption_budget(api, owner, spec, body, logger, reads))
    if manage_monitors and spec.metrics.service_monitor:
        step(lambda: _ensure_servicemonitor(api, owner, spec, body, logger, monitor_labels,
                                            reads))
    return dep, version, conflicts


def write_status(api: KubeClient, owner: Owner, writer: Writer,
                 build: Callable[[dict[str, Any]], dict[str, Any]],
                 seen: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write `writer`'s part of .status: build the new status from the current one, send only
    what `writer` owns (`status.owned_patch`) to the status subresource under a resourceVersion
    precondition; a 409 Conflict starts again from a fresh read. Returns what was sent (empty:
    nothing to change, or the resource is gone).

    `seen`: the resource as the watch last delivered it (kopf's body). The first attempt works
    from it (its resourceVersion is the precondition), so the usual pass costs no extra read;
    and when `writer` would change nothing in it, nothing is sent at all (only `writer` changes
    its keys, so a stale view can make it write too often, never too rarely)."""
    obj = _plain(seen) if seen is not None else None
    for attempt in range(CONFLICT_ATTEMPTS):
        if obj is None:
            obj = api.get(API_VERSION, KIND, owner.namespace, owner.name)
            if obj is None:
                return {}
        fresh = obj.get("status") or {}
        body = owned_patch(writer, fresh, build(fresh))
        if not body:
            return {}
        try:
            api.patch(API_VERSION, KIND, owner.namespace, owner.name,
                      precondition({"status": body}, obj), subresource="status")
            return body
        except KubeError as exc:
            if exc.status != CONFLICT or attempt == CONFLICT_ATTEMPTS - 1:
                raise
            obj = None  # read it again
    return {}


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """kopf's body as plain dicts (metadata and status are all we read)."""
    return {"metadata": dict(body.get("metadata") or {}),
            "status": dict(body.get("status") or {})}


def reconcile(
    api: KubeClient, body: Any, meta: Any, status: Any, namespace: str, name: str, uid: str,
    patch: Any, logger: Any, manage_monitors: bool = True,
    monitor_labels: Mapping[str, str] | None = None, reads: Children | None = None,
    route_claims: Iterable[Mapping[str, Any]] | None = None,
) -> str:
    """One reconcile pass of one resource: validate the spec, reconcile children, write status.
    Returns "ok", or "invalid" for a refused spec. `reads`: see `reconcile_children`.
    `route_claims`: the other SpecServeDeployments serving this one's model name (their
    `claim_record`s, from the handlers' index), for the RouteConflict condition."""
    owner = Owner(name=name, namespace=namespace, uid=uid)
    old = dict(status or {})
    generation = meta.get("generation")
    try:
        # A CRD installed without the name rules (an older chart) admits names the children
        # cannot carry: refuse them here, before any GPU pod starts.
        problems = name_problems(name)
        if problems:
            raise SpecError([f"metadata.name: {p}" for p in problems])
        spec = parse_spec(body.get("spec"))
    except SpecError as exc:
        message = str(exc)
        if old.get("phase") != "Invalid" or old.get("message") != message:
            kopf.warn(body, reason="InvalidSpec", message=message)
            logger.info(message)
        stamp = now_stamp()
        write_status(api, owner, RECONCILE,
                     lambda fresh: invalid_status(message, fresh, stamp, generation), body)
        return "invalid"
    dep, version, conflicts = reconcile_children(api, owner, spec, body, logger,
                                                 manage_monitors, monitor_labels, old, reads)
    messages = [str(c) for c in conflicts]
    for message in messages:
        if message not in _reported_conflicts(old):
            kopf.warn(body, reason="NameConflict", message=message)
            logger.warning(message)
    holder = route_holder(body, route_claims)
    if holder and not _route_conflict_reported(old):
        message = (f"served model name {served_model(name, spec)!r} is held by {holder}: "
                   f"the gateway routes it there")
        kopf.warn(body, reason="RouteConflict", message=message)
        logger.warning(message)
    stamp = now_stamp()
    write_status(api, owner, RECONCILE,
                 lambda fresh: running_status(spec, owner, dep, version, fresh, stamp, generation,
                                              messages, holder),
                 body)
    return "ok"


def route_holder(body: Mapping[str, Any], claims: Iterable[Mapping[str, Any]] | None
                 ) -> str | None:
    """`namespace/name` of the earlier SpecServeDeployment of another namespace that holds
    `body`'s served model name (`specserve_contract.claims`, the gateway's rule), else None."""
    if claims is None:
        return None
    own = claim_record(body)
    key = (own["metadata"].get("namespace"), own["metadata"].get("name"))
    others = [c for c in claims
              if ((c.get("metadata") or {}).get("namespace"),
                  (c.get("metadata") or {}).get("name")) != key]
    found = conflict_for([*others, own], *key)
    return found.holder if found else None


def _route_conflict_reported(status: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "RouteConflict" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def _reported_conflicts(status: Mapping[str, Any]) -> str:
    """The NameConflict message already in .status (a Warning event is posted once per
    conflict, not on every pass)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == "NameConflict" and cond.get("status") == "True":
            return str(cond.get("message") or "")
    return ""
