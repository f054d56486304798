"""`specserve simulate` end to end on a small synthetic trace (no engine)."""

import json
import subprocess
import sys
from pathlib import Path

from tests.sim.helpers import trace_rows


def _trace(tmp: Path) -> Path:
    path = tmp / "trace.csv"
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for r in trace_rows(60):
        seconds = r.arrival_s
        lines.append(f"2023-11-16 18:{int(seconds // 60):02d}:{seconds % 60:09.6f},"
                     f"{r.prompt_tokens},{r.output_tokens}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "specserve_engine.cli", "simulate", *args],
                          capture_output=True, text=True, timeout=300)


def test_simulate_prints_a_summary_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "sim.json"
    res = _simulate("--trace", str(_trace(tmp_path)), "--synthetic-acceptance",
                    "--replicas", "2", "--speedup", "4", "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "60/60 done" in res.stdout and "TPOT p50/p99" in res.stdout
    data = json.loads(out.read_text())
    assert len(data["requests"]) == 60 and all(r["finish"] for r in data["requests"])


def test_simulate_refuses_missing_acceptance_records_in_one_line(tmp_path: Path) -> None:
    res = _simulate("--trace", str(_trace(tmp_path)), "--verifications",
                    str(tmp_path / "none.jsonl"))
    assert res.returncode == 2
    assert "no verification records" in res.stderr and "Traceback" not in res.stderr
