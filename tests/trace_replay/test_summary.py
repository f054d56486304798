"""Per-level summaries and the headline ratios, checked by hand."""

from __future__ import annotations

import pytest

from specserve_engine.trace_replay.client import RequestRecord
from specserve_engine.trace_replay.summary import (
    Cell,
    LevelSummary,
    markdown_table,
    mean_k,
    oracle_envelope,
    summarize,
    whole_trace_ratio,
)


def rec(i: int, sent: float, ttft: float, e2e: float, tokens: int) -> RequestRecord:
    return RequestRecord(i, 10, tokens, sent_s=sent, ttft_s=ttft, e2e_s=e2e,
                         output_tokens=tokens)


def test_summary_by_hand() -> None:
    records = [
        rec(0, 0.0, 0.1, 1.1, 11),  # TPOT 0.1
        rec(1, 1.0, 0.2, 0.4, 5),  # TPOT 0.05, ends at 1.4
        rec(2, 2.0, 0.1, 0.1, 1),  # one token: no TPOT, counts as within the SLO
        RequestRecord(3, 10, 8, sent_s=2.5, error="HTTP 500: boom"),
    ]
    s = summarize("x", 1.0, [records], tpot_slo_s=0.06, mean_k=2.0)
    assert (s.requests, s.completed, s.errors) == (4, 3, 1)
    assert s.duration_s == pytest.approx(2.1)  # first send 0.0, last completion 2.1
    assert s.output_tokens == 17
    assert s.goodput_tok_s == pytest.approx(17 / 2.1)
    assert s.tpot_p50_s == pytest.approx(0.075)
    assert s.ttft_p50_s == pytest.approx(0.1)
    assert s.slo_attainment == pytest.approx(2 / 4)  # requests 1 and 2; the error is a miss
    row = "| x | 1 | 1 | 3/4 | 8.1 | 100 | 198 | 75 | 100 | 50 | 2.00 |"  # no intervals here
    assert row in markdown_table([s], 0.06)


def test_rounds_pool_records_and_add_durations() -> None:
    one = [rec(0, 0.0, 0.1, 1.0, 10)]
    two = [rec(0, 0.0, 0.1, 3.0, 10)]
    s = summarize("x", 1.0, [one, two], tpot_slo_s=1.0)
    assert s.duration_s == pytest.approx(4.0)
    assert s.goodput_tok_s == pytest.approx(20 / 4.0)


def test_mean_k_counts_verified_drafts_per_decoding_request_step() -> None:
    # 100 tokens generated, 40 of them accepted drafts: 60 request-steps verified 120 drafts.
    assert mean_k(120, 50, 100, 40) == pytest.approx(2.0)
    assert mean_k(0, 0, 100, 0) == 0.0
    assert mean_k(0, 0, 0, 0) is None
    # Drafts accepted past max_tokens: 30 steps each verified 5 drafts, never above 5.
    assert mean_k(150, 30, 100, 80) == pytest.approx(5.0)


def level(config: str, rate: float, goodput: float, duration: float = 10.0) -> Cell:
    return Cell(LevelSummary(config, rate, 10, 10, 0, duration, round(goodput * duration),
                             goodput, None, None, None, None, 1.0, None))


def test_oracle_envelope_and_whole_trace_ratios() -> None:
    table = [level("off", 1, 100), level("K=3", 1, 150), level("adaptive", 1, 147),
             level("off", 8, 400), level("K=3", 8, 300), level("adaptive", 8, 404),
             level("dyn", 1, 120), level("dyn", 8, 200)]
    envelope = oracle_envelope(table, "adaptive", ["off", "K=3"])
    assert (envelope[1][0].value, envelope[1][1]) == (pytest.approx(0.98), "K=3")
    assert (envelope[8][0].value, envelope[8][1]) == (pytest.approx(1.01), "off")
    assert envelope[1][0].interval is None  # no replicates: no interval, never significant
    assert not envelope[1][0].significant
    # Whole trace: (1470 + 4040) tokens / 20 s against (1200 + 2000) / 20 s.
    assert whole_trace_ratio(table, "adaptive", "dyn").value == pytest.approx(5510 / 3200)


def test_predicted_tpot_is_pooled_per_level_and_compared_with_the_clients_p50() -> None:
    from specserve_engine.trace_replay.summary import tpot_prediction_markdown, tpot_predictions

    round_one = [rec(0, 0.0, 0.1, 1.1, 11), rec(1, 1.0, 0.1, 0.5, 5)]  # TPOT 0.1, 0.1
    round_two = [rec(0, 0.0, 0.1, 2.1, 11)]  # TPOT 0.2
    rows = tpot_predictions([
        ("adaptive", 1.0, round_one, [0.09, 0.11]),
        ("adaptive", 1.0, round_two, [0.22]),
        ("off", 1.0, round_one, []),  # a baseline engine predicts nothing: no row
    ])
    assert len(rows) == 1
    row = rows[0]
    assert (row.config, row.rate, row.requests) == ("adaptive", 1.0, 3)
    assert row.measured_p50_s == pytest.approx(0.1)
    assert row.predicted_p50_s == pytest.approx(0.11)
    assert row.error == pytest.approx(0.1)
    assert "| adaptive | 1 | 100.0 | 110.0 | +10.0% | 3 |" in tpot_prediction_markdown(rows)
    assert tpot_prediction_markdown([]) == ""


def test_ratio_tables_are_well_formed_markdown() -> None:
    from specserve_engine.trace_replay.summary import ratio_tables

    table = [level("off", 1, 100), level("adaptive", 1, 120),
             level("off", 8, 400), level("adaptive", 8, 404)]
    text = ratio_tables(table, "adaptive", ["off"])
    lines = text.splitlines()
    header = lines.index("| baseline | 1 req/s | 8 req/s | whole trace |")
    assert lines[header + 1] == "|---|---|---|---|"
    assert lines[header + 2].startswith("| off | 1.200")
