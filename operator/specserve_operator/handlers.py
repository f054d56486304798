"""kopf wiring: which kopf event runs which function, and what the operator builds at start-up.

    kopf run -m specserve_operator.handlers --all-namespaces

One reconcile function (`reconcile.reconcile`) serves create, update (of .spec), resume
(operator restart) and a periodic timer (status refresh and drift repair); the SLO loop is in
`slo_loop`, status shaping in `status`. The children are watched into kopf indexes
(`children`), which the timers read instead of GETting each child on every pass.

Deletion has no handler for the children: every child carries a controller ownerReference,
so the garbage collector deletes them with the resource, and nothing the operator could fail at
(a 403, an API outage) can hold a deletion up (`forget_metrics`, optional, only drops the
resource's series from the operator's /metrics). kopf still puts its finalizer (`FINALIZER`)
on each resource because of the two timers: it stops a resource's timers before letting the
object go, so no timer keeps running for (and recreating children of) a deleted resource. A
resource that carries the finalizer from an older operator is released the same way. Settings
are read from the environment when the operator starts (`config.OperatorConfig.from_environ`),
not at import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from specserve_contract import (
    APP_NAME,
    FINALIZER,
    GROUP,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    MANAGED_BY,
    PLURAL,
    VERSION,
)
from specserve_contract.claims import claim_record, served_model
from specserve_operator import children, crd_schema, metrics, prometheus
from specserve_operator.config import LoopConfig, OperatorConfig
from specserve_operator.kube_client import KubeClient, KubeError
from specserve_operator.names import Owner
from specserve_operator.peering import configure_peering
from specserve_operator.reconcile import now_stamp, reconcile, write_status
from specserve_operator.slo_loop import apply_scale, keep_stamps, slo_iteration
from specserve_operator.spec import SpecError, parse_spec
from specserve_operator.status import SLO_LOOP, loop_failed_status

log = logging.getLogger("specserve.operator")


@dataclass
class Runtime:
    """What the operator builds when it starts (so a restarted operator re-reads everything).

    `loop_override`: SLO loop settings a test sets in-process before starting the operator.
    """

    kube: KubeClient | None = None
    config: OperatorConfig = field(default_factory=OperatorConfig)
    loop_override: LoopConfig | None = None
    timers: tuple[float, float] | None = None  # the intervals the timers were registered with

    @property
    def loop(self) -> LoopConfig:
        return self.loop_override or self.config.loop


RUNTIME = Runtime()


def kube() -> KubeClient:
    if RUNTIME.kube is None:
        RUNTIME.kube = KubeClient.from_environment()
    return RUNTIME.kube


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    RUNTIME.config = OperatorConfig.from_environ(os.environ)
    settings.persistence.finalizer = FINALIZER
    # Keep kopf's bookkeeping in annotations: .status has a strict schema and belongs to us.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    # Events: the explicit ones (Created/Updated/InvalidSpec/...) plus kopf's own warnings;
    # routine log lines stay in the operator's log.
    settings.posting.level = logging.WARNING
    log.info(configure_peering(settings, RUNTIME.config.peering,
                               RUNTIME.config.peering_lifetime_s, time.time()))
    RUNTIME.kube = KubeClient.from_environment()
    metrics.serve(RUNTIME.config.metrics_port)
    # A resource that has not run a pass for three intervals (deleted) leaves the gauge.
    metrics.NO_DATA.ttl_s = 3 * RUNTIME.config.slo_interval_s
    prometheus.GROUPED.max_age_s = RUNTIME.config.slo_interval_s / 2  # shared query rounds
    children.CHECKED.ttl_s = children.RECHECK_PASSES * RUNTIME.config.status_interval_s
    # The children's watches list only the operator's own objects (server-side selector).
    for kind in children.WATCHED:
        settings.watching.label_selectors[_selects(kind)] = children.SELECTOR
    settings.watching.label_selectors[_selects(children.PODS)] = children.POD_SELECTOR
    if WATCH_SECRETS:
        settings.watching.label_selectors[_selects(children.SECRETS)] = children.SELECTOR
    register_timers(RUNTIME.config)


@kopf.on.startup()
def check_crd_schema(**_: Any) -> None:
    """Refuse to start against a missing CRD or one older than this operator's
    (`crd_schema`): Helm does not upgrade CRDs from a chart's crds/, and an old schema prunes
    what a newer operator writes. Unreadable (403: RBAC without the grant): a warning only."""
    try:
        crd = KubeClient.from_environment().request("GET", crd_schema.CRD_PATH)
    except Exception as exc:
        if isinstance(exc, KubeError) and exc.status == 403:
            log.warning("cannot read the CRD %s to check its schema version (403): grant get on "
                        "it (the chart does); not checked", crd_schema.CRD_NAME)
            return
        # No configuration yet, no connection, an API error: kopf retries the handler.
        raise kopf.TemporaryError(f"reading the CRD {crd_schema.CRD_NAME}: {exc}",
                                  delay=5) from exc
    why = crd_schema.problem(crd)
    if why is not None:
        log.error("refusing to start: %s", why)
        raise kopf.PermanentError(why)
    log.info(crd_schema.describe(crd))


def _selects(kind: children.Watched) -> Any:
    return lambda resource: (resource.group, resource.plural) == (kind.group, kind.plural)


# The children, watched into one index per kind (`children`). Declared here, not at start-up:
# kopf creates its indexes before the start-up handlers run.
_OWN = {LABEL_MANAGED_BY: MANAGED_BY}
_DEPLOYMENTS, _SERVICES, _CONFIGMAPS, _PDBS = children.WATCHED


@kopf.index(group=_DEPLOYMENTS.group, version=_DEPLOYMENTS.version, plural=_DEPLOYMENTS.plural,
            id=_DEPLOYMENTS.index, labels=_OWN)
@kopf.index(group=_SERVICES.group, version=_SERVICES.version, plural=_SERVICES.plural,
            id=_SERVICES.index, labels=_OWN)
@kopf.index(group=_CONFIGMAPS.group, version=_CONFIGMAPS.version, plural=_CONFIGMAPS.plural,
            id=_CONFIGMAPS.index, labels=_OWN)
@kopf.index(group=_PDBS.group, version=_PDBS.version, plural=_PDBS.plural, id=_PDBS.index,
            labels=_OWN)
async def index_child(**kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """async: run in the event loop, not queued in the thread pool behind the (synchronous,
    API-bound) reconcile handlers; it only copies a dict."""
    return children.index_child(**kwargs)


# The engine pods, for the SLO loop's ready pods (`children.PODS`).
@kopf.index(group="", version=children.PODS.version, plural=children.PODS.plural,
            id=children.PODS.index, labels={LABEL_NAME: APP_NAME})
async def index_pod(**kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return children.index_pod(**kwargs)


# The control-token Secrets (`children.SECRETS`), only where the operator may watch them. Read
# at import, unlike the other settings: kopf needs every index declared before it starts.
WATCH_SECRETS = children.watch_secrets(os.environ)


async def index_secret(**kwargs: Any) -> dict[tuple[str, str], dict[str, Any]]:
    return children.index_child(**kwargs)


if WATCH_SECRETS:
    kopf.index(group="", version=children.SECRETS.version, plural=children.SECRETS.plural,
               id=children.SECRETS.index, labels=_OWN)(index_secret)


# Every SpecServeDeployment's claim on its served model name, keyed by that name, for the
# RouteConflict condition (`specserve_contract.claims`: the gateway's first-claim rule).
ROUTE_CLAIMS_INDEX = "specserve_route_claims"


@kopf.index(GROUP, VERSION, PLURAL, id=ROUTE_CLAIMS_INDEX)
async def index_route_claim(body: Any, **_: Any) -> dict[str, dict[str, Any]]:
    return {served_model(body): claim_record(body)}


def _route_claims(kwargs: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The claims of the handler's resource's served name (None: no index, e.g. a direct call)."""
    index = kwargs.get(ROUTE_CLAIMS_INDEX)
    if index is None:
        return None
    return list(index.get(served_model(kwargs["body"]), []))


def register_timers(config: OperatorConfig) -> None:
    """The two timers, with the intervals read at start-up. kopf keeps a timer's interval for
    the life of the process: a second start in the same process (tests) keeps the first ones."""
    intervals = (config.status_interval_s, config.slo_interval_s)
    if RUNTIME.timers is not None:
        if RUNTIME.timers != intervals:
            log.warning("timer intervals stay %s s in this process (asked: %s s)",
                        RUNTIME.timers, intervals)
        return
    RUNTIME.timers = intervals
    status_s, slo_s = intervals
    # backoff: a pass that raised is retried after one interval, not after kopf's default 60 s.
    kopf.timer(GROUP, VERSION, PLURAL, interval=status_s, idle=status_s,
               backoff=status_s)(refresh)
    kopf.timer(GROUP, VERSION, PLURAL, interval=slo_s, backoff=slo_s)(slo_loop)


def _reconcile_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    keys = ("body", "meta", "status", "namespace", "name", "uid", "patch", "logger")
    return {k: kwargs[k] for k in keys}


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.on.resume(GROUP, VERSION, PLURAL)
def on_change(**kwargs: Any) -> None:
    """Rare and decisive: every child is read from the API server."""
    _counted_reconcile(kwargs, children.Children(kube()))


def _counted_reconcile(kwargs: dict[str, Any], reads: children.Children) -> None:
    try:
        result = reconcile(kube(), **_reconcile_kwargs(kwargs),
                           manage_monitors=RUNTIME.config.manage_service_monitors,
                           monitor_labels=RUNTIME.config.monitor_labels, reads=reads,
                           route_claims=_route_claims(kwargs))
    except Exception:
        metrics.RECONCILES.labels("error").inc()
        raise
    metrics.RECONCILES.labels(result).inc()


def refresh(**kwargs: Any) -> None:
    """Timer: follow the Deployment into .status and repair drift (a deleted or edited child),
    reading the children from the watch-fed indexes."""
    if not (kwargs["status"] or {}).get("phase"):
        return  # not reconciled by on_change yet: do not race the create handler
    _counted_reconcile(kwargs, children.Children.from_handler(kube(), kwargs))


async def slo_loop(body: Any, status: Any, namespace: str, name: str, uid: str, patch: Any,
                   logger: Any, **kwargs: Any) -> None:
    """Timer: the SLO control loop of one resource (kopf runs one timer task per resource, so a
    slow or failing deployment never holds up the others)."""
    old = dict(status or {})
    if old.get("phase") in (None, "Invalid"):
        return  # not reconciled yet, or a spec we refuse: nothing to measure or push
    try:
        spec = parse_spec(body.get("spec"))
    except SpecError:
        return
    owner = Owner(name=name, namespace=namespace, uid=uid)
    reads = children.Children.from_handler(kube(), kwargs)
    try:
        with metrics.SLO_LOOP_SECONDS.time():
            new = await slo_iteration(kube(), owner, spec, body, old, logger, RUNTIME.loop,
                                      now_stamp(), reads, prometheus.GROUPED)
        new = keep_stamps(old, new)  # a pass that changed nothing but its stamps: no patch
    except Exception as exc:  # report and go on: the next pass retries
        metrics.SLO_LOOP_FAILURES.inc()
        logger.exception(f"slo loop failed: {exc}")
        new = loop_failed_status(old, exc, now_stamp())
    try:
        await asyncio.to_thread(write_status, kube(), owner, SLO_LOOP, lambda fresh: new, body)
    except Exception as exc:  # the next pass writes it; raising would put kopf into its backoff
        metrics.SLO_LOOP_FAILURES.inc()
        logger.exception(f"slo loop: status not written: {exc}")
        return
    # Scale only now that .status holds the decision: reconcile keeps what it finds there.
    try:
        await apply_scale(kube(), owner, spec, new, reads)
    except Exception as exc:  # the status timer's drift repair applies it on its next pass
        logger.warning(f"scaling the Deployment failed (reconcile retries): {exc}")


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_metrics(namespace: str, name: str, **_: Any) -> None:
    """Only the operator's own in-memory metric series of the resource: `optional` (no
    finalizer of its own), and nothing here can fail or hold the deletion up."""
    metrics.forget(namespace, name)
