"""The engine fixtures: the tiny models and real vLLM engines, each started once per test session.

Loaded for every test folder by tests/conftest.py (the gateway and SLO-loop tests drive the same
engines). A test that asks for an engine must carry the `engine` marker; conftest checks it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import httpx
import pytest

from specserve_contract import ENV_CONTROL_TOKEN, ENV_TEST_DTYPE, POLICY_PATH
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess, free_port
from tests.kits.engine_kit import Control

K_MAX = 4
# Tests check behaviour, not speed: eager mode skips torch.compile, which takes minutes per
# engine on a cold compile cache (a fresh CI machine) and seconds of saving afterwards.
FAST_START = ("--", "--enforce-eager")
# The engines' dtype: "auto" is this machine's default (bf16 where the CPU has native bf16,
# float32 elsewhere); set SPECSERVE_TEST_DTYPE=bfloat16 or float32 to meet the other machine
# kind's numerics.
DTYPE = os.environ.get(ENV_TEST_DTYPE, "auto")


@pytest.fixture(scope="session")
def tiny_models() -> tiny.TinyModels:
    return tiny.build()


@pytest.fixture(scope="session")
def control_token() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="session")
def control_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def engines(
    tiny_models: tiny.TinyModels, control_token: str, control_port: int
) -> Iterator[dict[str, ServerProcess]]:
    """Two real vLLM OpenAI servers on the tiny target: SpecServe speculation (adaptive, K_max
    4, control port) and no speculation at all.

    Both start side by side (engine start is the slow part) and live for the whole session.
    """
    servers = {
        "spec": ServerProcess(
            ["--model", str(tiny_models.target), "--draft", str(tiny_models.draft),
             "--k-max", str(K_MAX), "--served-model-name", "tiny",
             "--control-port", str(control_port),
             # The built-in timing prior, not whatever profile the model cache holds, so the
             # adaptive path behaves the same on every machine.
             "--profile", "none", "--dtype", DTYPE, *FAST_START],
            env={ENV_CONTROL_TOKEN: control_token}, name="spec"),
        "plain": ServerProcess(
            ["--model", str(tiny_models.target), "--draft", "none",
             "--served-model-name", "tiny", "--dtype", DTYPE, *FAST_START], name="plain"),
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


@pytest.fixture(scope="session")
def control(spec_engine: ServerProcess, control_token: str, control_port: int) -> Control:
    return Control(f"http://127.0.0.1:{control_port}", control_token)


@pytest.fixture(scope="session")
def engine_dtype(control: Control) -> str:
    """The dtype the session engines compute in, as the spec engine reports it."""
    return httpx.get(control.url + POLICY_PATH, timeout=10).json()["engine"]["dtype"]
