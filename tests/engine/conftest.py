"""Engine-test fixtures on top of the session engines of tests/conftest.py."""

from __future__ import annotations

import httpx
import pytest
from engine_kit import POLICY, Control

from specserve_engine.launcher import ServerProcess


@pytest.fixture(scope="session")
def control(spec_engine: ServerProcess, control_token: str, control_port: int) -> Control:
    return Control(f"http://127.0.0.1:{control_port}", control_token)


@pytest.fixture(scope="session")
def engine_dtype(control: Control) -> str:
    """The dtype the session engines compute in, as the spec engine reports it."""
    return httpx.get(control.url + POLICY, timeout=10).json()["engine"]["dtype"]
