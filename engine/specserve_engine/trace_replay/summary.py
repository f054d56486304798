"""Records -> the per-(configuration, load level) table and the headline ratios. Pure.

Every number of the table is the pooled value of all rounds of its cell (goodput: all rounds'
tokens / all rounds' time, i.e. the duration-weighted mean of the rounds' goodputs; percentiles:
of all rounds' requests) with a 95% bootstrap interval over rounds and requests
(`bootstrap`); every ratio against a baseline carries its own interval, and is marked
significant only where that interval excludes 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from specserve_engine.trace_replay import bootstrap
from specserve_engine.trace_replay.bootstrap import Interval, Ratio
from specserve_engine.trace_replay.client import RequestRecord
from specserve_engine.trace_replay.trace import percentile

# vLLM's counters over a level, in the order of `runner.COUNTERS`: draft tokens, drafts,
# generated tokens, accepted tokens.
Counters = tuple[float, float, float, float]
NO_COUNTERS: Counters = (0.0, 0.0, 0.0, 0.0)
# The statistics that get an interval (the LevelSummary fields of the same names).
METRICS = ("goodput_tok_s", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s", "tpot_p99_s",
           "slo_attainment", "mean_k")


@dataclass(frozen=True)
class LevelSummary:
    config: str
    rate: float  # offered load, requests/s
    requests: int
    completed: int
    errors: int
    duration_s: float  # first send to last completion, summed over rounds
    output_tokens: int
    goodput_tok_s: float  # output tokens of completed requests per second of the level
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p99_s: float | None
    slo_attainment: float  # fraction of all planned requests completed within the TPOT SLO
    mean_k: float | None  # draft tokens verified per decoding request-step
    rounds: int = 1
    # 95% bootstrap interval of each of METRICS that has one (absent: not enough data).
    intervals: dict[str, Interval] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecords:
    """One round of one cell: every planned request's record (in plan order) and vLLM's
    counters over the level."""

    records: Sequence[RequestRecord]
    counters: Counters = NO_COUNTERS


@dataclass(frozen=True)
class Cell:
    """One (configuration, load level): its summary and the bootstrap replicates behind the
    intervals, kept so ratios against other cells can be bootstrapped replicate by replicate."""

    summary: LevelSummary
    # METRICS plus "output_tokens" and "duration_s" -> one value per replicate.
    replicates: Mapping[str, Sequence[float | None]] = field(default_factory=dict)


def _pct(values: Sequence[float], q: float) -> float | None:
    return percentile(values, q) if values else None


def level_duration(records: Sequence[RequestRecord]) -> float:
    """First send to last completion (seconds); 0 when nothing completed."""
    ends = [r.sent_s + r.e2e_s for r in records
            if r.ok and r.sent_s is not None and r.e2e_s is not None]
    starts = [r.sent_s for r in records if r.sent_s is not None]
    return max(ends) - min(starts) if ends else 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    """What the statistics read of one request, computed once (a bootstrap reads it often).
    A request that did not complete has ok False, no tokens and no latencies."""

    ok: bool
    tokens: int
    ttft_s: float | None
    tpot_s: float | None
    met: bool  # completed within the TPOT SLO


def measure(r: RequestRecord, tpot_slo_s: float) -> Measured:
    if not r.ok:
        return Measured(False, 0, None, None, False)
    tpot = r.tpot_s
    # A one-token answer has no TPOT; it meets any TPOT SLO once it completes.
    return Measured(True, r.output_tokens, r.ttft_s, tpot, tpot is None or tpot <= tpot_slo_s)


def level_stats(rows: Sequence[Measured], duration_s: float, counters: Counters
                ) -> dict[str, float | None]:
    """METRICS (and output_tokens, duration_s) of a pool of requests that took `duration_s`."""
    tokens = sum(m.tokens for m in rows)
    ttfts = [t for m in rows if (t := m.ttft_s) is not None]
    tpots = [t for m in rows if (t := m.tpot_s) is not None]
    return {
        "output_tokens": float(tokens), "duration_s": duration_s,
        "goodput_tok_s": tokens / duration_s if duration_s > 0 else 0.0,
        "ttft_p50_s": _pct(ttfts, 50), "ttft_p99_s": _pct(ttfts, 99),
        "tpot_p50_s": _pct(tpots, 50), "tpot_p99_s": _pct(tpots, 99),
        "slo_attainment": sum(m.met for m in rows) / len(rows) if rows else 0.0,
        "mean_k": mean_k(*counters),
    }


def _add(counters: Iterable[Counters]) -> Counters:
    a, b, c, d = (sum(column) for column in zip(NO_COUNTERS, *counters, strict=True))
    return (a, b, c, d)


def summarize(
    config: str, rate: float, rounds: Sequence[Sequence[RequestRecord]], *, tpot_slo_s: float,
    mean_k: float | None = None,
) -> LevelSummary:
    """One level's summary; several rounds of the same level pool records and add durations.
    No intervals (`cell` adds them)."""
    records = [r for rnd in rounds for r in rnd]
    done = [r for r in records if r.ok]
    duration = sum(level_duration(rnd) for rnd in rounds)
    stats = level_stats([measure(r, tpot_slo_s) for r in records], duration, NO_COUNTERS)
    return LevelSummary(
        config=config, rate=rate, requests=len(records), completed=len(done),
        errors=len(records) - len(done), duration_s=duration,
        output_tokens=sum(r.output_tokens for r in done),
        goodput_tok_s=stats["goodput_tok_s"] or 0.0,
        ttft_p50_s=stats["ttft_p50_s"], ttft_p99_s=stats["ttft_p99_s"],
        tpot_p50_s=stats["tpot_p50_s"], tpot_p99_s=stats["tpot_p99_s"],
        slo_attainment=stats["slo_attainment"] or 0.0, mean_k=mean_k, rounds=len(rounds),
    )


def cell(config: str, rate: float, rounds: Sequence[RoundRecords], *, tpot_slo_s: float,
         replicates: int = bootstrap.DEFAULT_REPLICATES, seed: int = 0) -> Cell:
    """The summary of one (configuration, level) with 95% intervals over rounds and requests.

    Request draws are seeded by (seed, rate) only, so every configuration at one level draws
    the same request indices (the paired design of `bootstrap`); round draws are seeded by the
    configuration too.
    """
    durations = [level_duration(r.records) for r in rounds]
    base = summarize(config, rate, [r.records for r in rounds], tpot_slo_s=tpot_slo_s,
                     mean_k=mean_k(*_add(r.counters for r in rounds)))

    measured = [[measure(rec, tpot_slo_s) for rec in r.records] for r in rounds]

    def statistic(draw: bootstrap.Draw) -> dict[str, float | None]:
        rows = [measured[r][i] for r, picked in draw for i in picked]
        return level_stats(rows, sum(durations[r] for r, _ in draw),
                           _add(rounds[r].counters for r, _ in draw))

    all_draws = bootstrap.draws([len(r.records) for r in rounds], replicates,
                                round_seed=f"{seed}:rounds:{config}:{rate!r}",
                                request_seed=f"{seed}:requests:{rate!r}")
    per_draw = [statistic(d) for d in all_draws]
    reps = {key: [s[key] for s in per_draw]
            for key in (*METRICS, "output_tokens", "duration_s")}
    intervals = {m: iv for m in METRICS if (iv := bootstrap.interval(reps[m])) is not None}
    return Cell(replace(base, intervals=intervals), reps)


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


def _cells_by_rate(cells: Iterable[Cell], config: str) -> dict[float, Cell]:
    return {c.summary.rate: c for c in cells if c.summary.config == config}


def level_ratio(cells: Sequence[Cell], config: str, baseline: str, rate: float,
                metric: str = "goodput_tok_s") -> Ratio | None:
    """`metric` of config / baseline's at one level, with its interval; None when either cell
    is missing."""
    a = _cells_by_rate(cells, config).get(rate)
    b = _cells_by_rate(cells, baseline).get(rate)
    if a is None or b is None:
        return None
    return bootstrap.ratio(getattr(a.summary, metric), getattr(b.summary, metric),
                           a.replicates.get(metric, ()), b.replicates.get(metric, ()))


def oracle_envelope(
    cells: Sequence[Cell], policy: str, statics: Sequence[str]
) -> dict[float, tuple[Ratio, str]]:
    """Per load level: policy goodput / the best static configuration's, and which one that was
    (the best chosen by point value; the interval does not account for that choice)."""
    result = {}
    for rate in sorted(_cells_by_rate(cells, policy)):
        rivals = [(o.summary.goodput_tok_s, name) for name in statics
                  if (o := _cells_by_rate(cells, name).get(rate)) is not None]
        if not rivals:
            continue
        _, name = max(rivals)
        ratio = level_ratio(cells, policy, name, rate)
        assert ratio is not None
        result[rate] = (ratio, name)
    return result


def _whole_trace(tokens: Iterable[float | None], seconds: Iterable[float | None]
                 ) -> float | None:
    t, d = list(tokens), list(seconds)
    if any(v is None for v in (*t, *d)):
        return None
    total = sum(v for v in d if v is not None)
    return sum(v for v in t if v is not None) / total if total > 0 else None


def whole_trace_goodput(cells: Sequence[Cell], config: str) -> float:
    """Output tokens over all levels / time over all levels: the whole trace's goodput."""
    mine = [c.summary for c in cells if c.summary.config == config]
    return _whole_trace([s.output_tokens for s in mine], [s.duration_s for s in mine]) or 0.0


def whole_trace_ratio(cells: Sequence[Cell], config: str, baseline: str) -> Ratio:
    """Whole-trace goodput of config / baseline's; replicate b sums every level's replicate b
    (the levels' draws are independent, so any fixed pairing of their replicates is a draw)."""
    def reps(name: str) -> list[float | None]:
        mine = [c.replicates for c in cells if c.summary.config == name]
        if not mine or any(not r for r in mine):
            return []
        return [_whole_trace(tok, dur) for tok, dur in zip(
            zip(*(r["output_tokens"] for r in mine), strict=True),
            zip(*(r["duration_s"] for r in mine), strict=True), strict=True)]

    return bootstrap.ratio(whole_trace_goodput(cells, config) or None,
                           whole_trace_goodput(cells, baseline) or None,
                           reps(config), reps(baseline))


def _num(value: float | None, scale: float, digits: int) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _with_interval(s: LevelSummary, metric: str, scale: float = 1.0, digits: int = 0) -> str:
    text = _num(getattr(s, metric), scale, digits)
    iv = s.intervals.get(metric)
    if iv is None:
        return text
    return f"{text} [{iv.lo * scale:.{digits}f}, {iv.hi * scale:.{digits}f}]"


def markdown_table(summaries: Sequence[LevelSummary], tpot_slo_s: float) -> str:
    """The per-cell table: value [95% interval] where the cell has one."""
    head = ("| config | load req/s | rounds | done/sent | goodput tok/s | TTFT p50 ms | "
            f"TTFT p99 ms | TPOT p50 ms | TPOT p99 ms | TPOT<={tpot_slo_s * 1000:.0f}ms % | "
            "mean K |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = [
        f"| {s.config} | {s.rate:g} | {s.rounds} | {s.completed}/{s.requests} | "
        f"{_with_interval(s, 'goodput_tok_s', digits=1)} | "
        f"{_with_interval(s, 'ttft_p50_s', 1000)} | {_with_interval(s, 'ttft_p99_s', 1000)} | "
        f"{_with_interval(s, 'tpot_p50_s', 1000)} | {_with_interval(s, 'tpot_p99_s', 1000)} | "
        f"{_with_interval(s, 'slo_attainment', 100)} | {_with_interval(s, 'mean_k', digits=2)} |"
        for s in sorted(summaries, key=lambda s: (s.rate, s.config))
    ]
    return head + "\n".join(rows) + "\n"


def format_ratio(r: Ratio | None) -> str:
    """'1.050 [0.980, 1.120] *' (the star: the interval excludes 1); '-' when undefined."""
    if r is None or r.value is None:
        return "-"
    if r.interval is None:
        return f"{r.value:.3f}"
    star = " *" if r.significant else ""
    return f"{r.value:.3f} [{r.interval.lo:.3f}, {r.interval.hi:.3f}]{star}"


RATIO_METRICS = {"goodput_tok_s": "goodput", "tpot_p50_s": "TPOT p50",
                 "tpot_p99_s": "TPOT p99", "slo_attainment": "TPOT-SLO attainment"}


def ratio_tables(cells: Sequence[Cell], config: str, baselines: Sequence[str]) -> str:
    """Markdown: `config` / each baseline per level, one table per metric of RATIO_METRICS
    (goodput also over the whole trace)."""
    rates = sorted(_cells_by_rate(cells, config))
    out = []
    for metric, label in RATIO_METRICS.items():
        whole = metric == "goodput_tok_s"
        cols = [f"{r:g} req/s" for r in rates] + (["whole trace"] if whole else [])
        out.append(f"\n### {config} / baseline: {label}\n\n| baseline | " + " | ".join(cols)
                   + " |\n" + "|---" * (len(cols) + 1) + "|\n")
        for b in baselines:
            row = [format_ratio(level_ratio(cells, config, b, r, metric)) for r in rates]
            if whole:
                row.append(format_ratio(whole_trace_ratio(cells, config, b)))
            out.append(f"| {b} | " + " | ".join(row) + " |\n")
    return "".join(out)


def ratio_rows(cells: Sequence[Cell], config: str, baselines: Sequence[str]) -> list[dict]:
    """The ratios of `ratio_tables` as JSON-ready rows (rate None: the whole trace)."""
    def row(baseline: str, rate: float | None, metric: str, r: Ratio | None) -> dict:
        iv = r.interval if r is not None else None
        return {"config": config, "baseline": baseline, "rate": rate, "metric": metric,
                "value": r.value if r is not None else None,
                "lo": iv.lo if iv else None, "hi": iv.hi if iv else None,
                "significant": bool(r and r.significant)}

    rates = sorted(_cells_by_rate(cells, config))
    out = [row(b, rate, m, level_ratio(cells, config, b, rate, m))
           for b in baselines for m in RATIO_METRICS for rate in rates]
    out += [row(b, None, "goodput_tok_s", whole_trace_ratio(cells, config, b))
            for b in baselines]
    return out


def report_markdown(meta: Mapping[str, object], cells: Sequence[Cell], tpot_slo_s: float, *,
                    statics: Sequence[str], replicates: int, seed: int,
                    policy: str = "adaptive") -> str:
    """summary.md: the command, machine, dtype and mode, the table, and `policy`'s ratios."""
    rounds = max((c.summary.rounds for c in cells), default=0)
    text = (f"# Trace-replay benchmark\n\n`{meta['command']}`\n\n"
            f"Machine: {meta['machine']}; dtype {meta.get('dtype', 'unknown')}; "
            f"mode {meta.get('mode', 'unknown')}; {rounds} round(s), a fresh engine each\n\n"
            "Each cell: the pooled value of its rounds [95% bootstrap interval: rounds drawn, "
            f"then requests within each; {replicates} replicates, seed {seed}].\n"
            + (f"\n**Fewer than {bootstrap.MIN_ROUNDS} rounds: the intervals cannot show "
               "round-to-round noise and are too narrow.**\n"
               if rounds < bootstrap.MIN_ROUNDS else "")
            + "\n" + markdown_table([c.summary for c in cells], tpot_slo_s))
    configs = {c.summary.config for c in cells}
    if policy not in configs:
        return text
    envelope = oracle_envelope(cells, policy, [c for c in statics if c in configs])
    if envelope:
        text += f"\n## {policy} / best static configuration, per load level (goodput)\n\n"
        text += "".join(f"- {rate:g} req/s: {format_ratio(r)} (best static: {name})\n"
                        for rate, (r, name) in envelope.items())
    text += (f"\n## {policy} / each baseline\n\nRatio [95% bootstrap interval of the ratio]; "
             "* where the interval excludes 1 (significant). TPOT: below 1 is better. Whole "
             "trace: all levels' tokens / all levels' time.\n")
    return text + ratio_tables(cells, policy, sorted(configs - {policy}))


@dataclass(frozen=True)
class TpotPrediction:
    """One (configuration, level): the TPOT its engine predicted against what clients measured."""

    config: str
    rate: float
    measured_p50_s: float | None  # clients' per-request TPOT, median
    predicted_p50_s: float | None  # the engine's per-request predicted TPOT, median
    requests: int

    @property
    def error(self) -> float | None:
        """predicted / measured - 1 (None without both)."""
        if not self.measured_p50_s or self.predicted_p50_s is None:
            return None
        return self.predicted_p50_s / self.measured_p50_s - 1


def tpot_predictions(levels: Iterable[tuple[str, float, Sequence[RequestRecord], Sequence[float]]]
                     ) -> list[TpotPrediction]:
    """Pool each (config, rate)'s rounds: (config, rate, client records, predicted TPOTs)."""
    pooled: dict[tuple[str, float], tuple[list[float], list[float]]] = {}
    for config, rate, records, predicted in levels:
        if not predicted:
            continue  # not a SpecServe engine: nothing was predicted
        measured, pred = pooled.setdefault((config, rate), ([], []))
        measured += [r.tpot_s for r in records if r.ok and r.tpot_s is not None]
        pred += predicted
    return [TpotPrediction(config, rate, _pct(measured, 50), _pct(pred, 50), len(measured))
            for (config, rate), (measured, pred) in sorted(pooled.items())]


def tpot_prediction_markdown(rows: Sequence[TpotPrediction]) -> str:
    if not rows:
        return ""
    text = ("\n## Predicted TPOT against what clients measured (per-request p50)\n\n"
            "The engine's prediction per finished request: the predicted seconds of every "
            "engine cycle after its first token / its tokens after the first.\n\n"
            "| config | req/s | clients' TPOT p50 ms | predicted TPOT p50 ms | error | requests |\n"
            "|---|---|---|---|---|---|\n")
    for r in rows:
        err = f"{100 * r.error:+.1f}%" if r.error is not None else "-"
        text += (f"| {r.config} | {r.rate:g} | {_num(r.measured_p50_s, 1e3, 1)} | "
                 f"{_num(r.predicted_p50_s, 1e3, 1)} | {err} | {r.requests} |\n")
    return text
