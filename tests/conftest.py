"""Shared fixtures: the tiny models and real vLLM engines, each started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess

K_MAX = 3


@pytest.fixture(scope="session")
def tiny_models() -> tiny.TinyModels:
    return tiny.build()


@pytest.fixture(scope="session")
def engines(tiny_models: tiny.TinyModels) -> Iterator[dict[str, ServerProcess]]:
    """Two real vLLM OpenAI servers on the tiny target: with draft-model speculation and without.

    Both start side by side (engine start is the slow part) and live for the whole session.
    """
    servers = {
        "spec": ServerProcess(
            ["--model", str(tiny_models.target), "--draft", str(tiny_models.draft),
             "--k-max", str(K_MAX), "--served-model-name", "tiny"], name="spec"),
        "plain": ServerProcess(
            ["--model", str(tiny_models.target), "--draft", "none",
             "--served-model-name", "tiny"], name="plain"),
    }
    try:
        for s in servers.values():
            s.start()
        for s in servers.values():
            s.wait_ready()
        yield servers
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(scope="session")
def spec_engine(engines: dict[str, ServerProcess]) -> ServerProcess:
    return engines["spec"]


@pytest.fixture(scope="session")
def plain_engine(engines: dict[str, ServerProcess]) -> ServerProcess:
    return engines["plain"]
