"""What a real API server stores for an object the operator sends: its defaulting and its
canonical resource quantities, so that drift tests see objects as `kubectl get -o json` shows
them (kmock stores what it is sent, verbatim).

Sources (Kubernetes 1.32):
  quantities   k8s.io/apimachinery/pkg/api/resource/quantity.go (ParseQuantity,
               CanonicalizeBytes): values are rounded up to nano units and written back with
               the suffix family they were sent in (no suffix or m/k/M/..: decimal, Ki/Mi/..:
               binary); decimal: the largest exponent that is a multiple of 3 and leaves an
               integer mantissa; binary: the largest power of 1024 that divides the value,
               falling back to decimal below 1024 or for a fractional number of units.
  defaults     pkg/apis/apps/v1/defaults.go (SetDefaults_Deployment) and
               pkg/apis/core/v1/defaults.go (SetDefaults_PodSpec, _Container, _Probe,
               _HTTPGetAction, _Volume, _ConfigMapVolumeSource, _SecretVolumeSource,
               _DownwardAPIVolumeSource, _ProjectedVolumeSource,
               _ServiceAccountTokenProjection, _HostPathVolumeSource,
               _PersistentVolumeClaimSpec, _ObjectFieldSelector, _ResourceList, _Service,
               _ServicePort, _Secret), plus the Service IP allocator (clusterIP, ipFamilies,
               ipFamilyPolicy). A resourceFieldRef's divisor is a Quantity value (not a
               pointer): it reads back as "0" when unset, canonical otherwise.
  omitempty    Go's JSON encoding drops empty strings, false booleans, zero numbers and empty
               maps and lists of fields tagged `omitempty` that are not pointers: an operator
               that sends one reads back an object without it.
  server-side  KEP-555 (kubernetes/enhancements keps/sig-api-machinery/555-server-side-apply),
  apply        the docs page "Server-Side Apply" (kubernetes.io/docs/reference/using-api/
               server-side-apply/) and sigs.k8s.io/structured-merge-diff/v4 (merge/update.go:
               Updater.Apply and Updater.Update; typed/merge.go; fieldpath): each manager owns
               a set of fields (metadata.managedFields, one entry per manager and operation);
               an apply merges its config into the object (maps key by key, lists with
               x-kubernetes-list-type map item by item on their keys, atomic lists and scalars
               replaced), takes the fields it sets, removes those it owned before, no longer
               sets and nobody else owns, and answers 409 Conflict where it would change a
               field another manager owns, unless forced (force=true moves the field to it).
               An update (a merge patch, a create) takes the fields whose values it changes,
               and never conflicts. The list-map keys are those of the Kubernetes 1.32 OpenAPI
               schema (x-kubernetes-list-map-keys) for the lists in the operator's objects;
               every other list is atomic, as are a custom resource's unless its CRD says so.
               An apply that names metadata.resourceVersion is refused (409) when it is not the
               stored one, like any write.
"""

from __future__ import annotations

import copy
import json
import re
from decimal import ROUND_CEILING, Decimal
from typing import Any

DECIMAL_SUFFIX = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15,
                  "E": 18}
BINARY_SUFFIX = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_NAME = {e: s for s, e in DECIMAL_SUFFIX.items()}
_BINARY_NAME = {e: s for s, e in BINARY_SUFFIX.items()}


def canonical_quantity(text: str) -> str:
    """The form the API server writes a (non-negative, non-exponent) quantity back in."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]*)", text.strip())
    if not m or (m.group(2) not in DECIMAL_SUFFIX and m.group(2) not in BINARY_SUFFIX):
        raise ValueError(f"not a quantity this kit handles: {text!r}")
    number, suffix = Decimal(m.group(1)), m.group(2)
    binary = suffix in BINARY_SUFFIX
    value = number * (2 ** BINARY_SUFFIX[suffix] if binary else Decimal(10) ** DECIMAL_SUFFIX[
        suffix])
    nanos = int((value * 10**9).to_integral_value(rounding=ROUND_CEILING))  # rounded up to 1n
    if nanos == 0:
        return "0"
    if binary and nanos >= 1024 * 10**9 and nanos % 10**9 == 0:
        units, exponent = nanos // 10**9, 0
        while units % 1024 == 0 and exponent < 60:
            units, exponent = units // 1024, exponent + 10
        return f"{units}{_BINARY_NAME.get(exponent, '')}"
    mantissa, exponent = nanos, -9
    while mantissa % 1000 == 0 and exponent < 18:
        mantissa, exponent = mantissa // 1000, exponent + 3
    return f"{mantissa}{_DECIMAL_NAME[exponent]}"


def _canonical_resources(container: dict[str, Any]) -> None:
    resources = container.setdefault("resources", {})
    for key in ("requests", "limits"):
        if key in resources:
            resources[key] = {k: canonical_quantity(str(v)) for k, v in resources[key].items()}


def _probe(probe: dict[str, Any]) -> None:
    probe.setdefault("timeoutSeconds", 1)
    probe.setdefault("periodSeconds", 10)
    probe.setdefault("successThreshold", 1)
    probe.setdefault("failureThreshold", 3)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("scheme", "HTTP")


# Fields of pod-template objects that are Go maps: an empty one is omitted like an empty list.
_MAPS = {"matchLabels", "volumeAttributes", "options", "labels", "annotations"}


def _omitempty(value: Any) -> Any:
    """Go's encoding of a pass-through object: empty strings, false, empty lists and maps and
    nulls of omitempty fields are not written back (empty structs behind pointers, `{}`, are:
    `emptyDir: {}`, `labelSelector: {}`)."""
    if isinstance(value, list):
        return [_omitempty(v) for v in value]
    if not isinstance(value, dict):
        return value
    return {k: _omitempty(v) for k, v in value.items()
            if v is not None and v is not False and v != "" and v != []
            and not (k in _MAPS and v == {})}


def _field_refs(holder: dict[str, Any]) -> None:
    """An env var's valueFrom or a downwardAPI item: fieldRef and resourceFieldRef defaults."""
    if "fieldRef" in holder:
        holder["fieldRef"].setdefault("apiVersion", "v1")
    if "resourceFieldRef" in holder:
        ref = holder["resourceFieldRef"]
        ref["divisor"] = canonical_quantity(str(ref.get("divisor", "0")))


def _downward_api(source: dict[str, Any]) -> None:
    for item in source.get("items", []):
        _field_refs(item)


def _volume(v: dict[str, Any]) -> dict[str, Any]:
    v = _omitempty(v)
    if set(v) == {"name"}:
        v["emptyDir"] = {}
    if "emptyDir" in v and "sizeLimit" in v["emptyDir"]:
        v["emptyDir"]["sizeLimit"] = canonical_quantity(str(v["emptyDir"]["sizeLimit"]))
    for key in ("configMap", "secret", "downwardAPI", "projected"):
        if key in v:
            v[key].setdefault("defaultMode", 420)
    if "downwardAPI" in v:
        _downward_api(v["downwardAPI"])
    for source in v.get("projected", {}).get("sources", []):
        if "downwardAPI" in source:
            _downward_api(source["downwardAPI"])
        if "serviceAccountToken" in source:
            source["serviceAccountToken"].setdefault("expirationSeconds", 3600)
    if "hostPath" in v:
        v["hostPath"].setdefault("type", "")
    claim = v.get("ephemeral", {}).get("volumeClaimTemplate", {}).get("spec")
    if claim is not None:
        claim.setdefault("volumeMode", "Filesystem")
        _canonical_resources(claim)
    return v


def _container(c: dict[str, Any]) -> None:
    image = c.get("image", "")
    tag = image.rsplit("/", 1)[-1].rsplit(":", 1)[-1] if ":" in image.rsplit("/", 1)[-1] else ""
    c.setdefault("imagePullPolicy", "Always" if tag in ("", "latest") else "IfNotPresent")
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    for port in c.get("ports", []):
        port.setdefault("protocol", "TCP")
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        if name in c:
            _probe(c[name])
    _canonical_resources(c)
    if "env" in c:
        c["env"] = _omitempty(c["env"])
        for var in c["env"]:
            if "valueFrom" in var:
                _field_refs(var["valueFrom"])
    for key in ("envFrom", "volumeMounts"):
        if key in c:
            c[key] = _omitempty(c[key])


def _omitempty_toleration(t: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in t.items() if v not in ("", None)}


def _pod_spec(pod: dict[str, Any]) -> None:
    pod.setdefault("restartPolicy", "Always")
    pod.setdefault("terminationGracePeriodSeconds", 30)
    pod.setdefault("dnsPolicy", "ClusterFirst")
    pod.setdefault("securityContext", {})
    pod.setdefault("schedulerName", "default-scheduler")
    pod.setdefault("enableServiceLinks", True)  # v1.DefaultEnableServiceLinks
    for c in pod.get("containers", []):
        _container(c)
    if "volumes" in pod:
        pod["volumes"] = [_volume(v) for v in pod["volumes"]]
    if "affinity" in pod:
        pod["affinity"] = _omitempty(pod["affinity"])
    if "tolerations" in pod:
        pod["tolerations"] = [_omitempty_toleration(t) for t in pod["tolerations"]]
    if not pod.get("nodeSelector", True):
        del pod["nodeSelector"]


def _server_metadata(obj: dict[str, Any], generation: bool) -> None:
    meta = obj["metadata"]
    meta.setdefault("uid", "3f1d2c4e-0000-4000-8000-000000000001")
    meta.setdefault("resourceVersion", "48213")
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    meta.setdefault("managedFields", [{"manager": "kopf", "operation": "Update"}])
    if generation:
        meta.setdefault("generation", 1)


class Invalid(ValueError):
    """The API server's 422: the object fails its validation."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `application/merge-patch+json` does): objects merge key
    by key, null removes a key, everything else (lists included) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def validate(obj: dict[str, Any]) -> None:
    """The server-side validation rules the drift tests rely on (apps/validation)."""
    if obj["kind"] == "Deployment":
        strategy = obj["spec"].get("strategy") or {}
        if strategy.get("type") == "Recreate" and "rollingUpdate" in strategy:
            raise Invalid("spec.strategy.rollingUpdate: Forbidden: may not be specified when "
                          "strategy `type` is 'Recreate'")
        rolling = strategy.get("rollingUpdate") or {}
        if rolling and rolling.get("maxSurge") in (0, "0%") and rolling.get(
                "maxUnavailable") in (0, "0%"):
            raise Invalid("spec.strategy.rollingUpdate.maxUnavailable: Invalid value: 0: may "
                          "not be 0 when `maxSurge` is 0")


def patched(stored: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """What the server stores after a merge patch of `stored` (validated, defaults filled)."""
    out = merge_patch(stored, patch)
    validate(out)
    return as_stored(out)


def as_stored(obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as a real API server returns it after a create (or a merge patch replacing the
    fields we set): defaults filled in, quantities canonical, server metadata and status."""
    out = copy.deepcopy(obj)
    kind = out["kind"]
    _server_metadata(out, generation=kind in ("Deployment", "ServiceMonitor",
                                               "PodDisruptionBudget"))
    if kind == "Deployment":
        spec = out["spec"]
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy.setdefault("type", "RollingUpdate")
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec["template"].setdefault("metadata", {})["creationTimestamp"] = None
        _pod_spec(spec["template"]["spec"])
        out["status"] = {"observedGeneration": 1, "replicas": spec["replicas"],
                         "updatedReplicas": spec["replicas"], "readyReplicas": spec["replicas"],
                         "availableReplicas": spec["replicas"],
                         "conditions": [{"type": "Available", "status": "True",
                                         "reason": "MinimumReplicasAvailable"}]}
    elif kind == "Service":
        spec = out["spec"]
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        spec.setdefault("clusterIP", "10.96.12.34")
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports", []):
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
        out["status"] = {"loadBalancer": {}}
    elif kind == "Secret":
        out.setdefault("type", "Opaque")
    elif kind == "PodDisruptionBudget":  # pkg/apis/policy/v1: no defaults; a status
        out["status"] = {"observedGeneration": 1, "currentHealthy": 1, "desiredHealthy": 0,
                         "disruptionsAllowed": 1, "expectedPods": 1}
    return out


# ------------------------------------------------------------------ server-side apply

# Field name -> x-kubernetes-list-map-keys (k8s.io/api core/v1, meta/v1; 1.32). `ports` is
# keyed by (containerPort, protocol) in a container and by (port, protocol) in a ServiceSpec.
SSA_LIST_MAP_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",), "initContainers": ("name",), "ephemeralContainers": ("name",),
    "env": ("name",), "volumes": ("name",), "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",), "imagePullSecrets": ("name",), "ownerReferences": ("uid",),
    "hostAliases": ("ip",), "resourceClaims": ("name",), "schedulingGates": ("name",),
    "readinessGates": ("conditionType",),
    "topologySpreadConstraints": ("topologyKey", "whenUnsatisfiable"),
}
SSA_KEY_DEFAULTS = {"protocol": "TCP"}  # a defaulted key field is matched with its default
# Not fields anyone owns: the identity of the object, and what the server writes itself.
SSA_IDENTITY = {("apiVersion",), ("kind",), ("metadata",), ("metadata", "name"),
                ("metadata", "namespace")}
SSA_SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation")

Path = tuple[Any, ...]  # map keys (str) and list-map items (("k", '{"name":"engine"}'))


def _list_keys(kind: str, path: Path) -> tuple[str, ...] | None:
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    if names[-1] == "ports":
        if len(names) >= 2 and names[-2] in ("containers", "initContainers",
                                              "ephemeralContainers"):
            return ("containerPort", "protocol")
        return ("port", "protocol") if kind == "Service" and names == ["spec", "ports"] else None
    return SSA_LIST_MAP_KEYS.get(names[-1])


def _key_element(item: Any, keys: tuple[str, ...]) -> tuple[str, str]:
    item = item if isinstance(item, dict) else {}
    return ("k", json.dumps({k: item.get(k, SSA_KEY_DEFAULTS.get(k)) for k in keys},
                            sort_keys=True, separators=(",", ":")))


def _nodes(kind: str, value: Any, path: Path = ()) -> dict[Path, Any]:
    """Every field of an object: path -> value (maps and list-map items are walked into;
    scalars, atomic lists and empty maps are leaves)."""
    out: dict[Path, Any] = {}
    if isinstance(value, dict):
        for key, v in value.items():
            out[(*path, key)] = v
            out |= _nodes(kind, v, (*path, key))
    elif isinstance(value, list):
        keys = _list_keys(kind, path)
        if keys is not None:
            for item in value:
                here = (*path, _key_element(item, keys))
                out[here] = item
                out |= _nodes(kind, item, here)
    return out


def _is_leaf(kind: str, path: Path, value: Any) -> bool:
    if isinstance(value, dict):
        return not value
    return not (isinstance(value, list) and _list_keys(kind, path) is not None)


_MISSING = object()


def _get(obj: Any, path: Path) -> Any:
    for element in path:
        if isinstance(element, str):
            if not isinstance(obj, dict) or element not in obj:
                return _MISSING
            obj = obj[element]
        else:
            wanted = json.loads(element[1])
            if not isinstance(obj, list):
                return _MISSING
            obj = next((i for i in obj if isinstance(i, dict) and all(
                i.get(k, SSA_KEY_DEFAULTS.get(k)) == v for k, v in wanted.items())), _MISSING)
            if obj is _MISSING:
                return obj
    return obj


def _remove(obj: Any, path: Path) -> None:
    parent = _get(obj, path[:-1])
    element = path[-1]
    if isinstance(element, str):
        if isinstance(parent, dict):
            parent.pop(element, None)
    elif isinstance(parent, list):
        item = _get(obj, path)
        parent[:] = [i for i in parent if i is not item]


def _apply_merge(kind: str, live: Any, config: Any, path: Path = ()) -> Any:
    """structured-merge-diff's merge of an applied config into the live object."""
    if isinstance(config, dict) and isinstance(live, dict):
        out = dict(live)
        for key, value in config.items():
            out[key] = _apply_merge(kind, live.get(key, _MISSING), value, (*path, key))
        return out
    keys = _list_keys(kind, path) if isinstance(config, list) else None
    if keys is not None and isinstance(live, list):
        out_list = list(live)
        for item in config:
            element = _key_element(item, keys)
            index = next((n for n, i in enumerate(out_list)
                          if _key_element(i, keys) == element), None)
            if index is None:
                out_list.append(copy.deepcopy(item))
            else:
                out_list[index] = _apply_merge(kind, out_list[index], item, (*path, element))
        return out_list
    return copy.deepcopy(config)


def fields_v1(paths: set[Path]) -> dict[str, Any]:
    """A field set as metadata.managedFields writes it (FieldsV1: `f:<field>`, `k:<keys>` for
    a list-map item, `.` for a field that is owned itself and has owned fields below)."""
    root: dict[str, Any] = {}
    for path in sorted(paths, key=len):
        node = root
        for element in path:
            name = f"f:{element}" if isinstance(element, str) else f"k:{element[1]}"
            node = node.setdefault(name, {})
    for path in paths:
        node = root
        for element in path:
            node = node[f"f:{element}" if isinstance(element, str) else f"k:{element[1]}"]
        if node and "." not in node:
            node["."] = {}
    return root


def _without_server_meta(obj: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["metadata"] = {k: v for k, v in (out.get("metadata") or {}).items()
                       if k not in SSA_SERVER_META}
    out.pop("status", None)
    return out


def _path_text(path: Path) -> str:
    """A field path as the API server's conflict message writes it (.spec.replicas)."""
    return "".join(f".{p}" if isinstance(p, str) else f"[{p[1]}]" for p in path)


class MemoryApiServer:
    """An in-memory stand-in for the operator's `KubeClient` (get/create/patch/apply/request)
    that keeps what kmock does not: every write bumps metadata.resourceVersion, and a write
    that names a resourceVersion other than the stored one is refused with 409 Conflict
    (optimistic concurrency, as the API server does); server-side apply with field ownership
    (`apply`; see the module's sources), each manager's fields in `managed` and, as the server
    shows them, in metadata.managedFields. `before_write` runs before each write is applied,
    which is where a test puts the concurrent writer that makes a read stale.
    """

    def __init__(self, defaulting: bool = False) -> None:
        # defaulting: store what a create or patch sends as a real server would (`as_stored`).
        self.defaulting = defaulting
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        # (kind, name) -> (manager, operation) -> the fields it owns
        self.managed: dict[tuple[str, str], dict[tuple[str, str], set[Path]]] = {}
        self.version = 100
        self.writes: list[tuple[str, str, str, dict[str, Any]]] = []  # (verb, kind, name, body)
        self.conflicts = 0
        self.before_write: list[Any] = []  # callables (verb, kind, name, body) -> None, once each

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store an object as the server would (a create that cannot fail)."""
        self.version += 1
        out = copy.deepcopy(obj)
        out.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        key = (out["kind"], out["metadata"]["name"])
        if key in self.managed:
            out["metadata"]["managedFields"] = [
                {"manager": m, "operation": op, "apiVersion": out.get("apiVersion"),
                 "fieldsType": "FieldsV1", "fieldsV1": fields_v1(paths)}
                for (m, op), paths in sorted(self.managed[key].items()) if paths]
        self.objects[key] = out
        return copy.deepcopy(out)

    def _hook(self, verb: str, kind: str, name: str, body: dict[str, Any]) -> None:
        if self.before_write:
            self.before_write.pop(0)(verb, kind, name, body)

    def _stale(self, body: dict[str, Any], stored: dict[str, Any], what: str) -> None:
        from specserve_operator.kube_client import KubeError
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and wanted != stored["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise KubeError(409, "PATCH", what,
                            "Operation cannot be fulfilled: the object has been modified; "
                            "please apply your changes to the latest version and try again")

    def _updated(self, key: tuple[str, str], old: dict[str, Any] | None, new: dict[str, Any],
                 manager: str) -> None:
        """An update's ownership: `manager` takes the leaves whose values it changed; fields
        that are gone are nobody's."""
        kind = key[0]
        before = _nodes(kind, _without_server_meta(old)) if old is not None else {}
        after = _nodes(kind, _without_server_meta(new))
        changed = {p for p, v in after.items() if p not in SSA_IDENTITY and (
            before.get(p, _MISSING) != v and _is_leaf(kind, p, v))}
        managed = self.managed.setdefault(key, {})
        for paths in managed.values():
            paths -= changed
            paths &= set(after)
        if changed:
            owned = managed.setdefault((manager, "Update"), set())
            for p in changed:  # and the maps and items it created
                owned |= {p} | {p[:n] for n in range(1, len(p)) if p[:n] not in before}
            owned -= SSA_IDENTITY

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        obj = self.objects.get((kind, name))
        return copy.deepcopy(obj) if obj is not None else None

    def create(self, obj: dict[str, Any], manager: str = "specserve-operator") -> dict[str, Any]:
        from specserve_operator.kube_client import KubeError
        self._hook("create", obj["kind"], obj["metadata"]["name"], obj)
        self.writes.append(("create", obj["kind"], obj["metadata"]["name"], obj))
        key = (obj["kind"], obj["metadata"]["name"])
        if key in self.objects:
            raise KubeError(409, "POST", obj["kind"], "AlreadyExists")
        out = as_stored(obj) if self.defaulting else copy.deepcopy(obj)
        self.managed[key] = {}
        self._updated(key, None, obj, manager)
        return self.put(out)

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              body: dict[str, Any], subresource: str = "",
              manager: str = "specserve-operator") -> Any:
        self._hook("patch", kind, name, body)
        self.writes.append(("patch", kind, name, body))
        stored = self.objects.get((kind, name))
        if stored is None:
            return None
        self._stale(body, stored, f"{kind}/{name}")
        if subresource == "status":
            body = {"status": body.get("status")}  # the status subresource writes status only
        else:
            body = {k: v for k, v in body.items() if k != "status"}
        out = merge_patch(stored, body)
        out["metadata"].pop("resourceVersion", None)
        if self.defaulting and not subresource:
            out = patched(stored, body)
        if not subresource:
            self._updated((kind, name), stored, out, manager)
        return self.put(out)

    def apply(self, obj: dict[str, Any], field_manager: str, force: bool = False) -> Any:
        """Server-side apply (the module's sources): `obj` is the manager's whole config."""
        from specserve_operator.kube_client import KubeError
        kind, name = obj["kind"], obj["metadata"]["name"]
        self._hook("apply", kind, name, obj)
        self.writes.append(("apply", kind, name, obj))
        key = (kind, name)
        config = copy.deepcopy(obj)
        stored = self.objects.get(key)
        if stored is not None:
            self._stale(config, stored, f"{kind}/{name}")
        config["metadata"].pop("resourceVersion", None)
        config_nodes = _nodes(kind, config)
        config_fields = set(config_nodes) - SSA_IDENTITY
        me = (field_manager, "Apply")
        if stored is None:  # an apply creates
            self.managed[key] = {me: config_fields}
            return self.put(as_stored(config) if self.defaulting else config)
        managed = self.managed.setdefault(key, {})
        live = _without_server_meta(stored)
        merged = _apply_merge(kind, live, config)
        if self.defaulting:
            merged = as_stored(merged)
        # Conflicts: leaves this apply changes that another manager owns.
        conflicts = sorted(
            {(m, p) for p in config_fields if _is_leaf(kind, p, config_nodes[p])
             and _get(merged, p) != _get(live, p)
             for (m, op), paths in managed.items() if (m, op) != me and p in paths},
            key=str)
        if conflicts and not force:
            raise KubeError(409, "PATCH", f"{kind}/{name}",
                            f"Apply failed with {len(conflicts)} conflicts: " + "; ".join(
                                f'conflict with "{m}": {_path_text(p)}' for m, p in conflicts))
        for m, p in conflicts:  # forced: the fields move to this manager
            for (other, op), paths in managed.items():
                if other == m and (other, op) != me:
                    paths.discard(p)
        # Fields this manager owned, no longer sets and nobody else owns: removed.
        others = set().union(*(paths for mo, paths in managed.items() if mo != me))
        for p in sorted(managed.get(me, set()) - config_fields, key=len):  # outermost first
            if not any(q[:len(p)] == p for q in others):
                _remove(merged, p)
        managed[me] = config_fields
        for paths in managed.values():
            paths &= set(_nodes(kind, merged))
        validate(merged)
        if self.defaulting:
            merged = as_stored(merged)
        elif "status" in stored:
            merged["status"] = copy.deepcopy(stored["status"])
        merged["metadata"] = {**merged["metadata"], **{
            k: v for k, v in stored["metadata"].items() if k in SSA_SERVER_META}}
        return self.put(merged)

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        self._hook("delete", kind, name, {})
        self.writes.append(("delete", kind, name, {}))
        return self.objects.pop((kind, name), None) is not None

    def request(self, method: str, path: str, *_: Any) -> Any:
        return {"items": []}  # pod listings: no pods

    def serves(self, api_version: str, plural: str) -> bool:
        return False
