"""The SLO loop of one resource: snapshot -> tuning decision -> ConfigMap + push -> autoscale.

Each step is a function of its inputs (the API client, the resource, the loop settings and what
the previous step produced), so it can be read and tested alone; `slo_iteration` runs them in
order, posts the events and returns the .status keys. Prometheus failing or pods failing to ack
are reported in .status and never raise; the policy stays the last good one and the replica
count stays.

Replicas (spec.autoscaling.mode): the decision goes to .status.autoscale and to the metric
specserve_operator_desired_replicas in every mode; only in builtin mode does the operator act
on it, by scaling the Deployment (`apply_scale`, once the status holding the decision is
written: reconcile reads it there). The spec is never written: it belongs to the user (and to
GitOps tools, and, in external mode, to the HPA or KEDA through the scale subresource).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf

from specserve_contract import (
    ENV_PROMETHEUS_ALLOWED_URLS,
    ENV_PROMETHEUS_CA_FILE,
    ENV_PROMETHEUS_TOKEN_FILE,
    ENV_PROMETHEUS_URL,
    POLICY_KEY,
    TOKEN_KEY,
)
from specserve_engine.policy.params import ModelParams, Policy
from specserve_operator import metrics
from specserve_operator.autoscale import (
    Recommendation,
    ScaleDecision,
    capacity_per_replica,
    decide_zero,
)
from specserve_operator.autoscale import decide as decide_replicas
from specserve_operator.children import Children
from specserve_operator.config import LoopConfig
from specserve_operator.kube_client import (
    CONFLICT,
    CONFLICT_ATTEMPTS,
    KubeClient,
    KubeError,
    precondition,
)
from specserve_operator.manifests import deployment_replicas, parse_policy, policy_json
from specserve_operator.names import (
    Owner,
    configmap_name,
    deployment_name,
    owned_by,
    secret_name,
    selector_labels,
    served_model,
)
from specserve_operator.prometheus import (
    GroupedSnapshots,
    NoDataReason,
    PrometheusClient,
    SloSnapshot,
    url_allowed,
)
from specserve_operator.push import (
    PodAck,
    PodTarget,
    PushResult,
    fetch_model,
    pods_path,
    push_policy,
    ready_pods,
)
from specserve_operator.spec import SecretKeyRef, SpecServeDeploymentSpec
from specserve_operator.status import (
    merge_conditions,
    no_data_condition,
    policy_condition,
    slo_condition,
    slo_summary,
    snapshot_status,
    status_dict,
)
from specserve_operator.tuning import TuningDecision, TuningState
from specserve_operator.tuning import decide as decide_tuning


async def _call(fn: Any, *args: Any) -> Any:
    """The Kubernetes client is synchronous: keep it off the operator's event loop."""
    return await asyncio.to_thread(fn, *args)


# ------------------------------------------------------------------------------ API helpers


async def read_policy(api: KubeClient, owner: Owner,
                      reads: Children | None = None) -> Policy | None:
    """The policy in the ConfigMap, or None before the reconcile handler has created it.
    `reads`: the children indexes of the timer (every write still reads it again first)."""
    get = (reads or Children(api)).get
    cm = await _call(get, "v1", "ConfigMap", owner.namespace, configmap_name(owner))
    stored = parse_policy(cm) if owned_by(cm, owner) else None  # another's: NameConflict
    return None if stored is None else Policy.model_validate(stored)


# The fields of the policy document the SLO loop owns (the spec's fields, SPEC_POLICY_FIELDS,
# belong to reconcile; `version` is a counter both advance, under the same precondition).
TUNED_FIELDS = ("tpot_headroom", "confidence_floor", "model")


def update_policy_sync(api: KubeClient, owner: Owner,
                       change: Callable[[Policy], Policy | None]) -> Policy | None:
    """Read-modify-write of the policy ConfigMap: `change` gets the policy as stored now and
    returns the one to store (None: leave it). The write names the resourceVersion it read; a
    409 Conflict (reconcile wrote a spec change meanwhile) runs `change` again on a fresh read.
    Returns the policy stored, None when there is no ConfigMap (yet)."""
    name = configmap_name(owner)
    for attempt in range(CONFLICT_ATTEMPTS):
        cm = api.get("v1", "ConfigMap", owner.namespace, name)
        stored = parse_policy(cm) if owned_by(cm, owner) else None  # another's: never written
        if stored is None:
            return None
        current = Policy.model_validate(stored)
        new = change(current)
        if new is None:
            return current
        body = {"data": {POLICY_KEY: policy_json(new.model_dump(mode="json"))}}
        try:
            api.patch("v1", "ConfigMap", owner.namespace, name, precondition(body, cm))
            return new
        except KubeError as exc:
            if exc.status != CONFLICT or attempt == CONFLICT_ATTEMPTS - 1:
                raise
    return None


async def update_policy(api: KubeClient, owner: Owner,
                        change: Callable[[Policy], Policy | None]) -> Policy | None:
    return await _call(update_policy_sync, api, owner, change)


def tuned_onto(tuned: Policy) -> Callable[[Policy], Policy | None]:
    """`change` for update_policy: the tuned fields of `tuned` onto the stored policy, one
    version above it; the spec's fields stay as stored."""
    def change(stored: Policy) -> Policy | None:
        update = {f: getattr(tuned, f) for f in TUNED_FIELDS if getattr(stored, f) != getattr(
            tuned, f)}
        if not update:
            return None
        merged = stored.model_dump(mode="python") | update | {"version": stored.version + 1}
        return Policy.model_validate(merged)
    return change


def versioned_above(version: int) -> Callable[[Policy], Policy | None]:
    """`change` for update_policy: the stored policy, re-versioned above `version`."""
    def change(stored: Policy) -> Policy | None:
        if stored.version > version:
            return None
        return stored.model_copy(update={"version": version + 1})
    return change


async def ready_targets(api: KubeClient, owner: Owner, cfg: LoopConfig,
                        reads: Children | None = None) -> list[PodTarget]:
    """The ready engine pods: from the pod index of `reads` (the timer's), else a LIST. The
    index is read as is unless it lags the Deployment (fewer ready pods than its
    readyReplicas, e.g. a pod that just became Ready): then a LIST."""
    labels = selector_labels(owner)
    indexed = None if reads is None else reads.pods(owner.namespace, owner.name)
    pods = None
    if reads is not None and indexed is not None:
        pods = ready_pods(indexed, labels)
        dep = await _call(reads.get, "apps/v1", "Deployment", owner.namespace,
                          deployment_name(owner))
        ready = ((dep or {}).get("status") or {}).get("readyReplicas") or 0
        if len(pods) < ready and owned_by(dep, owner):
            pods = None  # the index has not seen them yet
    if pods is None:
        listing = await _call(api.request, "GET", pods_path(owner.namespace, labels))
        pods = ready_pods((listing or {}).get("items") or [], labels)
    return [PodTarget(p["metadata"]["name"], cfg.address(p)) for p in pods]


# ------------------------------------------------------------------------------ the steps


class NoAccess(Exception):
    """Prometheus is not to be (or cannot be) queried: `reason` is a NoDataReason."""

    def __init__(self, reason: NoDataReason, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def _secret_value(api: KubeClient | None, namespace: str, ref: SecretKeyRef, what: str) -> str:
    secret = None if api is None else api.get("v1", "Secret", namespace, ref.name)
    value = ((secret or {}).get("data") or {}).get(ref.key)
    if not value:
        raise NoAccess("CredentialsUnavailable",
                       f"{what}: Secret {namespace}/{ref.name} has no key {ref.key!r}"
                       if secret else f"{what}: Secret {namespace}/{ref.name} not found")
    return base64.b64decode(value).decode().strip()


def _file(path: str, what: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise NoAccess("CredentialsUnavailable", f"{what}: {exc}") from None


def prometheus_client(api: KubeClient | None, owner: Owner, spec: SpecServeDeploymentSpec,
                      cfg: LoopConfig) -> PrometheusClient:
    """The client for this resource's Prometheus, or NoAccess. A URL named in the spec must be
    the operator's default or on its allow-list (else it is never queried: a spec could
    otherwise make the operator send requests anywhere its network reaches). Credentials: the
    spec's Secrets (in the resource's namespace); the operator's own token and CA files only
    for its default URL."""
    m = spec.metrics
    url = m.prometheus_url or cfg.prometheus_url
    if url is None:
        raise NoAccess("NoPrometheusUrl", "no Prometheus URL: set spec.metrics.prometheusUrl or "
                       + ENV_PROMETHEUS_URL)
    is_default = cfg.prometheus_url is not None and url.rstrip("/") == cfg.prometheus_url.rstrip(
        "/")
    if not is_default and not url_allowed(url, cfg.allowed_urls, cfg.prometheus_url):
        raise NoAccess("PrometheusUrlNotAllowed",
                       f"spec.metrics.prometheusUrl {url} is not allowed by the operator "
                       f"({ENV_PROMETHEUS_ALLOWED_URLS}: {','.join(cfg.allowed_urls) or 'none'}; "
                       "the chart's operator.prometheus.allowedUrls): not queried")
    ns = owner.namespace
    token = ca = None
    if m.bearer_token_secret is not None:
        token = _secret_value(api, ns, m.bearer_token_secret, "spec.metrics.bearerTokenSecret")
    elif is_default and cfg.token_file:
        token = _file(cfg.token_file, ENV_PROMETHEUS_TOKEN_FILE)
    if m.ca_secret is not None:
        ca = _secret_value(api, ns, m.ca_secret, "spec.metrics.caSecret")
    elif is_default and cfg.ca_file:
        ca = _file(cfg.ca_file, ENV_PROMETHEUS_CA_FILE)
    if ca is not None:
        try:
            ssl.create_default_context(cadata=ca)
        except (ssl.SSLError, ValueError) as exc:
            raise NoAccess("CredentialsUnavailable", f"the CA bundle is not PEM: {exc}") from None
    return PrometheusClient(url, cfg.prometheus_timeout_s, cfg.retries, token=token, ca_pem=ca)


async def take_snapshot(owner: Owner, spec: SpecServeDeploymentSpec, cfg: LoopConfig,
                        now: float, api: KubeClient | None = None,
                        snapshots: GroupedSnapshots | None = None) -> SloSnapshot:
    """1. What Prometheus says about this resource's SLOs over the window. `snapshots`: read
    it out of the grouped queries every resource's pass shares (`prometheus.GROUPED`, what the
    operator's timers do: O(1) queries per pass in the number of resources); None: this
    resource's own ~24 queries."""
    try:
        client = await _call(prometheus_client, api, owner, spec, cfg)
    except NoAccess as exc:
        return SloSnapshot(namespace=owner.namespace, name=owner.name, time=now,
                           window=cfg.window, state="noData", no_data_reason=exc.reason,
                           reasons=[str(exc)])
    idle = spec.autoscaling.scale_to_zero_after_seconds
    ask = client.snapshot if snapshots is None else functools.partial(snapshots.snapshot,
                                                                      client)
    return await ask(owner.namespace, owner.name, cfg.window, now,
                     spec.slo.tpot_p90_ms / 1e3, spec.slo.ttft_p90_ms / 1e3,
                     model=served_model(owner.name, spec),
                     idle_window=None if idle is None else f"{idle}s")


def tuning_state(old: dict[str, Any]) -> TuningState:
    """The tuning loop's hysteresis memory, as the last pass left it in .status.tuning."""
    told = old.get("tuning") or {}
    return TuningState(over=told.get("over", 0), under=told.get("under", 0),
                       last_change=told.get("lastChange"))


_FETCH: Any = object()  # decide_policy: ask a ready pod for the model it runs


async def decide_policy(api: KubeClient, owner: Owner, snap: SloSnapshot, policy: Policy,
                        old: dict[str, Any], cfg: LoopConfig, now: float,
                        targets: list[PodTarget] | None = None,
                        measured: ModelParams | None = _FETCH) -> TuningDecision:
    """2. The tuning decision; a changed policy is written to the ConfigMap (first, so new pods
    start with it). `targets`: the ready pods, if the caller has listed them already;
    `measured`: the model a pod reported, if the caller has asked already."""
    if targets is None:
        targets = await ready_targets(api, owner, cfg)
    # The model the pods run (profile + online fits) is what a timing refit scales.
    if measured is _FETCH:
        measured = await fetch_model(targets, cfg.push_timeout_s)
    decision = decide_tuning(snap, policy, tuning_state(old), now, cfg.tuning, measured=measured)
    if decision.changed:
        stored = await update_policy(api, owner, tuned_onto(decision.policy))
        if stored is not None and stored != decision.policy:
            decision = decision.model_copy(update={"policy": stored})
    return decision


async def push_once(api: KubeClient, owner: Owner, policy: Policy, cfg: LoopConfig,
                    targets: list[PodTarget] | None = None,
                    reads: Children | None = None) -> tuple[PushResult, int]:
    """Push to every ready pod: (result, ready pod count). The token Secret is read only when
    there is a pod to push to: from the Secret index of `reads` if there is one and it holds
    it, else a GET."""
    if targets is None:
        targets = await ready_targets(api, owner, cfg, reads)
    if not targets:
        return PushResult(version=policy.version, acks=[]), 0
    secret = await _call((reads or Children(api)).get, "v1", "Secret", owner.namespace,
                         secret_name(owner))
    token_b64 = ((secret or {}).get("data") or {}).get(TOKEN_KEY)
    if not token_b64:
        acks = [PodAck(pod=t.name, acknowledged=False, error="no control token Secret")
                for t in targets]
        return PushResult(version=policy.version, acks=acks), len(targets)
    token = base64.b64decode(token_b64).decode()
    doc = policy.model_dump(mode="json")
    result = await push_policy(targets, doc, token, cfg.push_timeout_s, cfg.retries)
    return result, len(targets)


async def push(api: KubeClient, owner: Owner, policy: Policy, cfg: LoopConfig,
               targets: list[PodTarget] | None = None,
               reads: Children | None = None) -> tuple[Policy, PushResult, int]:
    """3. Push to every ready pod (idempotent for pods that already run this version):
    (the policy pushed, the result, the ready pod count). The pods are listed once."""
    if targets is None:
        targets = await ready_targets(api, owner, cfg, reads)
    result, ready = await push_once(api, owner, policy, cfg, targets, reads)
    higher = result.highest_pod_version
    if higher is not None and higher >= policy.version:
        # A pod runs a newer version than the ConfigMap (e.g. the ConfigMap was recreated):
        # re-version above it so every pod converges on the operator's policy.
        policy = await update_policy(api, owner, versioned_above(higher)) or policy.model_copy(
            update={"version": higher + 1})
        result, ready = await push_once(api, owner, policy, cfg, targets, reads)
    return policy, result, ready


def decide_scale(spec: SpecServeDeploymentSpec, snap: SloSnapshot, policy: Policy,
                 old: dict[str, Any], cfg: LoopConfig, now: float,
                 measured: ModelParams | None = None) -> ScaleDecision:
    """4. The replica decision (pure): from the count the pods have now (`deployment_replicas`
    of the last status: in builtin mode the last decision, else spec.replicas.initial), the
    stabilisation memory in the last status, and the snapshot (see `scale_decision`)."""
    auto = old.get("autoscale") or {}
    history = [Recommendation(time=r["time"], replicas=r["replicas"])
               for r in auto.get("recommendations") or []]
    return scale_decision(spec, snap, policy, deployment_replicas(spec, old), history,
                          auto.get("idleSince"), cfg, now, measured)


def capacity_model(policy: Policy, measured: ModelParams | None) -> Policy:
    """The policy capacity is computed with: its knobs, and the step times the pods run.

    The ConfigMap's model is the built-in defaults until a timing refit replaces it (and a
    refit happens only when the pods' predictions are off), so capacity from it alone is the
    defaults' capacity, not this hardware's. The pods' own model (their profile and online
    fits, `push.fetch_model`) is what their K choices and TPOT follow."""
    if measured is None:
        return policy
    return policy.model_copy(update={"model": measured})


def scale_decision(spec: SpecServeDeploymentSpec, snap: SloSnapshot, policy: Policy,
                   current: int, history: list[Recommendation], idle_since: float | None,
                   cfg: LoopConfig, now: float,
                   measured: ModelParams | None = None) -> ScaleDecision:
    """The replica decision from explicit memory (pure; the simulator runs it too).

    `measured`: the model a ready pod reports; capacity is computed with it when given
    (`capacity_model`).

    builtin: `apply_scale` applies it; external: a recommendation for the HPA/KEDA (exported,
    never applied); off: no decision, the count stays `current`. With replicas.min 0 the zero
    rule (`autoscale.decide_zero`) goes first: at zero only held requests at the gateway scale
    up; above zero the capacity rule keeps at least 1."""
    mode = spec.autoscaling.mode
    if mode == "off":
        return ScaleDecision(current=current, desired=current, raw=None, history=[],
                             reason=f"autoscaling off: fixed at spec.replicas.initial ({current})")
    zero = decide_zero(snap, current, spec.replicas.min, spec.replicas.max,
                       spec.autoscaling.scale_to_zero_after_seconds, idle_since, now,
                       served_model(snap.name, spec))
    if zero.desired is not None:
        # A move to or from zero starts the stabilisation afresh (a remembered 0 would hold
        # the first scale-up after a wake for a whole up window).
        decision = ScaleDecision(current=current, desired=zero.desired, raw=None, history=[],
                                 reason=zero.reason, idle_since=zero.idle_since)
        if mode == "external":
            decision = decision.model_copy(update={
                "reason": f"external (the HPA/KEDA applies it): {decision.reason}"})
        return decision
    out_tokens = snap.output_tokens_per_request or cfg.autoscale.default_output_tokens
    prompt = snap.prompt_tokens_per_request or cfg.autoscale.default_prompt_tokens
    capacity = capacity_per_replica(
        capacity_model(policy, measured), snap.acceptance_rate, out_tokens,
        prompt + out_tokens / 2, cfg.autoscale.max_batch,
        prompt_tokens=prompt if cfg.autoscale.price_prefill else 0.0)
    decision = decide_replicas(snap, current, max(spec.replicas.min, 1), spec.replicas.max,
                               capacity, spec.slo.attainment, history, now, cfg.autoscale)
    if zero.reason:
        decision = decision.model_copy(update={"reason": f"{decision.reason}; {zero.reason}",
                                               "idle_since": zero.idle_since})
    if mode == "external":
        decision = decision.model_copy(update={
            "reason": f"external (the HPA/KEDA applies it): {decision.reason}"})
    return decision


async def apply_scale(api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec,
                      status: dict[str, Any], reads: Children | None = None) -> int | None:
    """5. builtin mode: the Deployment's replicas to the decision in `status`. Call it once
    that status is written (reconcile's drift repair reads the decision there, so it then keeps
    this count). Returns the count set; None when nothing was patched (another mode, no
    decision in `status`, no Deployment yet, or already there)."""
    if spec.autoscaling.mode != "builtin" or "autoscale" not in status:
        return None
    replicas = deployment_replicas(spec, status)
    name = deployment_name(owner)
    dep = await _call((reads or Children(api)).get, "apps/v1", "Deployment", owner.namespace,
                      name)
    if (dep is None or not owned_by(dep, owner)  # another's Deployment: never scaled
            or (dep.get("spec") or {}).get("replicas") == replicas):
        return None
    await _call(api.patch, "apps/v1", "Deployment", owner.namespace, name,
                {"spec": {"replicas": replicas}})
    return replicas


# ------------------------------------------------------------------------- record and status


def loop_record(owner: Owner, snap: SloSnapshot, decision: TuningDecision, policy: Policy,
                result: PushResult, scaled: ScaleDecision, mode: str) -> dict[str, Any]:
    """What one pass did, as the `slo loop: {...}` log line carries it."""
    return {
        "deployment": f"{owner.namespace}/{owner.name}",
        "snapshot": snap.model_dump(exclude={"namespace", "name"}, exclude_none=True),
        "decision": {"version": policy.version, "changed": decision.changed,
                     "reasons": decision.reasons, "tpot_headroom": policy.tpot_headroom,
                     "confidence_floor": policy.confidence_floor},
        "push": {"version": result.version, "acknowledged": result.acknowledged,
                 "failed": [a.model_dump(exclude_none=True) for a in result.failed]},
        "scale": {"mode": mode, "current": scaled.current, "desired": scaled.desired,
                  "reason": scaled.reason},
    }


def loop_status(owner: Owner, spec: SpecServeDeploymentSpec, snap: SloSnapshot,
                decision: TuningDecision, policy: Policy, result: PushResult, ready: int,
                scaled: ScaleDecision, old: dict[str, Any], stamp: str) -> dict[str, Any]:
    """The .status keys one pass writes."""
    snap_status = snapshot_status(snap, stamp)
    applied = len(result.acknowledged)
    conds = [slo_condition(spec, snap_status),
             policy_condition(policy.version, applied, ready, configmap_name(owner)),
             no_data_condition(snap_status)]
    return status_dict(
        slo_snapshot=snap_status,
        slo=slo_summary(spec, snap_status["attainment"]),
        tuning={"over": decision.state.over, "under": decision.state.under,
                "last_change": decision.state.last_change,
                "decision": decision.summary[:4000], "time": stamp},
        policy={"version": policy.version, "applied_pods": applied,
                "failed_pods": len(result.failed), "message": result.describe()[:4000],
                "pushed_at": stamp},
        autoscale={"mode": spec.autoscaling.mode, "desired": scaled.desired, "raw": scaled.raw,
                   "reason": scaled.reason[:4000], "time": stamp,
                   "recommendations": [r.model_dump() for r in scaled.history],
                   "idle_since": scaled.idle_since},
        conditions=merge_conditions(old.get("conditions"), conds, stamp),
    )


# The time stamp of each .status section the loop writes: when that section was last measured
# or decided. A stamp alone is no news, so a section whose other keys are unchanged keeps its
# old stamp (`keep_stamps`) and an unchanged pass sends no status patch at all (write_status
# sends nothing when nothing differs). Condition times are lastTransitionTime already.
STAMPS = {"sloSnapshot": "time", "tuning": "time", "policy": "pushedAt", "autoscale": "time"}


def keep_stamps(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new`, with every section that equals `old`'s but for its stamp (and for null fields,
    which the stored status lacks) replaced by `old`'s (pure)."""
    out = dict(new)
    for section, key in STAMPS.items():
        before, after = old.get(section), new.get(section)
        if not isinstance(before, dict) or not isinstance(after, dict) or key not in before:
            continue
        if _set_fields({k: v for k, v in after.items() if k != key}) == _set_fields(
                {k: v for k, v in before.items() if k != key}):
            out[section] = before  # as stored: compares equal, so nothing is sent
    return out


def _set_fields(value: Any) -> Any:
    """`value` without null map entries: a merge patch's null deletes the key, so the stored
    status lacks the keys the loop sends as null."""
    if isinstance(value, dict):
        return {k: _set_fields(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_set_fields(v) for v in value]
    return value


def at_zero(snap: SloSnapshot, replicas: int) -> SloSnapshot:
    """The snapshot of a deployment at zero replicas: no engine targets is what zero pods look
    like, so NoTargets/TargetsDown become ScaledToZero (no NoData event or alert). The gateway's
    demand fields are kept: they are what scales it up again."""
    if replicas != 0 or snap.no_data_reason not in ("NoTargets", "TargetsDown"):
        return snap
    return snap.model_copy(update={
        "no_data_reason": "ScaledToZero",
        "reasons": ["scaled to zero: no engine pod to measure (held requests at the gateway "
                    "scale it up)"]})


def no_data_event(snap: SloSnapshot, old: dict[str, Any]) -> tuple[str, str, str] | None:
    """(type, reason, message) of the event this snapshot calls for: a Warning `NoData` when the
    loop loses its data or the cause changes, a Normal `DataRestored` when it has data again;
    None while nothing changed (as the NoData condition in the last status says)."""
    prev = next((c for c in old.get("conditions") or [] if c.get("type") == "NoData"), {})
    if snap.no_data_reason == "ScaledToZero":
        return None
    if snap.state != "ok":
        cause = snap.no_data_reason or "QueryError"
        if prev.get("status") == "True" and prev.get("reason") == cause:
            return None
        return "Warning", "NoData", f"{cause}: {'; '.join(snap.reasons)}"[:1000]
    if prev.get("status") == "True":
        return "Normal", "DataRestored", f"SLO metrics are back ({snap.pods_scraped} targets)"
    return None


def report_data(body: Any, owner: Owner, snap: SloSnapshot, old: dict[str, Any],
                now: float) -> None:
    """The NoData event (on a change) and the operator's no-data metrics (every pass)."""
    event = no_data_event(snap, old)
    if event is not None:
        kopf.event(body, type=event[0], reason=event[1], message=event[2])
    gap = snap.state != "ok" and snap.no_data_reason != "ScaledToZero"
    metrics.NO_DATA.observe(owner.namespace, owner.name,
                            snap.no_data_reason or "QueryError" if gap else None, now)


async def slo_iteration(
    api: KubeClient, owner: Owner, spec: SpecServeDeploymentSpec, body: Any,
    old: dict[str, Any], logger: Any, cfg: LoopConfig, stamp: str,
    reads: Children | None = None, snapshots: GroupedSnapshots | None = None,
) -> dict[str, Any]:
    """One pass: snapshot -> tuning decision -> ConfigMap + push -> replica decision; the
    .status keys (the caller writes them, then calls `apply_scale`). `reads`: where the
    policy ConfigMap is read from (`children`); `snapshots`: as in `take_snapshot`. The caller
    passes the result through `keep_stamps` before writing it, so a pass that changed nothing
    writes nothing."""
    now = time.time()
    policy = await read_policy(api, owner, reads)
    if policy is None:
        return {}  # the reconcile handler creates the ConfigMap first
    snap = at_zero(await take_snapshot(owner, spec, cfg, now, api, snapshots),
                   deployment_replicas(spec, old))
    report_data(body, owner, snap, old, now)
    targets = await ready_targets(api, owner, cfg, reads)  # once per pass: fit and push
    measured = await fetch_model(targets, cfg.push_timeout_s)  # once: the refit and capacity
    decision = await decide_policy(api, owner, snap, policy, old, cfg, now, targets, measured)
    if decision.changed:
        kopf.event(body, type="Normal", reason="PolicyTuned", message=decision.summary[:1000])
    policy, result, ready = await push(api, owner, decision.policy, cfg, targets, reads)
    metrics.POLICY_PUSHES.labels("acknowledged").inc(len(result.acknowledged))
    metrics.POLICY_PUSHES.labels("failed").inc(len(result.failed))
    scaled = decide_scale(spec, snap, policy, old, cfg, now, measured)
    metrics.DESIRED_REPLICAS.labels(owner.namespace, owner.name).set(scaled.desired)
    if scaled.changed and spec.autoscaling.mode == "builtin":
        kopf.event(body, type="Normal", reason="Scaled",
                   message=f"replicas {scaled.current} -> {scaled.desired}: "
                           f"{scaled.reason}"[:1000])
    record = loop_record(owner, snap, decision, policy, result, scaled, spec.autoscaling.mode)
    logger.info("slo loop: " + json.dumps(record, sort_keys=True))
    return loop_status(owner, spec, snap, decision, policy, result, ready, scaled, old, stamp)
