"""The operator's API load against the kmock emulator: N SpecServeDeployments, measured.

    PYTHONPATH=contract:engine:operator:gateway:. python bench/operator_api_load.py -n 100

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


if __name__ == "__main__":
    asyncio.run(main())
