"""End to end on a local kind cluster: images, Prometheus, the chart, a tiny model, traffic.

    python e2e/run.py            # or `make e2e` (pytest e2e/, which skips without docker/kind)
    python e2e/run.py --keep     # leave the cluster running afterwards (kubectl --context kind-…)

Steps (each prints a `==>` line; any failure stops the run with the reason):
  1. create the kind cluster `specserve-e2e` (reused if it exists)
  2. build the engine image (vLLM CPU base of the tested version, tiny models baked in) and the
     operator/gateway image; load both into kind
  3. install the Prometheus Operator (release bundle) and a Prometheus that selects every
     ServiceMonitor/PodMonitor (e2e/prometheus.yaml)
  4. install charts/specserve with Helm's Go SDK (helm-python-sdk; no helm binary needed), with
     examples/chart-values.yaml (the operator's Prometheus is the e2e one) and the local image
  5. apply the tiny CPU SpecServeDeployment of examples/specserve.yaml, on the local engine
     image (its Prometheus is the operator's default); wait until it is Ready
  6. through the gateway (port-forward): /v1/models, a completion, a streamed chat completion,
     an unknown model (404)
  7. the policy loop: .status.policy.version >= 1 acknowledged by every ready pod
  8. scaling: drive concurrent load through the gateway until .status.replicas.desired grows

Needs docker (daemon running), kind and kubectl on PATH, network access for the base images and
the Prometheus Operator bundle, and about 8 GiB of memory for docker. Takes 20-40 minutes on a
laptop the first time (image builds), a few minutes when the images are cached.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = os.environ.get("SPECSERVE_E2E_CLUSTER", "specserve-e2e")
CONTEXT = f"kind-{CLUSTER}"
NAMESPACE = "specserve-system"
MODEL_NS = "default"
ENGINE_IMAGE = "specserve/engine:e2e"
OPERATOR_IMAGE = "specserve/operator:e2e"
VLLM_CPU_BASE = os.environ.get(
    "SPECSERVE_E2E_ENGINE_BASE", "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0")
PROMETHEUS_OPERATOR = os.environ.get("SPECSERVE_E2E_PROMETHEUS_OPERATOR", "v0.81.0")
PROMETHEUS_BUNDLE = ("https://github.com/prometheus-operator/prometheus-operator/releases/"
                     f"download/{PROMETHEUS_OPERATOR}/bundle.yaml")
# The Service the Prometheus Operator makes for e2e/prometheus.yaml's Prometheus; the operator's
# default Prometheus in examples/chart-values.yaml (tests/chart checks that they agree).
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090"
CHART_VALUES = ROOT / "examples" / "chart-values.yaml"
REQUIRED_TOOLS = ("docker", "kind", "kubectl")


class E2EError(RuntimeError):
    pass


def missing_prerequisites() -> list[str]:
    """Why the e2e cannot run here (empty when it can)."""
    problems = [f"`{tool}` is not on PATH" for tool in REQUIRED_TOOLS if not shutil.which(tool)]
    if shutil.which("docker"):
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
        if info.returncode != 0:
            problems.append("the docker daemon is not reachable (`docker info` failed)")
    try:
        import helm_python  # noqa: F401
    except ImportError:
        problems.append("helm-python-sdk is not installed (pip install helm-python-sdk)")
    return problems


# ------------------------------------------------------------------------------ helpers


def step(title: str) -> None:
    print(f"\n==> {title}", flush=True)


def sh(cmd: Sequence[str], *, input_text: str | None = None, check: bool = True,
       capture: bool = False) -> subprocess.CompletedProcess[str]:
    print("$ " + " ".join(cmd), flush=True)
    result = subprocess.run(list(cmd), input=input_text, text=True, check=False,
                            capture_output=capture)
    if check and result.returncode != 0:
        detail = (result.stderr or "")[-2000:] if capture else ""
        raise E2EError(f"command failed ({result.returncode}): {' '.join(cmd)}\n{detail}")
    return result


def kubectl(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return sh(["kubectl", "--context", CONTEXT, *args], **kw)


def kube_json(*args: str) -> dict[str, Any]:
    out = kubectl(*args, "-o", "json", capture=True).stdout
    return json.loads(out)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (E2EError, ValueError, KeyError) as exc:
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise E2EError(f"timed out after {timeout_s:.0f}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def port_forward(target: str, namespace: str, remote_port: int) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        ["kubectl", "--context", CONTEXT, "-n", namespace, "port-forward", target,
         f"{port}:{remote_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        wait_for(f"port-forward to {target}",
                 lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60, 1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# -------------------------------------------------------------------------------- steps


def create_cluster() -> None:
    step(f"kind cluster {CLUSTER}")
    clusters = sh(["kind", "get", "clusters"], capture=True).stdout.split()
    if CLUSTER in clusters:
        print(f"reusing {CLUSTER}")
    else:
        sh(["kind", "create", "cluster", "--name", CLUSTER, "--wait", "120s"])


def build_images() -> None:
    step("images")
    sh(["docker", "build", "-f", "engine/Dockerfile", "-t", ENGINE_IMAGE,
        "--build-arg", f"BASE_IMAGE={VLLM_CPU_BASE}", "--build-arg", "BUILD_TINY_MODELS=true",
        str(ROOT)])
    sh(["docker", "build", "-f", "operator/Dockerfile", "-t", OPERATOR_IMAGE, str(ROOT)])
    for image in (ENGINE_IMAGE, OPERATOR_IMAGE):
        sh(["kind", "load", "docker-image", image, "--name", CLUSTER])


def install_prometheus() -> None:
    step(f"Prometheus Operator {PROMETHEUS_OPERATOR} and a Prometheus")
    kubectl("apply", "--server-side", "-f", PROMETHEUS_BUNDLE)
    kubectl("wait", "--for=condition=Available", "deployment/prometheus-operator",
            "-n", "default", "--timeout=300s")
    kubectl("create", "namespace", "monitoring", check=False, capture=True)
    wait_for("the Prometheus CRD", lambda: kubectl(
        "get", "crd", "prometheuses.monitoring.coreos.com", check=False, capture=True
    ).returncode == 0, 120)
    kubectl("apply", "-f", str(ROOT / "e2e" / "prometheus.yaml"))
    wait_for("Prometheus pod", lambda: kubectl(
        "-n", "monitoring", "wait", "--for=condition=Ready", "pod",
        "-l", "app.kubernetes.io/name=prometheus", "--timeout=10s", check=False, capture=True,
    ).returncode == 0, 300)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base` (maps key by key, as Helm merges values files)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def chart_values() -> dict[str, Any]:
    """examples/chart-values.yaml (the operator's Prometheus, Secrets in MODEL_NS) and the local
    image, shorter intervals, the gateway's ServiceMonitor."""
    repo, tag = OPERATOR_IMAGE.split(":")
    return merged(yaml.safe_load(CHART_VALUES.read_text()), {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        "operator": {"statusIntervalSeconds": 5, "logLevel": "verbose"},
        "monitoring": {"serviceMonitor": {"enabled": True, "interval": "5s"}},
    })


def adopt_crd(release: str) -> None:
    """A cluster kept from a run of chart 0.1 (or an earlier `kubectl apply`) has the CRD from
    the chart's crds/, which Helm does not own; chart 0.2 renders it as a template, and Helm
    refuses to install or upgrade over an object without its ownership metadata. Hand it
    over (docs/helm.md#the-crd-and-upgrades)."""
    crd = "crd/specservedeployments.specserve.io"
    if kubectl("get", crd, check=False, capture=True).returncode != 0:
        return
    kubectl("label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm")
    kubectl("annotate", "--overwrite", crd, f"meta.helm.sh/release-name={release}",
            f"meta.helm.sh/release-namespace={NAMESPACE}")


def install_chart() -> None:
    step("helm install charts/specserve (Helm Go SDK)")
    import helm_python

    kubeconfig = sh(["kind", "get", "kubeconfig", "--name", CLUSTER], capture=True).stdout
    config = helm_python.Config(kubeconfig_content=kubeconfig, namespace=NAMESPACE)
    chart = helm_python.Chart.load(ROOT / "charts" / "specserve")
    adopt_crd("specserve")
    if any(release.get("name") == "specserve" for release in config.list()):
        config.upgrade(chart, "specserve", chart_values(), namespace=NAMESPACE, wait="watcher",
                       timeout=300)
    else:
        config.install(chart, "specserve", chart_values(), namespace=NAMESPACE,
                       create_namespace=True, wait="watcher", timeout=300)
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/specserve-operator",
            "--timeout=300s")
    kubectl("-n", NAMESPACE, "rollout", "status", "deployment/specserve-gateway",
            "--timeout=300s")


def tiny_resource() -> dict[str, Any]:
    """The tiny CPU example, on the local engine image and the e2e Prometheus."""
    docs = list(yaml.safe_load_all((ROOT / "examples" / "specserve.yaml").read_text()))
    (tiny,) = [d for d in docs if d and d["metadata"]["name"] == "tiny"]
    spec = tiny["spec"]
    spec["image"] = ENGINE_IMAGE
    spec["imagePullPolicy"] = "Never"
    # No prometheusUrl: the operator's default (chart_values), which its allow-list admits.
    spec.setdefault("metrics", {})["scrapeInterval"] = "5s"
    spec["replicas"] = {"min": 1, "max": 2, "initial": 1}
    return tiny


def condition(obj: dict[str, Any], type_: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


def deploy_model() -> None:
    step("SpecServeDeployment tiny (CPU)")
    kubectl("-n", MODEL_NS, "apply", "-f", "-", input_text=yaml.safe_dump(tiny_resource()))

    def ready() -> bool:
        obj = kube_json("-n", MODEL_NS, "get", "ssd", "tiny")
        status = obj.get("status") or {}
        print(f"   phase={status.get('phase')} replicas={status.get('replicas')}", flush=True)
        return condition(obj, "Ready") == "True"

    wait_for("ssd/tiny Ready", ready, timeout_s=1800, every_s=10)
    kubectl("-n", MODEL_NS, "get", "ssd,deploy,svc,pods", "-o", "wide")


def check_gateway() -> None:
    step("requests through the gateway")
    import httpx
    import openai

    with port_forward("svc/specserve-gateway", NAMESPACE, 80) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                               timeout=300)
        wait_for("model tiny in /v1/models", lambda: "tiny" in {
            m.id for m in client.models.list().data}, 120)
        wait_for("a ready tiny backend", lambda: httpx.get(
            f"{url}/gateway/routes").json()["models"]["tiny"]["backends"], 120)
        out = client.completions.create(model="tiny", prompt="def main():\n    ",
                                        max_tokens=24, temperature=0)
        print(f"   completion: {out.choices[0].text!r}")
        if not out.choices[0].text:
            raise E2EError("empty completion")
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "import os"}], max_tokens=16,
            temperature=0, stream=True) if c.choices]
        print(f"   streamed {len(pieces)} chunks: {''.join(pieces)!r}")
        if len(pieces) < 2:
            raise E2EError("the stream did not arrive in pieces")
        try:
            client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        except openai.NotFoundError as exc:
            print(f"   unknown model -> 404 {exc.code}")
        else:
            raise E2EError("an unknown model did not give 404")


def check_policy_acknowledged() -> None:
    step("policy loop: a version acknowledged by the pods")

    def acked() -> bool:
        obj = kube_json("-n", MODEL_NS, "get", "ssd", "tiny")
        policy = (obj.get("status") or {}).get("policy") or {}
        ready = ((obj.get("status") or {}).get("replicas") or {}).get("ready", 0)
        print(f"   policy={policy} ready={ready} PolicyApplied={condition(obj, 'PolicyApplied')}")
        return (policy.get("version", 0) >= 1 and ready >= 1
                and policy.get("appliedPods", 0) >= ready)

    wait_for("status.policy.appliedPods", acked, timeout_s=300, every_s=10)


def check_scaling() -> None:
    step("scaling reacts to load")
    import httpx

    stop = threading.Event()
    sent = [0]

    def load(url: str) -> None:
        with httpx.Client(timeout=300) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    client.post(f"{url}/v1/completions", json={
                        "model": "tiny", "prompt": "class Server:\n    ", "max_tokens": 64})
                    sent[0] += 1

    with port_forward("svc/specserve-gateway", NAMESPACE, 80) as url:
        workers = [threading.Thread(target=load, args=(url,), daemon=True) for _ in range(16)]
        for worker in workers:
            worker.start()
        try:
            def scaled_up() -> bool:
                obj = kube_json("-n", MODEL_NS, "get", "ssd", "tiny")
                replicas = (obj.get("status") or {}).get("replicas") or {}
                print(f"   requests={sent[0]} replicas={replicas} "
                      f"slo={(obj.get('status') or {}).get('sloSnapshot')}", flush=True)
                return replicas.get("desired", 1) > 1

            wait_for("status.replicas.desired > 1 under load", scaled_up, timeout_s=900,
                     every_s=15)
        finally:
            stop.set()
            for worker in workers:
                worker.join(310)


def delete_cluster() -> None:
    step(f"deleting kind cluster {CLUSTER}")
    sh(["kind", "delete", "cluster", "--name", CLUSTER], check=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the cluster afterwards")
    parser.add_argument("--skip-build", action="store_true",
                        help="use the images already loaded into the cluster")
    args = parser.parse_args(argv)
    problems = missing_prerequisites()
    if problems:
        print("e2e cannot run here: " + "; ".join(problems), file=sys.stderr)
        return 2
    os.chdir(ROOT)
    try:
        create_cluster()
        if not args.skip_build:
            build_images()
        install_prometheus()
        install_chart()
        deploy_model()
        check_gateway()
        check_policy_acknowledged()
        check_scaling()
    except E2EError as exc:
        print(f"\ne2e FAILED: {exc}", file=sys.stderr)
        kubectl("get", "pods", "-A", check=False)
        kubectl("-n", NAMESPACE, "logs", "deployment/specserve-operator", "--tail=80",
                check=False)
        return 1
    finally:
        if not args.keep:
            delete_cluster()
    print("\ne2e passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
