"""bench/slo_goodput.py's command line, without engines: --dry-run, refusals, --from-results."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from specserve_engine.trace_replay.slo_goodput import (
    Found,
    Probe,
    SearchKey,
    SloGoodput,
    found_json,
)

BENCH = Path(__file__).resolve().parents[2] / "bench" / "slo_goodput.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_slo_goodput", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(bench: ModuleType, monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["slo_goodput.py", *argv])
    return bench.main()


def test_every_configuration_is_named_with_the_ablation_before_adaptive(bench) -> None:
    assert bench.config_names() == ["off", "K=1", "K=2", "K=3", "K=5", "dynamic-sd",
                                    "threshold-0.6", "adaptive-drafter", "adaptive-verifier",
                                    "adaptive-unpriced", "adaptive"]


def test_adaptive_unpriced_is_adaptive_with_the_pre_22_pricing_and_its_own_slo_engine(
        bench, monkeypatch, capsys) -> None:
    assert bench.SLO_BOUND_POLICY["adaptive-unpriced"] == {"price_prefill": False}
    rc = run(bench, monkeypatch, "--dry-run", "--configs", "adaptive-unpriced", "adaptive",
             "--tpot-slo-ms", "60", "150")
    out, _ = capsys.readouterr()
    assert rc == 0
    assert "adaptive-unpriced (policy SLO 60 ms)" in out
    assert "adaptive-unpriced (policy SLO 150 ms)" in out


def test_a_dry_run_lists_the_engines_and_starts_nothing(bench, monkeypatch, capsys) -> None:
    rc = run(bench, monkeypatch, "--dry-run", "--rounds", "2", "--configs", "adaptive", "K=2",
             "adaptive-drafter", "--workload", "conversation", "decode-heavy", "--arrivals",
             "poisson", "bursty", "--tpot-slo-ms", "60", "150")
    out, err = capsys.readouterr()
    assert rc == 0
    # Table order, not the order given; adaptive once per SLO.
    assert out.splitlines()[:4] == ["round 0: K=2: 8 searches", "round 0: adaptive-drafter: 8 "
                                    "searches", "round 0: adaptive (policy SLO 60 ms): 4 searches",
                                    "round 0: adaptive (policy SLO 150 ms): 4 searches"]
    assert "8 engines, 48 searches" in err and "estimate" in err and "bound" in err


def test_unknown_configurations_and_oversized_shapes_are_refused(bench, monkeypatch,
                                                                capsys) -> None:
    assert run(bench, monkeypatch, "--dry-run", "--configs", "K=4") == 2
    assert "unknown configuration(s) K=4" in capsys.readouterr().err
    assert run(bench, monkeypatch, "--dry-run", "--context-tokens", "256") == 2
    assert "do not fit a 256-token context" in capsys.readouterr().err


def test_from_results_rewrites_the_tables(bench, monkeypatch, tmp_path: Path, capsys) -> None:
    key = SearchKey("decode-heavy", "bursty", 150.0)
    found = [Found(key, name, r, SloGoodput(rate * (1 + r / 20), rate * 1.1 * (1 + r / 20),
                                            (Probe(rate, 32, 0.95, True),) * 4))
             for name, rate in (("K=2", 5.0), ("dynamic-sd", 4.0), ("adaptive", 7.0))
             for r in range(3)]
    meta = {"command": "x", "machine": "CPU", "dtype": "bfloat16", "mode": "eager",
            "requests_per_probe": 32}
    path = tmp_path / "in.json"
    path.write_text(json.dumps({"meta": meta, "searches": [found_json(f) for f in found]}))
    assert run(bench, monkeypatch, "--from-results", str(path), "-o", str(tmp_path / "o")) == 0
    text = (tmp_path / "o" / "slo-goodput.md").read_text()
    assert "### decode-heavy, bursty arrivals, TPOT <= 150 ms (CPU; dtype bfloat16; mode eager)" \
        in text
    assert "**adaptive / best static K (K=2):" in text and capsys.readouterr().out == text + "\n"
