"""The operator's API load against the kmock emulator: N SpecServeDeployments, measured.

    PYTHONPATH=contract:engine:operator:gateway:. python bench/operator_api_load.py -n 100
    python bench/operator_api_load.py --slo-pass -n 1000 [--legacy | --new] [--fake-prometheus]
        the SLO timer's pass alone, legacy vs new side by side (issue #24; see `slo_pass`)

Runs the real operator (kopf, in a thread, as tests/kits/operator_kit does) against kmock,
creates N resources at once, waits until every one has its children and a .status, then
counts every request the emulator receives for `--window` seconds of steady state (the
status timer every SPECSERVE_STATUS_INTERVAL_S, the SLO loop every SPECSERVE_SLO_INTERVAL_S,
no Prometheus, no pods). Prints:

  create latency    POST of the resource -> all its children and .status.phase present
                    (p50/p99/max over the N resources; polled every 50 ms)
  reconcile         duration of each `reconcile.reconcile` call (one pass of one resource:
                    create/resume handlers and status-timer passes), p50/p99, in the create
                    phase and in steady state
  requests/min      per resource, in steady state, by verb and kind (watch streams are
                    counted when opened, not per event)

kmock answers every request in its own Python event loop on the same CPUs as the operator,
so absolute latencies say more about this machine than about an API server; requests per
resource per minute do not depend on the machine. kmock 0.8 decides which reaction answers a
request by scanning every request it has recorded (`request in view`, O(requests so far) per
request, so a run slows down quadratically); `fast_membership` answers that question from the
view chain instead (same answers for the Filter/Priority chains the emulator's reactions use),
else the emulator, not the operator, would be what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / p) for p in ("contract", "engine", "operator", "gateway", "")]


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _kind(path: str) -> str:
    """The resource a request path names ("deployments", "secrets", "discovery", ...)."""
    parts = path.strip("/").split("/")
    if "namespaces" in parts:
        rest = parts[parts.index("namespaces") + 2:]
        if not rest:
            return "namespaces"
        return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    if (parts[:1] == ["api"] and len(parts) <= 2) or (parts[:1] == ["apis"] and len(parts) <= 3):
        return "discovery"
    return parts[-1]


def _verb(request: Any) -> str:
    method = str(request.method.value if hasattr(request.method, "value") else request.method)
    if method == "GET" and request.params.get("watch") in ("true", "1"):
        return "WATCH"
    return method


def fast_membership() -> None:
    """`request in view` for kmock's Filter/Priority chains without scanning the request log:
    a request arriving at the root is in a Filter view iff the filter's criteria accept it."""
    from kmock._internal import dsl, rendering

    original = dsl.View.__contains__

    def contains(self: Any, item: Any) -> bool:
        if not isinstance(item, rendering.Request):
            return original(self, item)
        view = self
        while True:
            if type(view) is dsl.Filter:
                if not view.criteria(item):
                    return False
                view = view._source
            elif type(view) in (dsl.Priority, dsl.Chained):
                view = view._source
            elif isinstance(view, dsl.Root):
                return any(r is item for r in reversed(view._requests))
            else:
                return original(self, item)

    dsl.View.__contains__ = contains  # type: ignore[method-assign]


async def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if "--slo-pass" in argv:  # the SLO loop's pass alone (below)
        return await slo_pass(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=100, help="resources (default 100)")
    parser.add_argument("--window", type=float, default=60.0,
                        help="seconds of steady state counted (default 60)")
    parser.add_argument("--status-interval", type=float, default=15.0)
    parser.add_argument("--slo-interval", type=float, default=30.0)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--slow-kmock", action="store_true",
                        help="keep kmock's request-log scan (see the module docstring)")
    args = parser.parse_args(argv)

    # Read when the operator starts (specserve_operator.config).
    os.environ["SPECSERVE_STATUS_INTERVAL_S"] = str(args.status_interval)
    os.environ["SPECSERVE_SLO_INTERVAL_S"] = str(args.slo_interval)
    os.environ["SPECSERVE_METRICS_PORT"] = "0"

    import kmock as kmock_lib
    import kopf

    if not args.slow_kmock:
        fast_membership()

    from tests.kits import operator_kit as kit

    from specserve_operator import handlers

    kit.assign_uids()

    @kopf.on.login()
    def _login(**_: Any) -> kopf.ConnectionInfo:
        assert kit.Emulator.url is not None
        return kopf.ConnectionInfo(server=kit.Emulator.url)

    durations: list[tuple[float, float]] = []  # (start, seconds) of every reconcile pass
    original = handlers.reconcile

    def timed(*a: Any, **kw: Any) -> str:
        start = time.monotonic()
        try:
            return original(*a, **kw)
        finally:
            durations.append((start, time.monotonic() - start))

    handlers.reconcile = timed  # type: ignore[assignment]

    spec = {"model": {"target": "org/target-1b", "draft": "org/draft-100m"},
            "replicas": {"min": 1, "max": 3, "initial": 1}, "autoscaling": {"mode": "off"}}
    names = [f"load-{i:03d}" for i in range(args.n)]
    children = [(kit.DEPLOYMENTS, "{}"), (kit.SERVICES, "{}"), (kit.SECRETS, "{}-control"),
                (kit.CONFIGMAPS, "{}-policy"), (kit.PDBS, "{}")]

    async with kmock_lib.KubernetesEmulator() as emu, kmock_lib.Server(emu):
        kit.serve_the_crd(emu)
        kit.add_servicemonitor_crd(emu)  # the chart's default: ServiceMonitors managed
        url = str(emu.url).rstrip("/")
        with tempfile.TemporaryDirectory() as tmp:
            kubeconfig = Path(tmp) / "kubeconfig"
            kubeconfig.write_text(
                "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
                f"clusters:\n- name: emulator\n  cluster:\n    server: {url}\n"
                "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n"
                "    user: nobody\nusers:\n- name: nobody\n  user: {}\n")
            os.environ["KUBECONFIG"] = str(kubeconfig)
            kit.Emulator.url = url
            async with kit.running_operator():
                await asyncio.sleep(2)  # let kopf list and open its watches
                created: dict[str, float] = {}
                for name in names:
                    created[name] = time.monotonic()
                    await kit.create(emu, kit.ssd(name, spec))
                ready: dict[str, float] = {}
                deadline = time.monotonic() + 600
                while len(ready) < len(names) and time.monotonic() < deadline:
                    now = time.monotonic()
                    for name in names:
                        if name in ready:
                            continue
                        body = kit.live(emu, kit.SSD, name) or {}
                        if (body.get("status") or {}).get("phase") and all(
                                kit.live(emu, res, pattern.format(name))
                                for res, pattern in children):
                            ready[name] = now
                    await asyncio.sleep(0.05)
                settled = time.monotonic()
                # One status interval more: the first timer passes after create are not steady.
                await asyncio.sleep(args.status_interval)
                mark, start = len(list(emu)), time.monotonic()
                await asyncio.sleep(args.window)
                window = time.monotonic() - start
                requests = list(emu)[mark:]

    latency = [ready[n] - created[n] for n in ready]
    create_phase = [d for s, d in durations if s < settled]
    steady = [d for s, d in durations if s >= start]
    per = collections.Counter(f"{_verb(r)} {_kind(r.url.path)}" for r in requests)
    scale = 1.0 / args.n / (window / 60.0)
    result = {
        "resources": args.n, "ready": len(ready), "window_s": round(window, 1),
        "status_interval_s": args.status_interval, "slo_interval_s": args.slo_interval,
        "create_latency_s": {"p50": _percentile(latency, 0.5), "p99": _percentile(latency, 0.99),
                             "max": max(latency, default=float("nan"))},
        "reconcile_s": {
            "create_phase": {"count": len(create_phase), "p50": _percentile(create_phase, 0.5),
                             "p99": _percentile(create_phase, 0.99)},
            "steady": {"count": len(steady), "p50": _percentile(steady, 0.5),
                       "p99": _percentile(steady, 0.99),
                       "mean": statistics.fmean(steady) if steady else float("nan")}},
        "requests_per_resource_per_min": {
            "total": round(len(requests) * scale, 2),
            "GET": round(sum(c for k, c in per.items() if k.startswith("GET ")) * scale, 2),
            "by_kind": {k: round(c * scale, 2) for k, c in sorted(per.items())}},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


# ------------------------------------------------------------------ --slo-pass: the SLO loop
# The SLO timer's pass (handlers.slo_loop, minus kopf) for N resources at once against the
# in-memory API server (tests/kits/apiserver.MemoryApiServer, every call counted) and a
# Prometheus (the real Debian `prometheus` with an empty TSDB, every query counted; `--fake-
# prometheus`: an in-process httpx MockTransport instead). Each resource has its ConfigMap,
# token Secret, Deployment and `--pods` ready pods whose control port refuses connections
# (the push fails fast, as a pod that is not up yet). Legacy = the pass before issue #24:
# each resource's own ~24 queries, every stamp rewritten every pass; new = one grouped round
# shared by all (`prometheus.GroupedSnapshots`), stamps kept while nothing changed.

SLO_DOC = """requests per resource per minute = API requests (or queries) in a steady-state pass
/ N x 60 / --slo-interval; pass p99 = the 99th percentile over the N resources of one pass's
wall time (slo_iteration + status write + scale), with the N passes started spread uniformly over
--spread seconds (kopf's timers are not aligned)."""


class CountingApi:
    """A KubeClient stand-in over MemoryApiServer that counts calls by (verb, kind) and
    answers pod listings from its pods."""

    def __init__(self, server: Any, pods: dict[tuple[str, str], list[dict[str, Any]]]) -> None:
        import threading
        self.server = server
        self.pods = pods
        self.calls: collections.Counter[tuple[str, str]] = collections.Counter()
        self._lock = threading.Lock()

    def _count(self, verb: str, kind: str) -> None:
        with self._lock:
            self.calls[verb, kind] += 1

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Any:
        self._count("GET", kind)
        return self.server.get(api_version, kind, namespace, name)

    def patch(self, api_version: str, kind: str, namespace: str, name: str,
              body: dict[str, Any], subresource: str | None = None) -> Any:
        self._count("PATCH", kind + (f"/{subresource}" if subresource else ""))
        return self.server.patch(api_version, kind, namespace, name, body, subresource or "")

    def request(self, method: str, path: str, *_: Any) -> Any:
        from urllib.parse import parse_qs, unquote, urlsplit
        self._count(f"{method} (list)" if "/pods" in path else method, path.split("?")[0]
                    .rsplit("/", 1)[-1])
        parts = urlsplit(path)
        namespace = parts.path.split("/")[4]
        selector = unquote(parse_qs(parts.query).get("labelSelector", [""])[0])
        instance = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv).get(
            "app.kubernetes.io/instance", "")
        return {"items": self.pods.get((namespace, instance), [])}


def _refused_port() -> tuple[Any, int]:
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused at once
    return sock, sock.getsockname()[1]


def _cluster(n: int, pods_per: int) -> tuple[Any, list[Any], dict]:
    import base64 as b64

    from tests.kits.apiserver import MemoryApiServer

    from specserve_contract import KIND, POLICY_KEY, TOKEN_KEY
    from specserve_engine.policy.params import Policy
    from specserve_operator.names import (
        Owner,
        configmap_name,
        deployment_name,
        secret_name,
        selector_labels,
    )

    server = MemoryApiServer()
    owners, pods = [], {}
    for i in range(n):
        owner = Owner(f"r{i}", f"ns{i % 10}", f"uid-{i}")  # MemoryApiServer keys by name
        owners.append(owner)
        ref = [{"uid": owner.uid, "controller": True, "kind": KIND, "name": owner.name}]
        meta = {"namespace": owner.namespace, "ownerReferences": ref}
        server.put({"apiVersion": "specserve.io/v1alpha1", "kind": KIND,
                    "metadata": {"name": owner.name, "namespace": owner.namespace,
                                 "uid": owner.uid},
                    "spec": {"model": {"target": "tiny", "draft": "tiny"}},
                    "status": {"phase": "Running"}})
        server.put({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": configmap_name(owner), **meta},
                    "data": {POLICY_KEY: Policy(version=1).model_dump_json()}})
        server.put({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": secret_name(owner), **meta},
                    "data": {TOKEN_KEY: b64.b64encode(b"token").decode()}})
        server.put({"apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {"name": deployment_name(owner), **meta},
                    "spec": {"replicas": 1}})
        pods[owner.namespace, owner.name] = [
            {"metadata": {"name": f"{owner.name}-{j}", "namespace": owner.namespace,
                          "labels": selector_labels(owner)},
             "status": {"phase": "Running", "podIP": "127.0.0.1",
                        "conditions": [{"type": "Ready", "status": "True"}]}}
            for j in range(pods_per)]
    return server, owners, pods


async def _slo_passes(args: argparse.Namespace, legacy: bool, prom_url: str,
                      transport: Any) -> dict[str, Any]:
    import random

    from specserve_operator import prometheus, slo_loop
    from specserve_operator.children import Children
    from specserve_operator.config import LoopConfig
    from specserve_operator.reconcile import write_status
    from specserve_operator.spec import parse_spec
    from specserve_operator.status import SLO_LOOP

    server, owners, pods = _cluster(args.n, args.pods)
    api = CountingApi(server, pods)
    sock, refused = _refused_port()
    queries = collections.Counter()
    if transport is not None:  # count queries at the fake
        real_client = prometheus.PrometheusClient
        slo_loop.PrometheusClient = lambda *a, **kw: real_client(*a, **kw, transport=transport)
    else:
        import httpx
        hook_transport = httpx.AsyncHTTPTransport()

        class Counting(httpx.AsyncBaseTransport):
            async def handle_async_request(self, request: Any) -> Any:
                queries["query"] += 1
                return await hook_transport.handle_async_request(request)
        counting = Counting()
        real_client = prometheus.PrometheusClient
        slo_loop.PrometheusClient = lambda *a, **kw: real_client(*a, **kw, transport=counting)
    cfg = LoopConfig(prometheus_url=prom_url, retries=0, push_timeout_s=1.0,
                     address=lambda pod: f"http://127.0.0.1:{refused}")
    spec = parse_spec({"model": {"target": "tiny", "draft": "tiny"}})
    clock = [0.0]
    grouped = None if legacy else prometheus.GroupedSnapshots(args.slo_interval / 2,
                                                              clock=lambda: clock[0])
    slo_loop.kopf.event = lambda *a, **kw: None  # no kopf here

    class Quiet:
        def info(self, line: str) -> None:
            return None

    def index(kind: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
        return {(o["metadata"]["namespace"], o["metadata"]["name"]): [o]
                for (k, _), o in server.objects.items() if k == kind}

    rng = random.Random(0)
    results = []
    for number in range(args.passes):
        # What kopf's watches hold (handlers: children.WATCHED, PODS, SECRETS); --no-pod-index:
        # the pods LISTed and the token GET as before.
        indexes = {"specserve_configmaps": index("ConfigMap"),
                   "specserve_deployments": index("Deployment")}
        if not legacy and not args.no_pod_index:
            indexes |= {"specserve_secrets": index("Secret"), "specserve_pods": pods}
        reads = Children(api, indexes)
        api.calls.clear()
        queries.clear()
        before = _count_queries(transport)
        offsets = sorted(rng.uniform(0, args.spread) for _ in owners)
        durations: list[float] = []

        async def one(owner: Any, delay: float, number: int = number,
                      reads: Children = reads, durations: list[float] = durations) -> None:
            await asyncio.sleep(delay)
            started = time.perf_counter()
            body = server.get("specserve.io/v1alpha1", "SpecServeDeployment", owner.namespace,
                              owner.name)
            old = dict(body.get("status") or {})
            stamp = f"2026-01-01T00:{number:02d}:00Z"
            new = await slo_loop.slo_iteration(api, owner, spec, body, old, Quiet(), cfg, stamp,
                                               reads, grouped)
            if not legacy:
                new = slo_loop.keep_stamps(old, new)
            await asyncio.to_thread(write_status, api, owner, SLO_LOOP, lambda fresh: new, body)
            await slo_loop.apply_scale(api, owner, spec, new, reads)
            durations.append(time.perf_counter() - started)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(o, d) for o, d in zip(owners, offsets, strict=True)))
        wall = time.perf_counter() - t0
        clock[0] += args.slo_interval
        print(f"  {'legacy' if legacy else 'new'} pass {number + 1}: {wall:.1f} s",
              file=sys.stderr, flush=True)
        n_queries = queries["query"] if transport is None else _count_queries(transport) - before
        results.append({"pass": number + 1, "wall_s": wall, "api": dict(
            (f"{v} {k}", c) for (v, k), c in sorted(api.calls.items())),
            "api_requests": sum(api.calls.values()), "prometheus_queries": n_queries,
            "p50_s": _percentile(durations, 0.5), "p99_s": _percentile(durations, 0.99)})
    sock.close()
    return {"legacy": legacy, "passes": results}


def _count_queries(transport: Any) -> int:
    return getattr(transport, "count", 0) if transport is not None else 0


def _fake_prometheus() -> Any:
    """An in-process Prometheus: every query answers an empty vector, counted."""
    import httpx

    class Fake(httpx.AsyncBaseTransport):
        count = 0

        async def handle_async_request(self, request: Any) -> Any:
            Fake.count += 1
            return httpx.Response(200, json={"status": "success",
                                             "data": {"resultType": "vector", "result": []}})
    return Fake()


async def slo_pass(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="the SLO loop's pass at N resources",
                                     epilog=SLO_DOC)
    parser.add_argument("--slo-pass", action="store_true")
    parser.add_argument("-n", type=int, default=1000, help="resources (default 1000)")
    parser.add_argument("--pods", type=int, default=1, help="ready pods per resource")
    parser.add_argument("--passes", type=int, default=2,
                        help="passes (the first writes the first status; the last is reported)")
    parser.add_argument("--slo-interval", type=float, default=30.0)
    parser.add_argument("--spread", type=float, default=10.0,
                        help="seconds over which a pass's N timers start")
    parser.add_argument("--legacy", action="store_true", help="only the old path")
    parser.add_argument("--new", action="store_true", help="only the new path")
    parser.add_argument("--no-pod-index", action="store_true",
                        help="new path without the pod and Secret indexes (LIST + GET per pass)")
    parser.add_argument("--fake-prometheus", action="store_true",
                        help="an in-process fake instead of the Debian prometheus")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from tests.kits.prometheus_kit import Prometheus, prometheus_binary

    prom = None
    transport = None
    binary = None if args.fake_prometheus else prometheus_binary()
    if binary is None:
        transport, url, which = _fake_prometheus(), "http://prometheus.fake:9090", "fake"
    else:
        prom = Prometheus(binary, [], Path(tempfile.mkdtemp(prefix="slo-bench-")))
        prom.wait_ready()
        url, which = prom.url, f"Debian prometheus ({binary}), empty TSDB"
    try:
        runs = [await _slo_passes(args, legacy, url, transport)
                for legacy in ((True,) if args.legacy else (False,) if args.new
                               else (True, False))]
    finally:
        if prom is not None:
            prom.stop()
    per_min = 60.0 / args.slo_interval / args.n
    print(f"SLO pass, N={args.n}, {args.pods} pod(s) each, interval {args.slo_interval:g} s, "
          f"spread {args.spread:g} s, Prometheus: {which}")
    header = f"{'':34}" + "".join(f"{'legacy' if r['legacy'] else 'new':>14}" for r in runs)
    print(header)
    rows = [("API requests / resource / min", lambda p: f"{p['api_requests'] * per_min:.2f}"),
            ("Prometheus queries / resource / min",
             lambda p: f"{p['prometheus_queries'] * per_min:.2f}"),
            ("Prometheus queries / pass", lambda p: f"{p['prometheus_queries']}"),
            ("pass p50 s", lambda p: f"{p['p50_s']:.3f}"),
            ("pass p99 s", lambda p: f"{p['p99_s']:.3f}"),
            ("pass wall s", lambda p: f"{p['wall_s']:.1f}")]
    for label, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt(r['passes'][-1]):>14}" for r in runs))
    for r in runs:
        print(f"{'legacy' if r['legacy'] else 'new'} API calls in the last pass: "
              f"{json.dumps(r['passes'][-1]['api'])}")
    out = {"n": args.n, "prometheus": which, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    asyncio.run(main())
