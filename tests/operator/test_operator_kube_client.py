"""The Kubernetes client against a server that accepts connections and never answers: a call
ends with a KubeError (status 0) after the read timeout instead of hanging its handler."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from specserve_operator import kube_client
from specserve_operator.kube_client import KubeClient, KubeError


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """Accepts TCP connections, reads nothing, answers nothing (a wedged proxy)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        sock.close()


def test_an_unanswered_call_raises_kube_error_after_the_read_timeout(
    silent_server: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kube_client, "REQUEST_TIMEOUT_S", (1.0, 0.5))
    configuration = client.Configuration()
    configuration.host = silent_server
    configuration.retries = False
    api = KubeClient(client.ApiClient(configuration))
    started = time.monotonic()
    with pytest.raises(KubeError) as err:
        api.get("v1", "ConfigMap", "ns1", "x")
    assert err.value.status == 0
    assert "no response" in str(err.value) and "GET /api/v1/namespaces/ns1/configmaps/x" in str(
        err.value)
    assert time.monotonic() - started < 10  # the timeout ended it, not the test's patience
