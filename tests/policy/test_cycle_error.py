"""The predicted-vs-measured cycle table: records grouped by prefill and batch range."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from specserve_engine.policy.cycle_error import (
    CycleRecord,
    batch_range,
    cycle_cells,
    markdown,
    summary,
)


def _record(b: int, extra: int, predicted: float, observed: float, k: int = 2) -> CycleRecord:
    return CycleRecord(b, b * (1 + k) + extra, extra, k, predicted, observed)


def test_batch_ranges_are_powers_of_two() -> None:
    assert [batch_range(b) for b in (1, 2, 3, 4, 5, 8, 9, 33)] == [
        "1", "2", "3-4", "3-4", "5-8", "5-8", "9-16", "33-64"]


def test_cells_split_decode_only_from_prefill_steps_by_batch_range() -> None:
    records = [_record(1, 0, 0.011, 0.010), _record(1, 0, 0.009, 0.010),
               _record(3, 0, 0.020, 0.020), _record(4, 0, 0.030, 0.020),
               _record(3, 200, 0.060, 0.050)]
    cells = cycle_cells(records)
    assert [(c.prefill, c.batch, len(c.errors)) for c in cells] == [
        (False, "1", 2), (False, "3-4", 2), (True, "3-4", 1)]
    assert cells[0].median == pytest.approx(0.0)
    assert cells[1].within(0.10) == 0.5  # +0% and +50%
    assert cells[2].median == pytest.approx(0.2)


def test_summary_and_table_name_both_kinds_of_step() -> None:
    records = [_record(2, 0, 0.0105, 0.010), _record(2, 64, 0.040, 0.050)]
    s = summary(records)
    assert s["decode_cycles"] == 1 and s["prefill_cycles"] == 1
    assert s["decode_median_error"] == pytest.approx(0.05)
    assert s["prefill_within"] == 0.0  # -20%
    table = markdown(records)
    assert "| prefill | 2 | 1 | **-20.0%** | 0% |" in table
    assert "| decode | 2 | 1 | +5.0% | 100% |" in table


def test_a_record_reads_back_from_the_engine_s_json_line() -> None:
    record = _record(4, 10, 0.03, 0.025)
    line = json.dumps(dataclasses.asdict(record))
    assert CycleRecord.from_json(json.loads(line)) == record


def _load_script() -> ModuleType:
    script = Path(__file__).parents[2] / "bench" / "cycle_error.py"
    spec = importlib.util.spec_from_file_location("cycle_error_script", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_prints_a_table_per_file_and_refuses_a_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "engine.cycles.jsonl"
    good.write_text("".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in (
        _record(1, 0, 0.010, 0.010), _record(2, 100, 0.05, 0.04))))
    script = _load_script()
    assert script.main([str(good), "--skip", "0"]) == 0
    out = capsys.readouterr().out
    assert "### engine.cycles.jsonl (2 cycles)" in out and "| prefill | 2 | 1 |" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"num_requests": 1}\n')
    assert script.main([str(bad)]) == 2
    assert "cannot read cycle records" in capsys.readouterr().out
