"""Pure routing: which backends serve a model, which one gets the next request, error bodies.

Nothing here does I/O or reads the clock on its own (the balancer takes a clock), so every rule
is checked in plain unit tests:

- a `RouteTable` maps an OpenAI model name to the base URLs of the pods that serve it (the ready
  pods of a SpecServeDeployment, or backends given on the command line);
- `order_backends` ranks a model's backends for one request: healthy before recently failed,
  then fewest outstanding requests (least-outstanding-requests), then fewest requests served so
  far (so an idle pool alternates instead of always picking the first), then by URL;
- `Balancer` keeps those counts and the short-lived "down" marks between requests;
- `openai_error` builds error bodies in the shape OpenAI's API (and its clients) use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


class RouteError(ValueError):
    """A route given by the user (flag, file) that cannot be used; the message says why."""


def normalize_url(url: str) -> str:
    """`http(s)://host:port[/prefix]` without a trailing slash; RouteError otherwise."""
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RouteError(f"backend URL must look like http://host:port, got {url!r}")
    if parts.query or parts.fragment:
        raise RouteError(f"backend URL must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 (validates the port)
    except ValueError as exc:
        raise RouteError(f"bad port in backend URL {url!r}: {exc}") from None
    return text.rstrip("/")


@dataclass(frozen=True)
class Route:
    """One model name and the backends that serve it.

    `upstream_model`, when set, replaces `model` in the request body before it is forwarded (a
    model exposed under another name than the one its engines were started with).
    """

    model: str
    backends: tuple[str, ...] = ()
    upstream_model: str | None = None
    listed: bool = True  # in GET /v1/models (a `namespace/model` address is routed, not listed)


def qualified(namespace: str, model: str) -> str:
    """`namespace/model`: a namespace's model addressed explicitly. Namespace names cannot hold
    a `/`, so the first `/` splits it even when the model name has slashes (`org/model`)."""
    return f"{namespace}/{model}"


@dataclass(frozen=True)
class RouteConflict:
    """A claim of model name `model` by the resources `names` in `namespace` that is not routed
    by that name, because `holder` (the first claim, or another namespace's qualified address)
    has it. The claim stays reachable as `namespace/model`."""

    model: str
    namespace: str
    names: tuple[str, ...]
    holder: str

    def message(self) -> str:
        return (f"model name {self.model!r} of {self.namespace}/{','.join(self.names)} is "
                f"already served by {self.holder}; not routed by that name (address it as "
                f"{qualified(self.namespace, self.model)!r})")


@dataclass(frozen=True)
class RouteTable:
    """Model name -> Route. Immutable: sources build a new table on every change.
    `conflicts`: claims of a name that is not theirs (the cluster source), reported only."""

    routes: Mapping[str, Route] = field(default_factory=dict)
    conflicts: tuple[RouteConflict, ...] = ()

    @classmethod
    def from_mapping(
        cls,
        backends: Mapping[str, Iterable[str]],
        upstream: Mapping[str, str] | None = None,
    ) -> RouteTable:
        """{model: [url, ...]} (and optionally {model: upstream name}) -> a validated table."""
        upstream = dict(upstream or {})
        unknown = sorted(set(upstream) - set(backends))
        if unknown:
            raise RouteError(f"upstream model given for unknown model(s): {', '.join(unknown)}")
        routes: dict[str, Route] = {}
        for model, urls in backends.items():
            if not model or model != model.strip():
                raise RouteError(f"bad model name {model!r}")
            unique = sorted({normalize_url(u) for u in urls})
            routes[model] = Route(model, tuple(unique), upstream.get(model))
        return cls(routes)

    def get(self, model: str) -> Route | None:
        return self.routes.get(model)

    def models(self) -> list[str]:
        return sorted(self.routes)

    def listed_models(self) -> list[str]:
        return sorted(m for m, r in self.routes.items() if r.listed)

    def merged(self, other: RouteTable) -> RouteTable:
        """Both tables; a model in both gets the union of the backends (`other`'s rename wins)."""
        routes = dict(self.routes)
        for model, route in other.routes.items():
            mine = routes.get(model)
            if mine is None:
                routes[model] = route
            else:
                urls = tuple(sorted(set(mine.backends) | set(route.backends)))
                routes[model] = Route(model, urls, route.upstream_model or mine.upstream_model,
                                      mine.listed or route.listed)
        return RouteTable(routes, self.conflicts + other.conflicts)

    def to_json(self) -> dict[str, Any]:
        return {
            m: {"backends": list(r.backends), "upstreamModel": r.upstream_model}
            for m, r in sorted(self.routes.items())
        }


def parse_backend_flag(text: str) -> tuple[str, list[str]]:
    """`--backend MODEL=URL[,URL...]` -> (model, [url, ...])."""
    model, sep, urls = text.partition("=")
    model = model.strip()
    if not sep or not model or not urls.strip():
        raise RouteError(f"--backend wants MODEL=URL[,URL...], got {text!r}")
    return model, [normalize_url(u) for u in urls.split(",") if u.strip()]


def parse_upstream_flag(text: str) -> tuple[str, str]:
    """`--upstream-model MODEL=UPSTREAM` -> (model, upstream)."""
    model, sep, upstream = text.partition("=")
    if not sep or not model.strip() or not upstream.strip():
        raise RouteError(f"--upstream-model wants MODEL=UPSTREAM, got {text!r}")
    return model.strip(), upstream.strip()


def table_from_flags(backends: Sequence[str], upstream: Sequence[str] = ()) -> RouteTable:
    """Repeated `--backend` flags (a model may appear several times) -> RouteTable."""
    mapping: dict[str, list[str]] = {}
    for flag in backends:
        model, urls = parse_backend_flag(flag)
        mapping.setdefault(model, []).extend(urls)
    return RouteTable.from_mapping(mapping, dict(parse_upstream_flag(u) for u in upstream))


def table_from_document(doc: Any) -> RouteTable:
    """A routes file (YAML or JSON), either form:

        models:
          tiny: [http://10.0.0.5:8000, http://10.0.0.6:8000]
          chat: {backends: [http://10.0.0.7:8000], upstreamModel: qwen2.5-7b-instruct}
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise RouteError("a routes file needs a top-level `models:` mapping")
    backends: dict[str, list[str]] = {}
    upstream: dict[str, str] = {}
    for model, entry in doc["models"].items():
        if isinstance(entry, list):
            urls = entry
        elif isinstance(entry, dict):
            urls = entry.get("backends", [])
            extra = set(entry) - {"backends", "upstreamModel"}
            if extra:
                raise RouteError(f"models.{model}: unknown key(s) {', '.join(sorted(extra))}")
            if entry.get("upstreamModel"):
                upstream[str(model)] = str(entry["upstreamModel"])
        else:
            raise RouteError(f"models.{model}: want a list of URLs or {{backends: [...]}}")
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise RouteError(f"models.{model}: backends must be a list of URL strings")
        backends[str(model)] = urls
    return RouteTable.from_mapping(backends, upstream)


# ------------------------------------------------------------------------------- balancing


def order_backends(
    backends: Sequence[str],
    outstanding: Mapping[str, int],
    served: Mapping[str, int],
    down: Iterable[str] = (),
) -> list[str]:
    """The order in which to try a model's backends for one request (see the module doc).

    Backends marked down stay in the list, last: when every backend failed recently, trying
    them again beats refusing outright (one of them may be back).
    """
    down_set = set(down)
    return sorted(
        backends,
        key=lambda url: (url in down_set, outstanding.get(url, 0), served.get(url, 0), url),
    )


class Balancer:
    """Per-backend outstanding-request counts, totals and "down" marks, for one event loop.

    A backend that refused a connection is marked down for `down_for` seconds: later requests
    try it last, so a dead pod costs one failed connect, not one per request.
    """

    def __init__(self, down_for: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.down_for = down_for
        self.clock = clock
        self.outstanding: dict[str, int] = {}
        self.served: dict[str, int] = {}
        self.failures: dict[str, int] = {}
        self._down_until: dict[str, float] = {}

    def down(self) -> set[str]:
        now = self.clock()
        return {url for url, until in self._down_until.items() if until > now}

    def order(self, backends: Sequence[str]) -> list[str]:
        return order_backends(backends, self.outstanding, self.served, self.down())

    def acquire(self, url: str) -> Lease:
        self.outstanding[url] = self.outstanding.get(url, 0) + 1
        self.served[url] = self.served.get(url, 0) + 1
        return Lease(self, url)

    def _release(self, url: str) -> None:
        left = self.outstanding.get(url, 0) - 1
        if left > 0:
            self.outstanding[url] = left
        else:
            self.outstanding.pop(url, None)

    def mark_down(self, url: str) -> None:
        self.failures[url] = self.failures.get(url, 0) + 1
        self._down_until[url] = self.clock() + self.down_for

    def mark_up(self, url: str) -> None:
        self._down_until.pop(url, None)

    def snapshot(self, backends: Iterable[str]) -> dict[str, dict[str, Any]]:
        down = self.down()
        return {
            url: {
                "outstanding": self.outstanding.get(url, 0),
                "served": self.served.get(url, 0),
                "failures": self.failures.get(url, 0),
                "down": url in down,
            }
            for url in sorted(set(backends))
        }


class Lease:
    """One request's hold on a backend; `release()` is idempotent (streams end in two ways)."""

    def __init__(self, balancer: Balancer, url: str) -> None:
        self.balancer = balancer
        self.url = url
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self.balancer._release(self.url)


# ---------------------------------------------------------------------------------- errors


def openai_error(
    message: str, type_: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}`, as OpenAI's API returns errors."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def model_not_found(model: str) -> dict[str, Any]:
    return openai_error(
        f"The model `{model}` does not exist or is not served by this gateway.",
        "invalid_request_error",
        code="model_not_found",
        param="model",
    )


def invalid_request(message: str, param: str | None = None) -> dict[str, Any]:
    return openai_error(message, "invalid_request_error", code="invalid_request", param=param)


def backend_unavailable(model: str, detail: str) -> dict[str, Any]:
    return openai_error(
        f"No backend for model `{model}` is reachable right now ({detail}); retry later.",
        "server_error",
        code="backend_unavailable",
    )


def backend_timeout(model: str, seconds: float) -> dict[str, Any]:
    return openai_error(
        f"The backend for model `{model}` did not answer within {seconds:g}s.",
        "server_error",
        code="backend_timeout",
    )
