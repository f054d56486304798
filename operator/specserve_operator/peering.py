"""Which operator replica acts: kopf peering, the oldest live replica first.

kopf peering keeps, in the status of a peering object (`ClusterKopfPeering` for an operator
watching all namespaces, `KopfPeering` in each watched namespace otherwise), every operator's
priority and keep-alive deadline. An operator pauses all its handling, timers included, while
a live peer has a higher priority, and peers of equal priority pause each other (kopf's rule:
`kopf/_core/engines/peering.py`, `process_peering_event`). So each replica needs a priority of
its own, and it is minus the replica's start time in milliseconds: the oldest live replica leads,
a replica that restarts (or a new one in a rollout) waits behind it, and leadership moves only
when the leader goes. A leader that stops cleanly removes its record at once; one that dies is
passed over once its record is `lifetime_s` old (it renews it 5 to 10 s before then).

kopf takes no per-object locks: between a new leader's resume and an old leader's pause (one
watch event) both may act. Everything the operator writes tolerates that: status patches carry
resourceVersion preconditions, policy versions only grow, pushes are idempotent.
"""

from __future__ import annotations

import kopf


def priority_for(started_unix_s: float) -> int:
    """The peering priority of a replica that started at `started_unix_s`: older is higher."""
    return -int(started_unix_s * 1000)


def configure_peering(settings: kopf.OperatorSettings, name: str, lifetime_s: int,
                      started_unix_s: float) -> str:
    """Put this replica into peering object `name` ("" keeps it standalone); returns a line
    for the log."""
    if not name:
        settings.peering.standalone = True
        return "standalone (no peering): run exactly one replica"
    settings.peering.standalone = False
    settings.peering.mandatory = True  # refuse to run unpeered beside others
    settings.peering.name = name
    settings.peering.priority = priority_for(started_unix_s)
    settings.peering.lifetime = lifetime_s
    settings.peering.stealth = True  # keep-alives are not worth a log line each
    return (f"peering {name!r} with priority {settings.peering.priority} (the oldest live "
            f"replica acts; a silent one is passed over after {lifetime_s} s)")
