"""Shared test configuration: the engine fixtures, and the rule that engine tests say so.

`pytest -m "not engine"` is the fast loop (no vLLM engine starts); see README, "Development".
"""

from __future__ import annotations

import pytest

pytest_plugins = ["tests.engine.fixtures"]

# Requesting one of these starts (or shares) a real vLLM engine.
ENGINE_FIXTURES = frozenset({"engines", "spec_engine", "plain_engine", "control", "engine_dtype"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [item.nodeid for item in items
                if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("engine") is None]
    if unmarked:
        raise pytest.UsageError("tests that start an engine need @pytest.mark.engine: "
                                + ", ".join(unmarked))
