"""The validation machinery on synthetic data (no engine): a bench folder written by the bench's
own code is read back, simulated and compared. These check the plumbing, never accuracy: the
"real" side here is itself simulated."""

import json
from pathlib import Path

import pytest

from specserve_engine.trace_replay.runner import cells, write_results
from specserve_sim import synthetic
from specserve_sim.validate import (
    BenchRun,
    compare,
    median_error,
    ranking_checks,
    report_markdown,
    simulate_bench,
    validate,
)
from tests.sim.helpers import trace_rows

CONFIGS = ("off", "K=3", "dynamic-sd", "threshold-0.6", "adaptive")
RATES = (0.5, 4.0)


def _bench_folder(tmp: Path, truth_seed: int) -> Path:
    """A results.json as `specserve bench` writes it, from a simulated 'real' run."""
    meta = {"command": "specserve bench --requests 12 --rounds 2 --trace-start 5",
            "rates": list(RATES), "requests_per_level": 12, "tpot_slo_s": 0.06,
            "max_prompt_tokens": 256, "max_output_tokens": 64, "seed": 0, "rounds": 2,
            "bootstrap_replicates": 50, "machine": "synthetic", "dtype": "-", "mode": "-"}
    stand_in = BenchRun(tmp, meta, {}, CONFIGS, RATES, 2, 12, 5, 256, 64, 0.06, 300.0, 0, 50)
    levels = simulate_bench(stand_in, trace_rows(), synthetic.ground_truth(truth_seed),
                            profile=None, seed=50)
    write_results(tmp / "results.json", meta, cells(levels, 0.06, replicates=50), levels)
    return tmp


def test_a_bench_folder_is_read_back_as_the_bench_ran_it(tmp_path: Path) -> None:
    run = BenchRun.load(_bench_folder(tmp_path, truth_seed=1))
    assert run.configs == CONFIGS and run.rates == RATES
    assert (run.count, run.start, run.rounds, run.tpot_slo_s) == (12, 5, 2, 0.06)
    assert set(run.summaries) == {(c, r) for c in CONFIGS for r in RATES}
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["levels"]) == len(CONFIGS) * len(RATES) * 2


def test_simulating_the_same_truth_with_the_same_seed_reproduces_the_bench_exactly(
        tmp_path: Path) -> None:
    run = BenchRun.load(_bench_folder(tmp_path, truth_seed=1))
    levels = simulate_bench(run, trace_rows(), synthetic.ground_truth(1), profile=None, seed=50)
    comparisons = compare(run, cells(levels, run.tpot_slo_s, replicates=50))
    assert len(comparisons) == len(CONFIGS) * len(RATES) * 2
    assert all(c.error == pytest.approx(0.0, abs=1e-12) for c in comparisons)
    checks = ranking_checks(comparisons)
    assert all(c.agrees for c in checks)


def test_another_truth_gives_errors_rankings_and_a_report(tmp_path: Path) -> None:
    run = BenchRun.load(_bench_folder(tmp_path, truth_seed=1))
    truth = synthetic.ground_truth(2)
    comparisons, checks, simulated = validate(run, trace_rows(), truth, profile=None, seed=7)
    errors = [c.error for c in comparisons]
    assert all(e is not None and e >= 0 for e in errors) and any(e > 0 for e in errors)
    for metric in ("goodput_tok_s", "tpot_p50_s"):
        mine = sorted(c.error for c in comparisons if c.metric == metric)
        assert median_error(comparisons, metric) == pytest.approx(
            (mine[len(mine) // 2 - 1] + mine[len(mine) // 2]) / 2)
    for check in checks:  # each pair the real intervals separate, ordered by its real values
        real = {(c.config, c.rate, c.metric): c for c in comparisons}
        better, worse = real[check.better, check.rate, check.metric], \
            real[check.worse, check.rate, check.metric]
        assert better.real > worse.real and better.real_lo > worse.real_hi
        assert check.agrees == (better.simulated > worse.simulated)
    text = report_markdown(run, comparisons, checks, truth)
    assert "median error" in text and all(c in text for c in CONFIGS)
    assert {c.summary.config for c in simulated} == set(CONFIGS)
