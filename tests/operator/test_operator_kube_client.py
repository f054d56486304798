"""The Kubernetes client against a server that accepts connections and never answers: a call
ends with a KubeError (status 0) after the read timeout instead of hanging its handler."""

from __future__ import annotations

import time

import pytest
from kubernetes import client

from specserve_operator import kube_client
from specserve_operator.kube_client import KubeClient, KubeError
from tests.kits.gateway_kit import silent_port


def test_an_unanswered_call_raises_kube_error_after_the_read_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube_client, "REQUEST_TIMEOUT_S", (1.0, 0.5))
    with silent_port() as url:
        configuration = client.Configuration()
        configuration.host = url
        configuration.retries = False
        api = KubeClient(client.ApiClient(configuration))
        started = time.monotonic()
        with pytest.raises(KubeError) as err:
            api.get("v1", "ConfigMap", "ns1", "x")
    assert err.value.status == 0
    assert "no response" in str(err.value)
    assert "GET /api/v1/namespaces/ns1/configmaps/x" in str(err.value)
    assert time.monotonic() - started < 10  # the timeout ended it, not the test's patience
