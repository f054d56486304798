"""`python -m specserve_gateway`: run the gateway (uvicorn) with routes from flags, a file or
the cluster.

    python -m specserve_gateway --port 8080 --backend tiny=http://127.0.0.1:8000
    python -m specserve_gateway --routes routes.yaml
    python -m specserve_gateway --kubernetes [--namespace NS ...]   # in a pod
    python -m specserve_gateway --kubernetes --kube-api http://127.0.0.1:8001   # kubectl proxy
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import prometheus_client
import uvicorn

from specserve_gateway.app import GatewayConfig, create_app
from specserve_gateway.auth import ApiKeys
from specserve_gateway.holding import HoldConfig
from specserve_gateway.routing import RouteError, table_from_flags
from specserve_gateway.sources import CombinedSource, FileSource, RouteSource, StaticSource


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specserve_gateway", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--backend", action="append", default=[], metavar="MODEL=URL[,URL...]",
                   help="serve MODEL from these engine base URLs (repeatable)")
    p.add_argument("--upstream-model", action="append", default=[], metavar="MODEL=NAME",
                   help="send MODEL's requests to its backends as model NAME (repeatable)")
    p.add_argument("--routes", type=Path, metavar="FILE",
                   help="YAML/JSON routes file (`models: {name: [url, ...]}`), re-read on change")
    p.add_argument("--kubernetes", action="store_true",
                   help="route to the ready pods of every SpecServeDeployment (watches the API)")
    p.add_argument("--namespace", action="append", default=[],
                   help="with --kubernetes: only these namespaces (default: all)")
    p.add_argument("--kube-api", metavar="URL",
                   help="with --kubernetes: API server URL without auth (kubectl proxy); "
                   "default: the pod's service account")
    p.add_argument("--connect-timeout", type=float, default=2.0, metavar="S")
    p.add_argument("--read-timeout", type=float, default=600.0, metavar="S",
                   help="longest wait for a backend's next bytes")
    p.add_argument("--shutdown-timeout", type=float, default=None, metavar="S",
                   help="after SIGTERM, let open requests and streams finish for at most S "
                   "seconds before closing them (default: --read-timeout); keep it under the "
                   "pod's terminationGracePeriodSeconds minus its preStop sleep")
    p.add_argument("--retry-after", type=int, default=2, metavar="S",
                   help="Retry-After header of 503 answers")
    p.add_argument("--max-resumes", type=int, default=2, metavar="N",
                   help="continue a stream whose backend died on another backend at most N "
                   "times per request (0: end it with an error event)")
    p.add_argument("--request-deadline", type=float, default=600.0, metavar="S",
                   help="no resume starts later than S seconds after the request arrived")
    p.add_argument("--hold-queue", type=int, default=64, metavar="N",
                   help="requests held per model while it has no ready backend (scaled to "
                   "zero, pods loading); more get 503 at once; 0: never hold")
    p.add_argument("--hold-timeout", type=float, default=120.0, metavar="S",
                   help="longest hold for a ready backend before 503")
    p.add_argument("--api-keys-file", type=Path, metavar="PATH",
                   help="ask every request (but /health, /ready, /metrics) for "
                   "`Authorization: Bearer KEY`, KEY one of the file's lines; re-read when it "
                   "changes (a mounted Secret). Also, or instead: $SPECSERVE_GATEWAY_API_KEYS "
                   "(comma-separated)")
    p.add_argument("--log-level", default="info")
    return p


def build_source(args: argparse.Namespace) -> RouteSource:
    sources: list[RouteSource] = []
    if args.backend or args.upstream_model:
        sources.append(StaticSource(table_from_flags(args.backend, args.upstream_model)))
    if args.routes:
        sources.append(FileSource(args.routes))
    if args.kubernetes:
        from specserve_gateway.kube_routes import KubeApi, KubeSource

        api = KubeApi(args.kube_api) if args.kube_api else KubeApi.in_cluster()
        sources.append(KubeSource(api, args.namespace))
    if not sources:
        raise RouteError("no routes: give --backend, --routes or --kubernetes")
    return sources[0] if len(sources) == 1 else CombinedSource(sources)


def shutdown_timeout(args: argparse.Namespace) -> float:
    """Seconds uvicorn lets in-flight requests finish after SIGTERM: --shutdown-timeout, else
    --read-timeout (a request waiting that long on its backend may still finish)."""
    return args.read_timeout if args.shutdown_timeout is None else args.shutdown_timeout


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        source = build_source(args)
        api_keys = ApiKeys.from_options(args.api_keys_file)
    except (RouteError, RuntimeError, OSError) as exc:
        print(f"specserve-gateway: error: {exc}", file=sys.stderr)
        return 2
    config = GatewayConfig(connect_timeout=args.connect_timeout, read_timeout=args.read_timeout,
                           retry_after_s=args.retry_after, max_resumes=args.max_resumes,
                           request_deadline_s=args.request_deadline,
                           hold=HoldConfig(max_queued=args.hold_queue,
                                           max_wait_s=args.hold_timeout),
                           api_keys=api_keys)
    # Counters and histograms without their `<name>_created` series (process-wide): the
    # gateway's /metrics has only the series the dashboards and the operator read.
    prometheus_client.disable_created_metrics()
    uvicorn.run(create_app(source, config), host=args.host, port=args.port,
                log_level=args.log_level.lower(),
                timeout_graceful_shutdown=shutdown_timeout(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
