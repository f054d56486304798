"""kopf wiring: which kopf event runs which function, and what the operator builds at start-up.

    kopf run -m specserve_operator.handlers --all-namespaces

One reconcile function (`reconcile.reconcile`) serves create, update (of .spec), resume
(operator restart) and a periodic timer (status refresh and drift repair); the SLO loop is in
`slo_loop`, status shaping in `status`.

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

from specserve_contract import FINALIZER, GROUP, PLURAL, VERSION
from specserve_operator import metrics
from specserve_operator.config import LoopConfig, OperatorConfig
from specserve_operator.kube_client import KubeClient
from specserve_operator.manifests import Owner
from specserve_operator.peering import configure_peering
from specserve_operator.reconcile import now_stamp, reconcile, write_status
from specserve_operator.slo_loop import apply_scale, slo_iteration
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
    register_timers(RUNTIME.config)


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
    _counted_reconcile(kwargs)


def _counted_reconcile(kwargs: dict[str, Any]) -> None:
    try:
        result = reconcile(kube(), **_reconcile_kwargs(kwargs),
                           manage_monitors=RUNTIME.config.manage_service_monitors,
                           monitor_labels=RUNTIME.config.monitor_labels)
    except Exception:
        metrics.RECONCILES.labels("error").inc()
        raise
    metrics.RECONCILES.labels(result).inc()


def refresh(**kwargs: Any) -> None:
    """Timer: follow the Deployment into .status and repair drift (a deleted or edited child)."""
    if not (kwargs["status"] or {}).get("phase"):
        return  # not reconciled by on_change yet: do not race the create handler
    _counted_reconcile(kwargs)


async def slo_loop(body: Any, status: Any, namespace: str, name: str, uid: str, patch: Any,
                   logger: Any, **_: Any) -> None:
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
    try:
        with metrics.SLO_LOOP_SECONDS.time():
            new = await slo_iteration(kube(), owner, spec, body, old, logger, RUNTIME.loop,
                                      now_stamp())
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
        await apply_scale(kube(), owner, spec, new)
    except Exception as exc:  # the status timer's drift repair applies it on its next pass
        logger.warning(f"scaling the Deployment failed (reconcile retries): {exc}")


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget_metrics(namespace: str, name: str, **_: Any) -> None:
    """Only the operator's own in-memory metric series of the resource: `optional` (no
    finalizer of its own), and nothing here can fail or hold the deletion up."""
    metrics.forget(namespace, name)
