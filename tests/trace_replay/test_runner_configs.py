"""The benchmark's configurations and how rounds are pooled (no engines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from specserve_engine.cli import build_parser
from specserve_engine.serving import parse_k_table
from specserve_engine.trace_replay.bootstrap import MIN_ROUNDS
from specserve_engine.trace_replay.client import RequestRecord
from specserve_engine.trace_replay.command import _given_flags, _parser, engine_mode, rounds
from specserve_engine.trace_replay.runner import LevelResult, cells, standard_configs


def test_every_baseline_of_the_design_is_there_and_parses_as_serve_flags() -> None:
    configs = standard_configs(Path("/d"), Path("/p.json"), Path("/prof.json"))
    assert [c.name for c in configs] == ["off", "K=1", "K=2", "K=3", "K=5", "dynamic-sd",
                                         "threshold-0.6", "adaptive"]
    for c in configs:
        args = build_parser().parse_args(["serve", *c.serve_args])
        assert c.specserve == (not args.no_specserve and args.draft != "none")
        if c.name == "dynamic-sd":
            assert parse_k_table(args.k_table)[-1][2] == 0  # speculation off at large batches
        if c.name == "adaptive":
            assert (args.policy_file, args.profile) == ("/p.json", "/prof.json")


def test_rounds_of_a_level_are_pooled_into_one_summary() -> None:
    def result(rnd: int, e2e: float) -> LevelResult:
        rec = RequestRecord(0, 5, 10, sent_s=0.0, ttft_s=0.1, e2e_s=e2e, output_tokens=10)
        return LevelResult("adaptive", 2.0, rnd, [rec], (30.0, 5.0, 10.0, 4.0))

    [c] = cells([result(1, 2.0), result(0, 1.0)], tpot_slo_s=0.5, replicates=50)
    s = c.summary
    assert (s.requests, s.duration_s, s.rounds) == (2, pytest.approx(3.0), 2)
    assert s.mean_k == pytest.approx(60 / 12)
    assert len(c.replicates["goodput_tok_s"]) == 50
    assert s.intervals["goodput_tok_s"].lo <= s.goodput_tok_s <= s.intervals["goodput_tok_s"].hi


def test_rounds_default_to_enough_for_intervals_and_the_mode_is_named() -> None:
    args = _parser().parse_args([])
    assert rounds(args) >= MIN_ROUNDS and args.bootstrap >= 1000
    assert rounds(_parser().parse_args(["--quick"])) == 1  # a smoke run, not a measurement
    assert rounds(_parser().parse_args(["--quick", "--rounds", "4"])) == 4
    assert engine_mode(args) == "compiled"
    assert engine_mode(_parser().parse_args(["--eager"])) == "eager"
    assert engine_mode(_parser().parse_args(["--quick"])) == "eager"
    assert engine_mode(_parser().parse_args(["--serve-arg=--", "--serve-arg=--enforce-eager"])) \
        == "eager"


def test_the_printed_command_reproduces_the_run() -> None:
    args = _parser().parse_args(["--quick", "--rates", "1", "2", "-o", "x"])
    assert _given_flags(args) == ["--output", "x", "--quick", "--rates", "1.0", "2.0"]


def test_results_json_reads_back_as_written(tmp_path: Path) -> None:
    from specserve_engine.trace_replay.client import RequestRecord
    from specserve_engine.trace_replay.runner import LevelResult, cells, read_results, write_results

    records = [RequestRecord(0, 10, 5, sent_s=0.0, ttft_s=0.1, e2e_s=0.5, output_tokens=5),
               RequestRecord(1, 12, 4, sent_s=0.5, error="HTTP 500: boom")]
    results = [LevelResult("adaptive", 2.0, 0, records, (8.0, 4.0, 9.0, 3.0),
                           [(0.5, 1.0, 2.0)], [0.09])]
    path = tmp_path / "results.json"
    write_results(path, {"tpot_slo_s": 0.06}, cells(results, 0.06), results)
    meta, back = read_results(path)
    assert meta == {"tpot_slo_s": 0.06}
    assert back == results


def test_the_ablation_configurations_serve_their_policy_files() -> None:
    from specserve_engine.policy import Policy
    from specserve_engine.trace_replay.runner import ABLATION_POLICIES, ablation_configs

    files = {name: Path(f"/pol/{name}.json") for name in ABLATION_POLICIES}
    configs = ablation_configs(Path("/d"), files, Path("/prof.json"))
    assert [c.name for c in configs] == ["adaptive-drafter", "adaptive-verifier"]
    for c in configs:
        args = build_parser().parse_args(["serve", *c.serve_args])
        assert c.specserve and not args.no_specserve and args.draft == "/d"
        assert (args.policy_file, args.profile) == (f"/pol/{c.name}.json", "/prof.json")
        policy = Policy.model_validate_json(ABLATION_POLICIES[c.name].model_dump_json())
        assert policy.mode == "adaptive" and policy.slo.tpot_seconds is None  # no SLO term
    assert not ABLATION_POLICIES["adaptive-drafter"].trim_drafts
    assert ABLATION_POLICIES["adaptive-verifier"].trim_drafts
    # `specserve bench`'s list is unchanged.
    assert "adaptive-drafter" not in [c.name for c in standard_configs(Path("/d"), Path("/p"))]
