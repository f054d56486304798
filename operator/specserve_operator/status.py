"""Pure functions: observed children -> the SpecServeDeployment's .status.

Conditions follow the Kubernetes convention (type/status/reason/message/lastTransitionTime):
    Ready          every desired engine pod is ready (or zero are desired)
    Progressing    pods are being created, started or rolled out
    Degraded       the Deployment failed to progress, or the spec is invalid
    SLOMet         the last SLO snapshot meets the targets (Unknown until measured)
    PolicyApplied  every ready pod acknowledged the current policy version
    NoData         the SLO loop has no data for the resource (True, with the cause as reason:
                   prometheus.NO_DATA_REASONS); False once a snapshot is ok
    NameConflict   a child's name is taken by an object this resource does not control (the
                   operator leaves that object alone: the message names it and its owner)
    RouteConflict  the served model name is held by an earlier SpecServeDeployment of another
                   namespace (`specserve_contract.claims`, the gateway's rule): the gateway
                   routes the bare name there, this resource only as `namespace/model`
lastTransitionTime changes only when a condition's status changes.

Who writes which key (one writer per key and per condition type; see `Writer`):

    reconcile (status timer, create/update/resume)   phase, message, observedGeneration,
                                                     replicas, selector, k, slo;
                                                     Ready, Degraded, Progressing,
                                                     NameConflict, RouteConflict
    SLO loop (SLO timer)                             sloSnapshot, tuning, autoscale, policy;
                                                     SLOMet, PolicyApplied, NoData

Every status this module returns is built through the pydantic status models of `spec.py` (the
models the CRD's status schema is generated from), so what the operator writes and what the CRD
declares have one source. They come back as camelCase dicts (what kopf patches), holding exactly
the keys that were set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from specserve_operator.names import Owner, configmap_name, selector_string, served_model
from specserve_operator.prometheus import SloSnapshot
from specserve_operator.spec import (
    CONDITION_TYPES,
    Condition,
    SloSnapshotStatus,
    SpecServeDeploymentSpec,
    SpecServeDeploymentStatus,
)

ROUTE_CONFLICT_REASON = "ServedNameTaken"


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, exclude_unset=True)


def status_dict(**fields: Any) -> dict[str, Any]:
    """Top-level status fields (snake_case names, values as models or camelCase dicts), checked
    against SpecServeDeploymentStatus; returns the camelCase dict of the fields given."""
    return _dump(SpecServeDeploymentStatus(**fields))


# ---------------------------------------------------------------------- printer columns


def k_summary(spec: SpecServeDeploymentSpec) -> str:
    """Printer column K: `adaptive<=5`, `static 3` or `off`."""
    sp = spec.speculation
    if sp.mode == "off":
        return "off"
    if sp.mode == "static":
        return f"static {sp.static_k}"
    return f"adaptive<={sp.k_max}"


def slo_summary(spec: SpecServeDeploymentSpec, attainment: float | None = None) -> str:
    """Printer column SLO: the TPOT target and, once measured, the attainment."""
    target = f"tpot<={spec.slo.tpot_p90_ms}ms"
    if attainment is None:
        return target
    return f"{target} {attainment:.0%}/{spec.slo.attainment:.0%}"


# ------------------------------------------------------------------------------ conditions


def condition(type_: str, status: bool | None, reason: str, message: str) -> dict[str, Any]:
    value = "Unknown" if status is None else ("True" if status else "False")
    return _dump(Condition(type=type_, status=value, reason=reason, message=message))


def merge_conditions(
    old: list[dict[str, Any]] | None,
    new: list[dict[str, Any]],
    now: str,
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """New conditions, keeping each one's lastTransitionTime while its status is unchanged.

    Types absent from `new` are kept as they were; the result is in a fixed order.
    """
    by_type = {c.get("type"): c for c in old or []}
    merged = dict(by_type)
    for cond in new:
        prev = by_type.get(cond["type"])
        unchanged = prev is not None and prev.get("status") == cond["status"]
        out = dict(cond)
        out["lastTransitionTime"] = prev.get("lastTransitionTime") if unchanged else now
        if unchanged and not out["lastTransitionTime"]:
            out["lastTransitionTime"] = now
        if generation is not None:
            out["observedGeneration"] = generation
        merged[cond["type"]] = out
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(merged.values(), key=lambda c: order.get(c.get("type"), len(order)))


def _deployment_condition(dep: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    for cond in ((dep or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return {}


def running_status(
    spec: SpecServeDeploymentSpec,
    owner: Owner,
    deployment: dict[str, Any] | None,
    policy_version: int,
    old: dict[str, Any] | None,
    now: str,
    generation: int | None = None,
    conflicts: list[str] | None = None,
    route_holder: str | None = None,
) -> dict[str, Any]:
    """The full status of a valid resource given its Deployment as last read (None: not there,
    or not this resource's), the NameConflict messages of the children (`conflicts`) and the
    `namespace/name` of the earlier resource of another namespace that holds its served model
    name (`route_holder`, from `specserve_contract.claims.conflict_for`; None: it holds it)."""
    old = old or {}
    dep_status = (deployment or {}).get("status") or {}
    desired = int(((deployment or {}).get("spec") or {}).get("replicas", spec.replicas.initial))
    current = int(dep_status.get("replicas") or 0)
    ready = int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)

    progress = _deployment_condition(deployment, "Progressing")
    failure = _deployment_condition(deployment, "ReplicaFailure")
    stuck = progress.get("reason") == "ProgressDeadlineExceeded"
    failing = failure.get("status") == "True"
    is_ready = ready >= desired
    rolling = not is_ready or updated < desired or current > desired

    pods = f"{ready}/{desired} engine pods ready"
    conds = [
        condition("Ready", is_ready, "AllPodsReady" if is_ready else "PodsNotReady", pods),
    ]
    if stuck or failing:
        why = progress.get("message") if stuck else failure.get("message")
        conds.append(condition("Degraded", True, "DeploymentFailing", why or pods))
    else:
        conds.append(condition("Degraded", False, "AsExpected", pods))
    if rolling and not (stuck or failing):
        conds.append(condition("Progressing", True, "RollingOut", pods))
    else:
        conds.append(condition("Progressing", False, "Stable" if is_ready else "Stalled", pods))

    # Policy acknowledgements count for the current version only.
    old_policy = old.get("policy") or {}
    applied = int(old_policy.get("appliedPods") or 0)
    # (the SLO loop's push details are kept while the version is the same)
    policy_status = {**old_policy, "version": policy_version, "appliedPods": applied}
    if old_policy.get("version") != policy_version:
        applied = 0
        policy_status = {"version": policy_version, "appliedPods": 0}
    conds.append(policy_condition(policy_version, applied, ready, configmap_name(owner)))

    snapshot = old.get("sloSnapshot") or {}
    attainment = snapshot.get("attainment")
    conds.append(slo_condition(spec, snapshot))
    conds.append(no_data_condition(snapshot))

    if stuck or failing:
        phase = "Degraded"
    elif is_ready:
        phase = "Running"
    else:
        phase = "Progressing"
    message = pods
    if conflicts:
        message = "; ".join(conflicts)
        phase = "Degraded"
        conds = [c for c in conds if c["type"] not in ("Degraded", "Progressing")]
        conds.append(condition("Degraded", True, "NameConflict", message))
        conds.append(condition("Progressing", False, "NameConflict", message))
        conds.append(condition("NameConflict", True, "NameTaken", message))
    else:
        conds.append(condition("NameConflict", False, "NoConflict",
                               "every child's name is free or this resource's"))
    conds.append(route_condition(served_model(owner.name, spec), owner.namespace, route_holder))
    return status_dict(
        phase=phase,
        message=message,
        conditions=merge_conditions(old.get("conditions"), conds, now, generation),
        observed_generation=generation,
        replicas={"desired": desired, "current": current, "ready": ready},
        selector=selector_string(owner),
        policy=policy_status,
        k=k_summary(spec),
        slo=slo_summary(spec, attainment),
    )


def route_condition(model: str, namespace: str, holder: str | None) -> dict[str, Any]:
    """RouteConflict: True (ServedNameTaken) when `holder`, an earlier SpecServeDeployment of
    another namespace, holds the served model name `model` in the gateway."""
    if holder:
        return condition(
            "RouteConflict", True, ROUTE_CONFLICT_REASON,
            f"served model name {model!r} is held by {holder} (claimed earlier): the gateway "
            f"routes {model!r} there; this resource is served as {namespace}/{model}")
    return condition("RouteConflict", False, "ServedNameHeld",
                     f"this namespace holds the served model name {model!r}")


def slo_condition(spec: SpecServeDeploymentSpec, snapshot: dict[str, Any] | None
                  ) -> dict[str, Any]:
    """SLOMet from the last snapshot in .status; missing data is Unknown, never True."""
    snapshot = snapshot or {}
    state, attainment = snapshot.get("state"), snapshot.get("attainment")
    if state == "error":
        return condition("SLOMet", None, "PrometheusUnavailable",
                         snapshot.get("reason") or "Prometheus did not answer")
    if state == "noData":
        return condition("SLOMet", None, "NoData", snapshot.get("reason") or "metrics missing")
    if attainment is None:
        return condition("SLOMet", None, "NoMeasurement",
                         "no SLO snapshot yet" if not state else "no requests in the window")
    met = attainment >= spec.slo.attainment
    return condition(
        "SLOMet", met, "TargetsMet" if met else "TargetsMissed",
        f"{attainment:.1%} of requests met the targets (target {spec.slo.attainment:.0%})",
    )


def no_data_condition(snapshot: dict[str, Any] | None) -> dict[str, Any]:
    """NoData from the last snapshot in .status: True with the cause (prometheus.NoDataReason)
    as reason while the SLO loop has no data; False when the last snapshot is ok."""
    snapshot = snapshot or {}
    state = snapshot.get("state")
    if not state:
        return condition("NoData", None, "NotMeasured", "no SLO snapshot yet")
    if state == "ok":
        return condition("NoData", False, "DataPresent",
                         f"{snapshot.get('podsScraped') or 0} targets scraped")
    reason = snapshot.get("noDataReason") or ("QueryError" if state == "error" else "EmptySeries")
    if reason == "ScaledToZero":  # no pods on purpose: no engine metrics is not a fault
        return condition("NoData", False, reason, snapshot.get("reason") or "scaled to zero")
    return condition("NoData", True, reason, snapshot.get("reason") or "metrics missing")


def policy_condition(version: int, applied: int, ready: int, configmap: str) -> dict[str, Any]:
    """PolicyApplied: every ready pod acknowledged the current version."""
    if ready and applied >= ready:
        return condition("PolicyApplied", True, "Acknowledged",
                         f"policy v{version} acknowledged by {applied} pods")
    return condition(
        "PolicyApplied", None if ready else False, "AwaitingAcknowledgement",
        f"policy v{version} is in ConfigMap {configmap}; "
        f"{applied}/{ready} ready pods acknowledged it",
    )


def invalid_status(
    message: str, old: dict[str, Any] | None, now: str, generation: int | None = None
) -> dict[str, Any]:
    """Status of a resource whose spec the operator refuses; the children are left as they are."""
    old = old or {}
    conds = [
        condition("Ready", False, "InvalidSpec", message),
        condition("Degraded", True, "InvalidSpec", message),
        condition("Progressing", False, "InvalidSpec", "fix the spec to continue"),
    ]
    return status_dict(
        phase="Invalid",
        message=message,
        conditions=merge_conditions(old.get("conditions"), conds, now, generation),
        observed_generation=generation,
    )


# ------------------------------------------------------------------------------ the SLO loop


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def _round(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)


def snapshot_status(snap: SloSnapshot, now: str) -> dict[str, Any]:
    """.status.sloSnapshot of one measurement (every field present, None where unmeasured)."""
    return _dump(SloSnapshotStatus(
        state=snap.state, reason="; ".join(snap.reasons) or None, time=now,
        no_data_reason=snap.no_data_reason, targets=snap.targets,
        ttft_p50_ms=_ms(snap.ttft_p50_s), ttft_p90_ms=_ms(snap.ttft_p90_s),
        ttft_p99_ms=_ms(snap.ttft_p99_s), tpot_p50_ms=_ms(snap.tpot_p50_s),
        tpot_p90_ms=_ms(snap.tpot_p90_s), tpot_p99_ms=_ms(snap.tpot_p99_s),
        attainment=_round(snap.attainment, 4),
        request_rate=_round(snap.request_rate, 4),
        acceptance_rate=_round(snap.acceptance_rate, 4),
        step_predicted_ms=_ms(snap.step_predicted_mean_s),
        step_observed_ms=_ms(snap.step_observed_mean_s),
        pods_scraped=snap.pods_scraped,
    ))


def loop_failed_status(old: dict[str, Any] | None, exc: BaseException, now: str
                       ) -> dict[str, Any]:
    """An SLO pass that raised: the last snapshot, marked as an error saying why."""
    snap = {**((old or {}).get("sloSnapshot") or {}), "state": "error",
            "reason": f"SLO loop failed: {type(exc).__name__}: {exc}"[:4000], "time": now,
            "noDataReason": None}
    return status_dict(slo_snapshot=snap)


# ------------------------------------------------------------------------ who writes what


@dataclass(frozen=True)
class Writer:
    """One writer of .status: the top-level keys and the condition types it owns.

    Two writers run concurrently per resource (the status timer and the SLO loop), each from its
    own, possibly stale, view. So each one writes only what it owns, merged into a fresh read
    (`owned_patch`), under a resourceVersion precondition (`reconcile.write_status`). A key or
    condition type that the other writer owns is written only while it is missing (so a new
    resource shows every column and condition at once); once present, only its owner changes
    it.
    """

    name: str
    keys: frozenset[str]
    conditions: frozenset[str]


# reconcile.reconcile (create/update/resume handler and the status timer): what the children
# say, and the summaries of the spec.
RECONCILE = Writer(
    "reconcile",
    frozenset({"phase", "message", "observedGeneration", "replicas", "selector", "k", "slo"}),
    frozenset({"Ready", "Degraded", "Progressing", "NameConflict", "RouteConflict"}),
)
# slo_loop.slo_iteration (the SLO timer): what it measured, decided and pushed.
SLO_LOOP = Writer(
    "slo-loop",
    frozenset({"sloSnapshot", "tuning", "autoscale", "policy"}),
    frozenset({"SLOMet", "PolicyApplied", "NoData"}),
)
WRITERS = (RECONCILE, SLO_LOOP)


def _merge_owned_conditions(fresh: list[dict[str, Any]] | None, new: list[dict[str, Any]],
                            owned: frozenset[str]) -> list[dict[str, Any]]:
    """`fresh` with the owned types replaced by `new`'s (a merge keyed by type); a type owned by
    the other writer comes from `new` only while `fresh` lacks it. A condition keeps the
    lastTransitionTime of the fresh one while its status is the same."""
    merged = {c.get("type"): c for c in fresh or []}
    for cond in new:
        type_ = cond.get("type")
        prev = merged.get(type_)
        if type_ not in owned and prev is not None:
            continue
        out = dict(cond)
        if prev is not None and prev.get("status") == cond.get("status") and prev.get(
                "lastTransitionTime"):
            out["lastTransitionTime"] = prev["lastTransitionTime"]
        merged[type_] = out
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    return sorted(merged.values(), key=lambda c: order.get(c.get("type"), len(order)))


def owned_patch(writer: Writer, fresh: dict[str, Any] | None, new: dict[str, Any]
                ) -> dict[str, Any]:
    """The status merge patch `writer` sends, given the status as just read: its own keys that
    differ, the other writer's keys only where they are missing, conditions merged by type."""
    fresh = fresh or {}
    out: dict[str, Any] = {}
    for key, value in new.items():
        if key == "conditions":
            merged = _merge_owned_conditions(fresh.get("conditions"), value, writer.conditions)
            if merged != (fresh.get("conditions") or []):
                out[key] = merged
        elif key in writer.keys or key not in fresh:
            if fresh.get(key) != value:
                out[key] = value
    return out
