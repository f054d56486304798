"""Records -> the per-(configuration, load level) table and the headline ratios. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from specserve_engine.trace_replay.client import RequestRecord
from specserve_engine.trace_replay.trace import percentile


@dataclass(frozen=True)
class LevelSummary:
    config: str
    rate: float  # offered load, requests/s
    requests: int
    completed: int
    errors: int
    duration_s: float  # first send to last completion
    output_tokens: int
    goodput_tok_s: float  # output tokens of completed requests per second of the level
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p99_s: float | None
    slo_attainment: float  # fraction of all planned requests completed within the TPOT SLO
    mean_k: float | None  # draft tokens verified per decoding request-step


def _pct(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def level_duration(records: Sequence[RequestRecord]) -> float:
    """First send to last completion (seconds); 0 when nothing completed."""
    ends = [r.sent_s + r.e2e_s for r in records
            if r.ok and r.sent_s is not None and r.e2e_s is not None]
    starts = [r.sent_s for r in records if r.sent_s is not None]
    return max(ends) - min(starts) if ends else 0.0


def summarize(
    config: str, rate: float, rounds: Sequence[Sequence[RequestRecord]], *, tpot_slo_s: float,
    mean_k: float | None = None,
) -> LevelSummary:
    """One level's summary; several rounds of the same level pool records and add durations."""
    records = [r for rnd in rounds for r in rnd]
    done = [r for r in records if r.ok]
    duration = sum(level_duration(rnd) for rnd in rounds)
    tokens = sum(r.output_tokens for r in done)
    tpots = [t for r in done if (t := r.tpot_s) is not None]
    # A one-token answer has no TPOT; it meets any TPOT SLO once it completes.
    met = sum(1 for r in done if r.tpot_s is None or r.tpot_s <= tpot_slo_s)
    return LevelSummary(
        config=config, rate=rate, requests=len(records), completed=len(done),
        errors=len(records) - len(done), duration_s=duration, output_tokens=tokens,
        goodput_tok_s=tokens / duration if duration > 0 else 0.0,
        ttft_p50_s=_pct([r.ttft_s for r in done if r.ttft_s is not None], 50),
        ttft_p99_s=_pct([r.ttft_s for r in done if r.ttft_s is not None], 99),
        tpot_p50_s=_pct(tpots, 50), tpot_p99_s=_pct(tpots, 99),
        slo_attainment=met / len(records) if records else 0.0, mean_k=mean_k,
    )


def mean_k(draft_tokens: float, drafts: float, generated_tokens: float,
           accepted_tokens: float) -> float | None:
    """Draft tokens verified per decoding request-step, from vLLM's counters.

    Each request-step emits one token plus its accepted drafts, so request-steps ~ generated -
    accepted. That undercounts at a request's last step (drafts accepted past max_tokens are
    counted as accepted, not generated), so it is never taken below `drafts` (the request-steps
    that verified drafts); the estimate stays <= the longest draft.
    """
    steps = max(generated_tokens - accepted_tokens, drafts)
    return draft_tokens / steps if steps > 0 else None


def by_rate(summaries: Iterable[LevelSummary], config: str) -> dict[float, LevelSummary]:
    return {s.rate: s for s in summaries if s.config == config}


def oracle_envelope(
    summaries: Sequence[LevelSummary], policy: str, statics: Sequence[str]
) -> dict[float, tuple[float, str]]:
    """Per load level: policy goodput / the best static configuration's, and which one that was."""
    mine = by_rate(summaries, policy)
    result = {}
    for rate, s in sorted(mine.items()):
        rivals = [(o.goodput_tok_s, name) for name in statics
                  if (o := by_rate(summaries, name).get(rate)) is not None]
        if not rivals:
            continue
        best, name = max(rivals)
        result[rate] = (s.goodput_tok_s / best if best > 0 else float("inf"), name)
    return result


def whole_trace_goodput(summaries: Sequence[LevelSummary], config: str) -> float:
    """Output tokens over all levels / time over all levels: the whole trace's goodput."""
    mine = [s for s in summaries if s.config == config]
    seconds = sum(s.duration_s for s in mine)
    return sum(s.output_tokens for s in mine) / seconds if seconds > 0 else 0.0


def whole_trace_ratio(summaries: Sequence[LevelSummary], config: str, baseline: str) -> float:
    base = whole_trace_goodput(summaries, baseline)
    return whole_trace_goodput(summaries, config) / base if base > 0 else float("inf")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def markdown_table(summaries: Sequence[LevelSummary], tpot_slo_s: float) -> str:
    head = ("| config | load req/s | done/sent | goodput tok/s | TTFT p50/p99 ms | "
            f"TPOT p50/p99 ms | TPOT<={tpot_slo_s * 1000:.0f}ms | mean K |\n"
            "|---|---|---|---|---|---|---|---|\n")
    rows = [
        f"| {s.config} | {s.rate:g} | {s.completed}/{s.requests} | {s.goodput_tok_s:.1f} | "
        f"{_ms(s.ttft_p50_s)}/{_ms(s.ttft_p99_s)} | {_ms(s.tpot_p50_s)}/{_ms(s.tpot_p99_s)} | "
        f"{s.slo_attainment:.0%} | {'-' if s.mean_k is None else f'{s.mean_k:.2f}'} |"
        for s in sorted(summaries, key=lambda s: (s.rate, s.config))
    ]
    return head + "\n".join(rows) + "\n"
