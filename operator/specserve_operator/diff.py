"""Pure functions: is a live object up to date, and the patch that makes it so.

`reconcile` compares each child the API server holds with what `manifests` builds for the spec
(`is_subset`) and, when it differs, sends `patch_for` (a JSON merge patch). Nothing here knows
which kind an object is beyond what a patch must clear.
"""

from __future__ import annotations

from typing import Any

from kubernetes.utils.quantity import parse_quantity

# ResourceRequirements maps (`resources.requests`, `resources.limits`): the API server stores
# their values in canonical form (cpu "1.5" -> "1500m", "1000m" -> "1", memory "0.5Gi" ->
# "512Mi", "1000" -> "1k"), so they are compared by value, never by text.
QUANTITY_MAPS = ("requests", "limits")

# Single quantities elsewhere in a pod template: emptyDir sizeLimit (the /dev/shm size, user
# volumes) and a resourceFieldRef's divisor (env, downwardAPI volumes).
QUANTITY_FIELDS = ("sizeLimit", "divisor")


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
    clusterIP, ...), so an object is up to date when every field we set has our value; extra
    fields are fine. Lists must match item by item (same length), each item compared the same
    way. Resource quantities are compared as quantities (`QUANTITY_MAPS`, `QUANTITY_FIELDS`).
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
        if not isinstance(actual, list) or len(desired) != len(actual):
            return False
        return all(is_subset(d, a, path) for d, a in zip(desired, actual, strict=True))
    return bool(desired == actual)


def patch_for(desired: dict[str, Any], current: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON merge patch that brings an object to `desired` (metadata we own + spec/data).

    With `current`, it also clears what a merge would keep but the API server refuses next to
    our fields: a Deployment switched to Recreate must lose strategy.rollingUpdate (a merge
    patch keeps keys it does not name; null removes one).
    """
    meta = desired["metadata"]
    body: dict[str, Any] = {
        "metadata": {"labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
    }
    for key in ("spec", "data"):
        if key in desired:
            body[key] = desired[key]
    strategy = (desired.get("spec") or {}).get("strategy")
    if (desired["kind"] == "Deployment" and strategy and strategy.get("type") == "Recreate"
            and "rollingUpdate" in (((current or {}).get("spec") or {}).get("strategy") or {})):
        body["spec"] = {**body["spec"], "strategy": {**strategy, "rollingUpdate": None}}
    return body
