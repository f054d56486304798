"""Pure functions: is a live object up to date with what the operator applies?

Every child is written by server-side apply (`reconcile.ensure`): the operator sends the whole
object `manifests` builds, and the API server merges it, keeps what other managers own
(defaults, a sidecar an admission webhook injected, a label a policy engine added) and removes
what the operator sent last time and no longer sends. So an apply is needed only when

  - a field the operator sends does not have its value in the live object (`is_subset`: the
    live object may hold more, its values as the server stores them), or
  - the set of fields it sends changed since the last apply (`applied`: their fingerprint is
    kept in the annotation `APPLIED_FIELDS` of the object itself, so that a removed env var,
    node selector or limit is noticed even though what is left is still a subset).

Anything else in the live object is someone else's and never causes a write.

Lists follow the Kubernetes OpenAPI schema: the ones marked `x-kubernetes-list-type: map`
are keyed maps (their items are matched by key: `list_map_keys`); all others are atomic (one
value, compared item by item, same length).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from specserve_contract import GROUP

# ResourceRequirements maps (`resources.requests`, `resources.limits`): the API server stores
# their values in canonical form (cpu "1.5" -> "1500m", "1000m" -> "1", memory "0.5Gi" ->
# "512Mi", "1000" -> "1k"), so they are compared by value, never by text.
QUANTITY_MAPS = ("requests", "limits")

# Single quantities elsewhere in a pod template: emptyDir sizeLimit (the /dev/shm size, user
# volumes) and a resourceFieldRef's divisor (env, downwardAPI volumes).
QUANTITY_FIELDS = ("sizeLimit", "divisor")

# The list-map keys (x-kubernetes-list-map-keys) of the lists in the operator's objects, from
# the Kubernetes 1.32 OpenAPI schema (api/openapi-spec; k8s.io/api core/v1 and meta/v1 types):
# the field name -> its keys. `ports` depends on where it is (`list_map_keys`). A key field the
# server defaults (a port's protocol) is matched with its default.
LIST_MAP_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",), "imagePullSecrets": ("name",),
    "ownerReferences": ("uid",), "hostAliases": ("ip",), "resourceClaims": ("name",),
    "schedulingGates": ("name",), "readinessGates": ("conditionType",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
KEY_DEFAULTS = {"protocol": "TCP"}
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")

# Where the operator keeps the fingerprint of the fields it applied (`applied`).
APPLIED_FIELDS = f"{GROUP}/applied-fields"


def list_map_keys(path: tuple[str, ...]) -> tuple[str, ...] | None:
    """The keys of the list at `path` if it is a keyed map (else None: atomic). A container's
    ports are keyed by (containerPort, protocol), a Service's by (port, protocol); a custom
    resource's lists (a ServiceMonitor's endpoints) are atomic unless its CRD says otherwise."""
    if not path:
        return None
    field = path[-1]
    if field == "ports":
        if len(path) >= 2 and path[-2] in CONTAINER_LISTS:
            return ("containerPort", "protocol")
        return ("port", "protocol") if path[:1] == ("spec",) and len(path) == 2 else None
    return LIST_MAP_KEYS.get(field)


def item_key(item: Any, keys: tuple[str, ...]) -> tuple[Any, ...]:
    item = item if isinstance(item, dict) else {}
    return tuple(item.get(k, KEY_DEFAULTS.get(k)) for k in keys)


def same_quantity(desired: Any, actual: Any) -> bool:
    """Do two resource quantities (strings or numbers) have the same value?"""
    if desired == actual:
        return True
    try:
        return bool(parse_quantity(desired) == parse_quantity(actual))
    except (ValueError, TypeError):
        return False


def is_subset(desired: Any, actual: Any, path: tuple[str, ...] = ()) -> bool:
    """Does `actual` already contain everything in `desired`?

    The API server adds defaults (imagePullPolicy, protocol, terminationMessagePath, strategy,
    clusterIP, ...) and others add fields of their own, so an object is up to date when every
    field we set has our value; extra fields are fine. Keyed lists (`list_map_keys`) are up to
    date when each of our items is there (matched by key) and up to date; other managers' items
    are fine. Atomic lists must match item by item (same length). Resource quantities are
    compared as quantities (`QUANTITY_MAPS`, `QUANTITY_FIELDS`).
    """
    if isinstance(desired, dict):
        if not isinstance(actual, dict):
            return False
        if len(path) >= 2 and path[-2] == "resources" and path[-1] in QUANTITY_MAPS:
            return all(k in actual and same_quantity(v, actual[k]) for k, v in desired.items())
        return all(
            k in actual and (same_quantity(v, actual[k]) if k in QUANTITY_FIELDS
                             else is_subset(v, actual[k], (*path, k)))
            for k, v in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(actual, list):
            return False
        keys = list_map_keys(path)
        if keys is not None:
            have = {item_key(a, keys): a for a in actual}
            return all(item_key(d, keys) in have and is_subset(d, have[item_key(d, keys)], path)
                       for d in desired)
        if len(desired) != len(actual):
            return False
        return all(is_subset(d, a, path) for d, a in zip(desired, actual, strict=True))
    return bool(desired == actual)


def field_paths(obj: Any, path: tuple[Any, ...] = ()) -> set[tuple[Any, ...]]:
    """The set of fields an applied config sets (as server-side apply counts them): every map
    key, every keyed-list item (by its key), down to scalars, atomic lists and empty maps."""
    out: set[tuple[Any, ...]] = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.add((*path, key))
            out |= field_paths(value, (*path, key))
    elif isinstance(obj, list):
        keys = list_map_keys(tuple(p for p in path if isinstance(p, str)))
        if keys is not None:
            for item in obj:
                here = (*path, ("key", *item_key(item, keys)))
                out.add(here)
                out |= field_paths(item, here)
    return out


def fingerprint(config: dict[str, Any]) -> str:
    """A short digest of the set of fields `config` sets (not of their values), without the
    fingerprint's own annotation and the identity fields."""
    meta = dict(config.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k != APPLIED_FIELDS}
    meta.pop("annotations", None)
    if annotations:
        meta["annotations"] = annotations
    meta.pop("resourceVersion", None)
    paths = field_paths({**config, "metadata": meta})
    text = json.dumps(sorted(json.dumps(p, default=str) for p in paths))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def applied(desired: dict[str, Any]) -> dict[str, Any]:
    """The config the operator applies for `desired`: the object, with the fingerprint of its
    fields in the annotation `APPLIED_FIELDS`."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}),
                           APPLIED_FIELDS: fingerprint(desired)}
    return {**desired, "metadata": meta}


def in_sync(config: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Would applying `config` (from `applied`) change nothing in `current`? True when every
    field it sets has its value there and the fields are the ones applied last time."""
    return current is not None and is_subset(config, current)
