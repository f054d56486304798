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

import asyncio
import base64
import datetime
import json
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from specserve_contract import (
    API_VERSION,
    ENV_PROMETHEUS_URL,
    ENV_SLO_INTERVAL_S,
    ENV_SLO_WINDOW,
    ENV_STATUS_INTERVAL_S,
    FINALIZER,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
)
from specserve_engine.policy.params import Policy
from specserve_operator import autoscale as sc
from specserve_operator import manifests as m
from specserve_operator import push as ps
from specserve_operator import spec as s
from specserve_operator import status as st
from specserve_operator import tuning as tn
from specserve_operator.kube import Kube, KubeError
from specserve_operator.prometheus import PrometheusClient, SloSnapshot

# How often the timer refreshes .status from the Deployment and repairs drift.
STATUS_INTERVAL_S = float(os.environ.get(ENV_STATUS_INTERVAL_S, "15"))
# How often the SLO loop runs (Prometheus -> tuning -> push -> autoscale), per resource.
SLO_INTERVAL_S = float(os.environ.get(ENV_SLO_INTERVAL_S, "30"))
SERVICEMONITOR_API = m.SERVICEMONITOR_API


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
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
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


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_change(**kwargs: Any) -> None:
    reconcile(**_reconcile_kwargs(kwargs))


@kopf.timer(GROUP, VERSION, PLURAL, interval=STATUS_INTERVAL_S, idle=STATUS_INTERVAL_S)
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


@kopf.on.delete(GROUP, VERSION, PLURAL)
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


# ------------------------------------------------------------------------------ the SLO loop


@dataclass
class LoopConfig:
    """Operator-wide settings of the SLO loop (env at startup; tests set fields in-process)."""

    prometheus_url: str | None = field(
        default_factory=lambda: os.environ.get(ENV_PROMETHEUS_URL) or None)
    window: str = field(default_factory=lambda: os.environ.get(ENV_SLO_WINDOW, "2m"))
    prometheus_timeout_s: float = 5.0
    push_timeout_s: float = 5.0
    retries: int = 2
    address: ps.AddressResolver = ps.pod_ip_address
    tuning: tn.TuningConfig = field(
        default_factory=lambda: tn.TuningConfig(cooldown_s=2 * SLO_INTERVAL_S))
    autoscale: sc.AutoscaleConfig = field(default_factory=sc.AutoscaleConfig)


LOOP = LoopConfig()
log = logging.getLogger("specserve.slo")


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1e3, 3)


def snapshot_status(snap: SloSnapshot, now: str) -> dict[str, Any]:
    att = snap.attainment
    out = {
        "state": snap.state, "reason": "; ".join(snap.reasons) or None, "time": now,
        "ttftP50Ms": _ms(snap.ttft_p50_s), "ttftP90Ms": _ms(snap.ttft_p90_s),
        "ttftP99Ms": _ms(snap.ttft_p99_s), "tpotP50Ms": _ms(snap.tpot_p50_s),
        "tpotP90Ms": _ms(snap.tpot_p90_s), "tpotP99Ms": _ms(snap.tpot_p99_s),
        "attainment": None if att is None else round(att, 4),
        "requestRate": None if snap.request_rate is None else round(snap.request_rate, 4),
        "acceptanceRate": (None if snap.acceptance_rate is None
                           else round(snap.acceptance_rate, 4)),
        "stepPredictedMs": _ms(snap.step_predicted_mean_s),
        "stepObservedMs": _ms(snap.step_observed_mean_s),
        "podsScraped": snap.pods_scraped,
    }
    return out


async def _call(fn: Any, *args: Any) -> Any:
    """The Kubernetes client is synchronous: keep it off the operator's event loop."""
    return await asyncio.to_thread(fn, *args)


async def _write_policy(api: Kube, owner: m.Owner, policy: Policy) -> None:
    body = {"data": {m.POLICY_KEY: m.policy_json(policy.model_dump(mode="json"))}}
    await _call(api.patch, "v1", "ConfigMap", owner.namespace, m.configmap_name(owner), body)


async def _ready_targets(api: Kube, owner: m.Owner) -> list[ps.PodTarget]:
    listing = await _call(api.request, "GET",
                          ps.pods_path(owner.namespace, m.selector_labels(owner)))
    pods = ps.ready_pods((listing or {}).get("items") or [], m.selector_labels(owner))
    return [ps.PodTarget(p["metadata"]["name"], LOOP.address(p)) for p in pods]


async def _push(api: Kube, owner: m.Owner, policy: Policy) -> tuple[ps.PushResult, int]:
    """Push to every ready pod: (result, ready pod count)."""
    secret = await _call(api.get, "v1", "Secret", owner.namespace, m.secret_name(owner))
    token_b64 = ((secret or {}).get("data") or {}).get(m.TOKEN_KEY)
    targets = await _ready_targets(api, owner)
    if not token_b64:
        acks = [ps.PodAck(pod=t.name, acknowledged=False, error="no control token Secret")
                for t in targets]
        return ps.PushResult(version=policy.version, acks=acks), len(targets)
    token = base64.b64decode(token_b64).decode()
    doc = policy.model_dump(mode="json")
    result = await ps.push_policy(targets, doc, token, LOOP.push_timeout_s, LOOP.retries)
    return result, len(targets)


async def slo_iteration(
    api: Kube, owner: m.Owner, spec: s.SpecServeDeploymentSpec, body: Any,
    old: dict[str, Any], logger: Any,
) -> dict[str, Any]:
    """One pass: snapshot -> tuning decision -> ConfigMap + push -> autoscale; the .status keys.

    Prometheus failing, pods failing to ack or a scale patch failing are reported in .status and
    never raise; the policy stays the last good one and the replica count stays.
    """
    now, stamp = time.time(), _now()
    cm = await _call(api.get, "v1", "ConfigMap", owner.namespace, m.configmap_name(owner))
    stored = m.parse_policy(cm)
    if stored is None:
        return {}  # the reconcile handler creates the ConfigMap first
    policy = Policy.model_validate(stored)

    # 1. snapshot
    url = spec.metrics.prometheus_url or LOOP.prometheus_url
    tpot_s, ttft_s = spec.slo.tpot_p90_ms / 1e3, spec.slo.ttft_p90_ms / 1e3
    if url is None:
        snap = SloSnapshot(namespace=owner.namespace, name=owner.name, time=now,
                           window=LOOP.window, state="noData",
                           reasons=["no Prometheus URL: set spec.metrics.prometheusUrl or "
                                    + ENV_PROMETHEUS_URL])
    else:
        client = PrometheusClient(url, LOOP.prometheus_timeout_s, LOOP.retries)
        snap = await client.snapshot(owner.namespace, owner.name, LOOP.window, now, tpot_s,
                                     ttft_s)

    # 2. tuning decision
    told = old.get("tuning") or {}
    tstate = tn.TuningState(over=told.get("over", 0), under=told.get("under", 0),
                            last_change=told.get("lastChange"))
    # The model the pods run (profile + online fits) is what a timing refit scales.
    measured = await ps.fetch_model(await _ready_targets(api, owner), LOOP.push_timeout_s)
    decision = tn.decide(snap, policy, tstate, now, LOOP.tuning, measured=measured)
    policy = decision.policy
    if decision.changed:
        await _write_policy(api, owner, policy)  # ConfigMap first: new pods start with it
        kopf.event(body, type="Normal", reason="PolicyTuned",
                   message=decision.summary[:1000])

    # 3. push to every ready pod (idempotent for pods that already run this version)
    result, ready = await _push(api, owner, policy)
    higher = result.highest_pod_version
    if higher is not None and higher >= policy.version:
        # A pod runs a newer version than the ConfigMap (e.g. the ConfigMap was recreated):
        # re-version above it so every pod converges on the operator's policy.
        policy = policy.model_copy(update={"version": higher + 1})
        await _write_policy(api, owner, policy)
        result, ready = await _push(api, owner, policy)

    # 4. autoscale
    dep = await _call(api.get, "apps/v1", "Deployment", owner.namespace,
                      m.deployment_name(owner))
    current = int(((dep or {}).get("spec") or {}).get("replicas", spec.replicas.initial))
    aold = old.get("autoscale") or {}
    history = [sc.Recommendation(time=r["time"], replicas=r["replicas"])
               for r in aold.get("recommendations") or []]
    out_tokens = snap.output_tokens_per_request or LOOP.autoscale.default_output_tokens
    prompt = snap.prompt_tokens_per_request or LOOP.autoscale.default_prompt_tokens
    capacity = sc.capacity_per_replica(policy, snap.acceptance_rate, out_tokens,
                                       prompt + out_tokens / 2, LOOP.autoscale.max_batch)
    scale = sc.decide(snap, current, spec.replicas.min, spec.replicas.max, capacity,
                      spec.slo.attainment, history, now, LOOP.autoscale)
    if scale.changed:
        # What `kubectl scale ssd/NAME` does through the scale subresource (specReplicasPath
        # .spec.replicas.initial); the update handler then patches the Deployment.
        await _call(api.patch, API_VERSION, KIND, owner.namespace, owner.name,
                    {"spec": {"replicas": {"initial": scale.desired}}})
        kopf.event(body, type="Normal", reason="Scaled",
                   message=f"replicas {scale.current} -> {scale.desired}: {scale.reason}"[:1000])

    record = {
        "deployment": f"{owner.namespace}/{owner.name}",
        "snapshot": snap.model_dump(exclude={"namespace", "name"}, exclude_none=True),
        "decision": {"version": policy.version, "changed": decision.changed,
                     "reasons": decision.reasons, "tpot_headroom": policy.tpot_headroom,
                     "confidence_floor": policy.confidence_floor},
        "push": {"version": result.version, "acknowledged": result.acknowledged,
                 "failed": [a.model_dump(exclude_none=True) for a in result.failed]},
        "scale": {"current": scale.current, "desired": scale.desired, "reason": scale.reason},
    }
    logger.info("slo loop: " + json.dumps(record, sort_keys=True))

    snap_status = snapshot_status(snap, stamp)
    applied = len(result.acknowledged)
    conds = [st.slo_condition(spec, snap_status),
             st.policy_condition(policy.version, applied, ready, m.configmap_name(owner))]
    return {
        "sloSnapshot": snap_status,
        "slo": m.slo_summary(spec, snap_status["attainment"]),
        "tuning": {"over": decision.state.over, "under": decision.state.under,
                   "lastChange": decision.state.last_change,
                   "decision": decision.summary[:4000], "time": stamp},
        "policy": {"version": policy.version, "appliedPods": applied,
                   "failedPods": len(result.failed), "message": result.describe()[:4000],
                   "pushedAt": stamp},
        "autoscale": {"desired": scale.desired, "raw": scale.raw, "reason": scale.reason[:4000],
                      "time": stamp,
                      "recommendations": [r.model_dump() for r in scale.history]},
        "conditions": st.merge_conditions(old.get("conditions"), conds, stamp),
    }


@kopf.timer(GROUP, VERSION, PLURAL, interval=SLO_INTERVAL_S)
async def slo_loop(body: Any, status: Any, namespace: str, name: str, uid: str, patch: Any,
                   logger: Any, **_: Any) -> None:
    """The SLO control loop of one resource (kopf runs one timer task per resource, so a slow
    or failing deployment never holds up the others)."""
    old = dict(status or {})
    if old.get("phase") in (None, "Invalid"):
        return  # not reconciled yet, or a spec we refuse: nothing to measure or push
    try:
        spec = s.parse_spec(body.get("spec"))
    except s.SpecError:
        return
    owner = m.Owner(name=name, namespace=namespace, uid=uid)
    try:
        new = await slo_iteration(kube(), owner, spec, body, old, logger)
    except Exception as exc:  # report and go on: the next pass retries
        logger.exception(f"slo loop failed: {exc}")
        snap = {**(old.get("sloSnapshot") or {}), "state": "error",
                "reason": f"SLO loop failed: {type(exc).__name__}: {exc}"[:4000], "time": _now()}
        new = {"sloSnapshot": snap}
    _write_status(patch, old, new)
