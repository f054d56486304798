"""Control-token rotation end to end, without an engine or a cluster: the operator recreates a
deleted token Secret with a new token; the kubelet swaps the pod's Secret volume (as its
AtomicWriter does); the engine's own ControlServer, reading the token from that file, refuses
the old token (401) and accepts the operator's push with the new one (200)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from specserve_contract import TOKEN_KEY
from specserve_engine.policy.params import Policy
from specserve_engine.policy_store import PolicyStore, TokenFile
from specserve_engine.vllm.control import ControlServer
from specserve_operator import names, push, reconcile
from specserve_operator.spec import parse_spec
from tests.kits.apiserver import MemoryApiServer
from tests.kits.kubelet import write_volume

OWNER = names.Owner(name="chat", namespace="prod", uid="uid-chat")
SPEC = parse_spec({"model": {"target": "org/target-1b", "draft": "org/draft-100m"}})


class Logger:
    def info(self, *_: Any) -> None:
        pass


def _token(api: MemoryApiServer) -> str:
    secret = api.get("v1", "Secret", OWNER.namespace, names.secret_name(OWNER))
    return base64.b64decode(secret["data"][TOKEN_KEY]).decode()


def _kubelet_sync(api: MemoryApiServer, volume: Path) -> None:
    """The kubelet publishing the Secret's current data in the pod's volume."""
    secret = api.get("v1", "Secret", OWNER.namespace, names.secret_name(OWNER))
    write_volume(volume, {k: base64.b64decode(v).decode() for k, v in secret["data"].items()})


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[tuple[PolicyStore, str, Path]]:
    """An engine pod's control server whose token is the mounted Secret's file."""
    volume = tmp_path / "control"
    write_volume(volume, {TOKEN_KEY: "placeholder"})
    store = PolicyStore(Policy(version=1, k_max=5), engine_k_max=5,
                        token=TokenFile(str(volume / TOKEN_KEY)))
    server = ControlServer(store, lambda: b"", "127.0.0.1", 0).start()
    try:
        yield store, f"http://127.0.0.1:{server.httpd.server_address[1]}", volume
    finally:
        server.stop()


def _doc(version: int) -> dict[str, Any]:
    return Policy(version=version, k_max=5).model_dump(mode="json")


async def test_a_recreated_secret_reaches_the_running_engine(
    engine: tuple[PolicyStore, str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, url, volume = engine
    monkeypatch.setattr(reconcile.kopf, "event", lambda *_, **__: None)
    api = MemoryApiServer(defaulting=True)
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Logger())  # type: ignore[arg-type]
    _kubelet_sync(api, volume)
    target = [push.PodTarget("chat-0", url)]
    old = _token(api)
    assert (await push.push_policy(target, _doc(2), old)).acknowledged == ["chat-0"]

    # The Secret is deleted; the next pass makes a new one with a new token.
    del api.objects[("Secret", names.secret_name(OWNER))]
    reconcile.reconcile_children(api, OWNER, SPEC, {}, Logger())  # type: ignore[arg-type]
    new = _token(api)
    assert new != old
    # Until the kubelet has synced the volume, the pod knows only the old token.
    early = await push.push_policy(target, _doc(3), new, retries=0)
    assert early.failed and early.failed[0].http_status == 401
    _kubelet_sync(api, volume)
    assert (await push.push_policy(target, _doc(3), new)).acknowledged == ["chat-0"]
    stale = await push.push_policy(target, _doc(4), old, retries=0)
    assert stale.failed and stale.failed[0].http_status == 401
    assert store.policy.version == 3
