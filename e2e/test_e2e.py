"""pytest wrapper of e2e/run.py: `make e2e` (or `python -m pytest e2e -v -s`).

Not under tests/, so `make test` never starts it; it skips with the reason when docker (with a
running daemon), kind or kubectl is missing. The run itself is e2e/run.py (see its docstring).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run as e2e  # noqa: E402

MISSING = e2e.missing_prerequisites()
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason="e2e needs a kind cluster: " + "; ".join(MISSING)
)


def test_e2e_on_kind() -> None:
    # A child process: the run takes many minutes and streams its progress (use -s to see it).
    result = subprocess.run([sys.executable, str(HERE / "run.py")], check=False)
    assert result.returncode == 0, "e2e/run.py failed: see its output above"
