"""Fixtures for the operator tests: a kmock Kubernetes emulator the operator logs in to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Read when the operator starts (specserve_operator.config): refresh status every second.
os.environ.setdefault("SPECSERVE_STATUS_INTERVAL_S", "1")
# No /metrics server unless a test asks for one (test_operator_metrics.py).
os.environ.setdefault("SPECSERVE_METRICS_PORT", "0")

import kmock as kmock_lib
import kopf
import pytest

from tests.kits.operator_kit import Emulator, assign_uids, serve_the_crd

assign_uids()  # an API server gives every object a uid; kopf's indexes rely on it


# kopf's built-in login piggybacks on the kubernetes client, whose default kubeconfig path is
# fixed at import time; point kopf at the emulator explicitly instead. (The operator's own API
# client reads $KUBECONFIG when the operator starts, which the `cluster` fixture sets.)
@kopf.on.login()
def _login_to_emulator(**_: Any) -> kopf.ConnectionInfo:
    assert Emulator.url is not None, "the `cluster` fixture is not active"
    return kopf.ConnectionInfo(server=Emulator.url)


@pytest.fixture()
def cluster(
    kmock: kmock_lib.KubernetesEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> kmock_lib.KubernetesEmulator:
    serve_the_crd(kmock)
    url = str(kmock.url).rstrip("/")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters:\n- name: emulator\n  cluster:\n    server: {url}\n"
        "contexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: nobody\n"
        "users:\n- name: nobody\n  user: {}\n"
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    Emulator.url = url
    return kmock


