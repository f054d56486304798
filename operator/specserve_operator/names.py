"""Pure functions: the names, labels and owner references of a SpecServeDeployment's objects.

The names themselves are part of the contract (`specserve_contract`: the gateway finds a
model's pods by them); these take an `Owner`. `manifests` puts them on the objects it builds;
`reconcile` and the SLO loop find the objects by them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import specserve_contract as contract
from specserve_contract import (
    API_VERSION,
    KIND,
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    LABEL_VERSION,
    MANAGED_BY,
    PART_OF,
)
from specserve_operator.spec import SpecServeDeploymentSpec


@dataclass(frozen=True)
class Owner:
    """The identity of the SpecServeDeployment that owns the objects."""

    name: str
    namespace: str
    uid: str


# ----------------------------------------------------------------------------------- names


def deployment_name(owner: Owner) -> str:
    return contract.deployment_name(owner.name)


def service_name(owner: Owner) -> str:
    return contract.service_name(owner.name)


def secret_name(owner: Owner) -> str:
    return contract.secret_name(owner.name)


def configmap_name(owner: Owner) -> str:
    return contract.configmap_name(owner.name)


def servicemonitor_name(owner: Owner) -> str:
    return contract.servicemonitor_name(owner.name)


def disruption_budget_name(owner: Owner) -> str:
    return contract.disruption_budget_name(owner.name)


def served_model(name: str, spec: SpecServeDeploymentSpec) -> str:
    """The model name the engines serve and the gateway routes (and labels its series) by:
    spec.model.servedName, else the resource's name (gateway/kube_routes.served_model)."""
    return spec.model.served_name or name


# ---------------------------------------------------------------------------------- labels


def selector_labels(owner: Owner) -> dict[str, str]:
    """Labels that select the engine pods (immutable in a Deployment: keep them minimal)."""
    return contract.selector_labels(owner.name)


def selector_string(owner: Owner) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(owner).items())


def labels(owner: Owner, spec: SpecServeDeploymentSpec, component: str) -> dict[str, str]:
    """Kubernetes recommended labels (app.kubernetes.io/*)."""
    out = {
        **selector_labels(owner),
        LABEL_COMPONENT: component,
        LABEL_PART_OF: PART_OF,
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    tag = image_tag(spec.image)
    if tag:
        out[LABEL_VERSION] = tag
    return out


def image_tag(image: str) -> str | None:
    """The tag of an image reference, if it has one that fits in a label value."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last:
        return None
    tag = last.rsplit(":", 1)[1]
    return tag if len(tag) <= 63 else None


# -------------------------------------------------------------------------------- ownership


def owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: dict[str, Any] | None, owner: Owner) -> bool:
    """Is `obj` one of `owner`'s children (its controller reference names the owner's uid)?"""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in refs)
