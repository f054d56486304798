"""`specserve plan`: replicas per load level with and without adaptive speculation."""

from __future__ import annotations

from itertools import pairwise

import pytest

from specserve_engine.cli import main
from specserve_sim import plan
from specserve_sim.hardware import HardwareModel
from specserve_sim.interface import SimRequest

REQS = [SimRequest(str(i), i * 0.2, 1000, 200) for i in range(50)]
MODEL = plan.hardware_params(HardwareModel())


def test_hardware_fit_reproduces_the_hardware_model() -> None:
    hw = HardwareModel()
    b, n, c = 32, 128, 1024.0
    truth = hw.step_seconds("target", b, n, c) + hw.step_seconds("host", b, n, c)
    t = MODEL.target
    fitted = t.overhead_s + t.per_token_s * max(0, n - t.knee_tokens) + t.per_kv_token_s * b * c
    assert fitted == pytest.approx(truth, rel=0.02)


def test_replicas_grow_with_load_and_never_below_one() -> None:
    rows = plan.plan(REQS, [0.1, 10, 100, 1000], 0.015, 0.7, MODEL)
    assert [r.adaptive for r in rows] == sorted(r.adaptive for r in rows)
    assert [r.off for r in rows] == sorted(r.off for r in rows)
    assert rows[0].adaptive == rows[0].off == 1


def test_speculation_needs_no_more_replicas_than_none() -> None:
    """Adaptive may choose K=0, so its capacity is at least the no-speculation capacity."""
    rows = plan.plan(REQS, [50, 500, 5000], 0.015, 0.7, MODEL)
    assert all(r.adaptive <= r.off for r in rows)
    assert rows[0].adaptive_capacity.requests_per_s >= rows[0].off_capacity.requests_per_s


def test_count_is_the_operators_raw_recommendation() -> None:
    row = plan.plan(REQS, [300.0], 0.015, 0.7, MODEL)[0]
    cap = row.adaptive_capacity.requests_per_s
    assert (row.adaptive - 1) * cap * 0.8 < 300.0 <= row.adaptive * cap * 0.8


def test_default_rates_double_from_the_trace_rate() -> None:
    rates = plan.default_rates(REQS, levels=4)
    assert len(rates) == 4
    assert all(b == pytest.approx(2 * a, rel=0.01) for a, b in pairwise(rates))


def test_cli_prints_the_table(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:15:{i:02d}.0000000,500,100\n" for i in range(30)))
    assert main(["plan", "--trace", str(trace), "--rates", "10", "100"]) == 0
    out = capsys.readouterr().out
    assert "| 10 |" in out and "| 100 |" in out and "no speculation" in out
