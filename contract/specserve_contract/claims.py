"""Who owns a served model name: one rule, shared by the gateway and the operator.

Pure, standard library only. Every SpecServeDeployment claims its served model name
(spec.model.servedName, else its own name). The SpecServeDeployments of one namespace that
serve one name are one claim (they pool their pods). Of the claims of one name, the FIRST one
owns the bare name: the earliest creationTimestamp, then namespace, then name (deterministic).

- the gateway (`specserve_gateway.kube_routes`) routes the bare name to the first claim only and
  reports every later claim as a `RouteConflict`;
- the operator sets the `RouteConflict` condition on the resources of every later claim
  (`conflict_for`), naming the namespace/name that holds the served name.

Both read the same objects (the resources' metadata and spec.model.servedName), so they agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


def served_model(ssd: Mapping[str, Any]) -> str:
    """spec.model.servedName, else metadata.name (as the operator starts the engines)."""
    meta = ssd.get("metadata") or {}
    model = ((ssd.get("spec") or {}).get("model")) or {}
    return str(model.get("servedName") or meta.get("name") or "")


def claim_record(ssd: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a SpecServeDeployment the rule reads (what an index keeps of each one)."""
    meta = ssd.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("namespace", "name", "creationTimestamp")
                         if meta.get(k)},
            "spec": {"model": {"servedName": served_model(ssd)}}}


@dataclass(frozen=True)
class NameClaim:
    """The SpecServeDeployments of one namespace that serve one model name (one tenant)."""

    namespace: str
    model: str
    created: str  # the earliest creationTimestamp among them (RFC 3339, sorts as text)
    names: tuple[str, ...]  # the resources' names, sorted

    @property
    def order(self) -> tuple[str, str, str]:
        """First claim first: creationTimestamp, then namespace/name. No timestamp (not yet
        created) sorts last."""
        return (self.created or "~", self.namespace, self.names[0] if self.names else "")

    @property
    def holder(self) -> str:
        """`namespace/name` of the claim's first resource (what a conflict message names)."""
        return f"{self.namespace}/{self.names[0] if self.names else ''}"


def name_claims(ssds: Iterable[Mapping[str, Any]]) -> dict[str, list[NameClaim]]:
    """model name -> its claims, first claim first."""
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for ssd in ssds:
        model = served_model(ssd)
        if model:
            ns = str((ssd.get("metadata") or {}).get("namespace", ""))
            grouped.setdefault((ns, model), []).append(ssd.get("metadata") or {})
    claims: dict[str, list[NameClaim]] = {}
    for (ns, model), metas in grouped.items():
        stamps = [str(meta["creationTimestamp"]) for meta in metas
                  if meta.get("creationTimestamp")]
        claims.setdefault(model, []).append(NameClaim(
            ns, model, min(stamps, default=""),
            tuple(sorted(str(meta.get("name", "")) for meta in metas))))
    for listed in claims.values():
        listed.sort(key=lambda c: c.order)
    return claims


def conflict_for(ssds: Iterable[Mapping[str, Any]], namespace: str, name: str) -> NameClaim | None:
    """The earlier claim (of another namespace) that holds the served name of the resource
    `namespace/name`, or None when that resource's namespace holds it (or it is not in `ssds`).
    `ssds` are all the SpecServeDeployments seen (or their `claim_record`s), the resource
    itself included."""
    ssds = list(ssds)
    own = next((s for s in ssds if (s.get("metadata") or {}).get("namespace") == namespace
                and (s.get("metadata") or {}).get("name") == name), None)
    if own is None:
        return None
    listed = name_claims(ssds).get(served_model(own)) or []
    if not listed or listed[0].namespace == namespace:
        return None
    return listed[0]
