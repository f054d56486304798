"""The operator's in-memory view of the children it owns, so a status-timer pass reads no child
it already knows.

Without it every pass of every resource GETs each child (about six reads, plus discovery for
ServiceMonitors): 31 GETs per resource per minute at the default intervals, most of them
answering "unchanged". Instead kopf watches the children (one list+watch per kind and
namespace, `WATCHED`, only objects with the operator's managed-by label) into indexes
(`kopf.index` in `handlers`, keyed by (namespace, name)), which kopf hands to every handler;
`Children` is what one pass reads through:

  a watched child        the object as the watch last delivered it (no request). kopf starts
                         no handler before every index has its initial listing, so an index
                         that lacks a child means the child is gone, or its labels were
                         edited out of the watch's selector, or its create has not arrived
                         yet: all rare, and read with a GET (its answer decides whether to
                         create it).
  the Secret and the     not watched by reconcile (the Secret's index, `SECRETS`, exists only
  ServiceMonitor         with SPECSERVE_WATCH_SECRETS, for the SLO loop's token), and checked
                         by a timer pass only when the last check is `RECHECK_PASSES` status
                         intervals old (`CheckedRecently`; 60 s at
                         the default 15 s), so a deleted or edited one is repaired within
                         that time instead of within one status interval.
                         The Secret: a watch needs list+watch on every Secret in the watched
                         namespaces (RBAC cannot narrow that by label) for a child made once
                         and never patched. The ServiceMonitor: an optional kind (its CRD may
                         be absent or come later, its RBAC may be off), and kopf holds every
                         handler back until every index has listed its kind; an index must
                         also be declared at import, before the settings are read.
  the engine pods        watched (`PODS`, by the engine label) for the SLO loop's ready pods
                         (`Children.pods`; it LISTs when the index lags the Deployment).
  anything else          a GET (the resource itself, before undoing a scale).

The event-driven handlers (create, spec update, resume) read every child with a GET
(`Children(api)`): they are rare and must act on the current state. A read from an index can
be a few milliseconds behind the operator's own last write; every apply of an existing child
names the resourceVersion it read (a stale one is refused with 409 and redone on a GET), a
missing one is created by an unforced apply (409: created meanwhile), and the policy
ConfigMap's read-modify-write names the resourceVersion it read, so a stale read costs at most
one refused write, never a lost update. managedFields are dropped from the index: the operator
compares its own fields (`diff.in_sync`), and never needs to read them.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from specserve_contract import ENGINE_SELECTOR, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY
from specserve_operator.kube_client import PLURALS, KubeClient
from specserve_operator.manifests import PDB_API


@dataclass(frozen=True)
class Watched:
    api_version: str
    kind: str

    @property
    def group(self) -> str:
        return self.api_version.rsplit("/", 1)[0] if "/" in self.api_version else ""

    @property
    def version(self) -> str:
        return self.api_version.rsplit("/", 1)[-1]

    @property
    def plural(self) -> str:
        return PLURALS[(self.api_version, self.kind)]

    @property
    def index(self) -> str:
        """The index's name: the keyword kopf passes it to every handler under."""
        return f"specserve_{self.plural}"


# The children kopf watches.
WATCHED: tuple[Watched, ...] = (
    Watched("apps/v1", "Deployment"),
    Watched("v1", "Service"),
    Watched("v1", "ConfigMap"),
    Watched(PDB_API, "PodDisruptionBudget"),
)
# What every child carries (names.labels): the server-side selector of each watch, so the
# operator lists and caches its own objects only, not every Deployment in the cluster.
SELECTOR = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
# The engine pods (ENGINE_SELECTOR, server-side), so that an SLO pass finds the ready pods of
# its resource in memory instead of LISTing them (`ready_pods`). Keyed by (namespace, the pod's
# app.kubernetes.io/instance): one entry per pod of that resource.
PODS = Watched("v1", "Pod")
POD_SELECTOR = ENGINE_SELECTOR
# The control-token Secrets (the managed-by label, server-side), so that an SLO pass reads its
# token from memory instead of GETting it. Declared only when the operator may list and watch
# Secrets wherever it watches resources (env SPECSERVE_WATCH_SECRETS, set by the chart with
# watchNamespaces or operator.clusterWideSecrets): RBAC cannot narrow list/watch by label, and
# with operator.secretNamespaces a cluster-wide watch would be refused. Without it: a GET.
SECRETS = Watched("v1", "Secret")
ENV_WATCH_SECRETS = "SPECSERVE_WATCH_SECRETS"


def watch_secrets(environ: Mapping[str, str]) -> bool:
    return environ.get(ENV_WATCH_SECRETS, "").strip().lower() in ("1", "true", "yes")


# Every index a handler may be handed (`Children.from_handler`).
INDEXES = frozenset({w.index for w in (*WATCHED, PODS, SECRETS)})
# At most this many status intervals between two checks of an unwatched child (Secret,
# ServiceMonitor) by the status timer (`handlers.configure` sets CHECKED.ttl_s from it).
RECHECK_PASSES = 4


def cached_object(body: Mapping[str, Any]) -> dict[str, Any]:
    """What an index keeps of a child: a plain copy, without managedFields (the bulk of a
    stored object, never read)."""
    out = copy.deepcopy(dict(body))
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    return out


def index_child(body: Mapping[str, Any], namespace: str, name: str,
                **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The kopf index handler of every watched kind: (namespace, name) -> the object."""
    return {(namespace, name): cached_object(body)}


def cached_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the pod index keeps: what `push.ready_pods` and the pod address read."""
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    keep_meta = ("name", "namespace", "uid", "labels", "deletionTimestamp", "resourceVersion")
    return copy.deepcopy({
        "metadata": {k: meta[k] for k in keep_meta if k in meta},
        "status": {k: status[k] for k in ("phase", "podIP", "podIPs", "conditions")
                   if k in status}})


def index_pod(body: Mapping[str, Any], namespace: str, **_: Any
              ) -> dict[tuple[str, str], dict[str, Any]]:
    """The kopf index handler of the engine pods: (namespace, instance) -> the pod."""
    instance = ((body.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE)
    return {(namespace, instance): cached_pod(body)} if instance else {}


class CheckedRecently:
    """When each child was last found in order (kind, namespace, name), to skip a check made
    less than `ttl_s` ago (thread-safe: kopf runs synchronous handlers in a thread pool)."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._checked: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def fresh(self, key: tuple[str, str, str]) -> bool:
        with self._lock:
            checked = self._checked.get(key)
        return checked is not None and self.clock() - checked < self.ttl_s

    def mark(self, key: tuple[str, str, str]) -> None:
        with self._lock:
            self._checked[key] = self.clock()


CHECKED = CheckedRecently(RECHECK_PASSES * 15.0)


class Children:
    """How one reconcile pass reads children. With `indexes` (kopf's, by `Watched.index`: a
    timer pass) watched kinds come from memory and unwatched ones are checked once per
    `checked.ttl_s`; without (`Children(api)`), every read is a GET and every check is made."""

    def __init__(self, api: KubeClient, indexes: Mapping[str, Any] | None = None,
                 checked: CheckedRecently | None = None) -> None:
        self.api = api
        self.indexes = dict(indexes or {})
        self.checked = checked if checked is not None else CHECKED
        self.gets = 0  # GETs this pass made (tests)

    @classmethod
    def from_handler(cls, api: KubeClient, kwargs: Mapping[str, Any],
                     checked: CheckedRecently | None = None) -> Children:
        """The indexes among a handler's keyword arguments (kopf passes every index to every
        handler)."""
        return cls(api, {k: v for k, v in kwargs.items() if k in INDEXES}, checked)

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The child: from its index if it is there, else a GET."""
        index = self.indexes.get(Watched(api_version, kind).index) if (
            (api_version, kind) in PLURALS) else None
        if index is not None:
            store = index.get((namespace, name))
            cached = next(iter(store), None) if store is not None else None
            if cached is not None:
                return copy.deepcopy(cached)
        return self.read(api_version, kind, namespace, name)

    def pods(self, namespace: str, instance: str) -> list[dict[str, Any]] | None:
        """The engine pods of resource `instance` as the pod index holds them; None without a
        pod index (a LIST is needed)."""
        index = self.indexes.get(PODS.index)
        if index is None:
            return None
        store = index.get((namespace, instance))
        return [copy.deepcopy(p) for p in store] if store is not None else []

    def read(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A GET (the API server's current answer)."""
        self.gets += 1
        return self.api.get(api_version, kind, namespace, name)

    def recently_checked(self, kind: str, namespace: str, name: str) -> bool:
        """Skip this unwatched child's check now? Only in a timer pass (with indexes)."""
        return bool(self.indexes) and self.checked.fresh((kind, namespace, name))

    def mark_checked(self, kind: str, namespace: str, name: str) -> None:
        self.checked.mark((kind, namespace, name))
