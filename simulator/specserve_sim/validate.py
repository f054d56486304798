"""The simulator against the real engine: the bench's run, simulated, compared cell by cell.

Input: a trace-replay bench folder (`specserve bench -o DIR` writes DIR/results.json: the
command, the levels, the SLO, every request of every round) and ground truth recorded on the
same machine. Each configuration is simulated as the bench ran it: one fresh replica per
configuration and round, four warm-up requests (the bench's `warm_up`), then the levels one
after another on that replica, each the bench's exact request plan. The simulated records go
through the bench's own summary code (`runner.cells`), so goodput, TPOT and their intervals are
computed the same way.

Reported per (configuration, level): real and simulated goodput and TPOT p50 and the relative
error; the median error per metric; and, per level, every pair of configurations whose real 95%
intervals do not overlap, with whether the simulation orders them the same way.
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from specserve_engine.policy import Policy, Profile
from specserve_engine.trace_replay.client import RequestRecord as BenchRecord
from specserve_engine.trace_replay.runner import LevelResult, cells
from specserve_engine.trace_replay.summary import Cell
from specserve_engine.trace_replay.trace import TraceRow
from specserve_sim.cluster import Cluster
from specserve_sim.configs import bench_config
from specserve_sim.groundtruth import GroundTruth
from specserve_sim.interface import SimRequest, SimResult
from specserve_sim.workload import bench_level

METRICS = ("goodput_tok_s", "tpot_p50_s")
WARM_UP_REQUESTS = 4  # trace_replay.runner.warm_up: 4 requests of 16 tokens, one at a time
WARM_UP_TOKENS = 16


def flag_value(command: str, name: str, default: str) -> str:
    """The value of `--name` in a recorded command line (the bench's meta.command)."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word == name and i + 1 < len(words):
            return words[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    return default


@dataclass(frozen=True)
class BenchRun:
    """What the real bench did and measured (from its results.json)."""

    folder: Path
    meta: Mapping[str, object]
    summaries: Mapping[tuple[str, float], Mapping[str, object]]
    configs: tuple[str, ...]
    rates: tuple[float, ...]
    rounds: int
    count: int
    start: int
    max_prompt_tokens: int
    max_output_tokens: int
    tpot_slo_s: float
    level_timeout_s: float
    seed: int
    replicates: int

    @classmethod
    def load(cls, folder: str | Path) -> BenchRun:
        folder = Path(folder)
        data = json.loads((folder / "results.json").read_text())
        meta = data["meta"]
        command = str(meta.get("command", ""))
        summaries = {(s["config"], float(s["rate"])): s for s in data["summaries"]}
        configs = tuple(dict.fromkeys(s["config"] for s in data["summaries"]))
        return cls(
            folder=folder, meta=meta, summaries=summaries, configs=configs,
            rates=tuple(float(r) for r in meta["rates"]), rounds=int(meta.get("rounds", 1)),
            count=int(meta["requests_per_level"]),
            start=int(flag_value(command, "--trace-start", "0")),
            max_prompt_tokens=int(meta["max_prompt_tokens"]),
            max_output_tokens=int(meta["max_output_tokens"]),
            tpot_slo_s=float(meta["tpot_slo_s"]),
            level_timeout_s=float(flag_value(command, "--level-timeout", "300")),
            seed=int(meta.get("seed", 0)),
            replicates=int(meta.get("bootstrap_replicates", 1000)))

    def adaptive_policy(self) -> Policy | None:
        """The policy file the bench wrote for its adaptive engines, when it is there."""
        path = self.folder / "adaptive-policy.json"
        return Policy.model_validate_json(path.read_text()) if path.is_file() else None


def _bench_records(result: SimResult, requests: Sequence[SimRequest]) -> list[BenchRecord]:
    """Simulated requests as the bench client records them (times relative to the level)."""
    out = []
    for planned, rec in zip(requests, result.requests, strict=True):
        r = BenchRecord(int(planned.request_id), planned.prompt_tokens, planned.output_tokens)
        r.sent_s = rec.arrival
        if rec.finish is not None and rec.first_token is not None:
            r.ttft_s = rec.first_token - rec.arrival
            r.e2e_s = rec.finish - rec.arrival
            r.output_tokens = rec.output_tokens
        else:
            r.error = "cut at the benchmark deadline"
        out.append(r)
    return out


def _counters(result: SimResult) -> tuple[float, float, float, float]:
    """vLLM's counters over the level (runner.COUNTERS order): draft tokens, drafts,
    generated tokens, accepted tokens."""
    steps = result.steps
    return (float(sum(s.drafted for s in steps)), float(sum(s.verifies for s in steps)),
            float(sum(r.output_tokens for r in result.requests if r.finish is not None)),
            float(sum(s.accepted for s in steps)))


def simulate_bench(run: BenchRun, rows: Sequence[TraceRow], truth: GroundTruth, *,
                   profile: Profile | None, rounds: int | None = None, seed: int = 0,
                   configs: Sequence[str] | None = None,
                   progress: Callable[[str], None] | None = None) -> list[LevelResult]:
    """Every (configuration, round) of `run`, simulated as the bench ran it."""
    plans = {rate: bench_level(rows, rate=rate, count=run.count, start=run.start,
                               max_prompt_tokens=run.max_prompt_tokens,
                               max_output_tokens=run.max_output_tokens) for rate in run.rates}
    first = plans[run.rates[0]]
    results = []
    for name in configs or run.configs:
        config = bench_config(name, run.tpot_slo_s, profile,
                              run.adaptive_policy() if name == "adaptive" else None)
        for rnd in range(rounds if rounds is not None else run.rounds):
            cluster = Cluster([], config, truth, 1, seed=seed + rnd,
                              deadline_s=run.level_timeout_s)
            for i, planned in enumerate(first[:WARM_UP_REQUESTS]):
                cluster.run_more([SimRequest(f"warm-up-{i}", 0.0, planned.prompt_tokens,
                                             WARM_UP_TOKENS)])
            for rate in run.rates:
                result = cluster.run_more(plans[rate])
                results.append(LevelResult(name, rate, rnd,
                                           _bench_records(result, plans[rate]),
                                           _counters(result)))
            if progress is not None:
                progress(f"simulated {name} round {rnd}")
    return results


@dataclass(frozen=True)
class Comparison:
    config: str
    rate: float
    metric: str
    real: float | None
    simulated: float | None
    real_lo: float | None
    real_hi: float | None

    @property
    def error(self) -> float | None:
        """|simulated - real| / real."""
        if self.real is None or self.simulated is None or self.real == 0:
            return None
        return abs(self.simulated - self.real) / abs(self.real)


@dataclass(frozen=True)
class PairCheck:
    """Two configurations the real run separates at one level (intervals disjoint)."""

    rate: float
    metric: str
    better: str  # the one with the higher real value
    worse: str
    agrees: bool  # the simulation orders them the same way


def compare(run: BenchRun, simulated: Sequence[Cell],
            metrics: Sequence[str] = METRICS) -> list[Comparison]:
    sim = {(c.summary.config, c.summary.rate): c.summary for c in simulated}
    out = []
    for (config, rate), real in sorted(run.summaries.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        s = sim.get((config, rate))
        for metric in metrics:
            iv = (real.get("intervals") or {}).get(metric) or {}
            value = real.get(metric)
            out.append(Comparison(config, rate, metric,
                                  None if value is None else float(value),  # type: ignore[arg-type]
                                  getattr(s, metric) if s is not None else None,
                                  iv.get("lo"), iv.get("hi")))
    return out


def median_error(comparisons: Sequence[Comparison], metric: str) -> float | None:
    errors = [e for c in comparisons if c.metric == metric and (e := c.error) is not None]
    return statistics.median(errors) if errors else None


def ranking_checks(comparisons: Sequence[Comparison]) -> list[PairCheck]:
    """Per level and metric, every pair whose real intervals are disjoint."""
    groups: dict[tuple[float, str], list[Comparison]] = {}
    for c in comparisons:
        groups.setdefault((c.rate, c.metric), []).append(c)
    checks = []
    for (rate, metric), group in sorted(groups.items()):
        usable = [c for c in group if None not in (c.real, c.simulated, c.real_lo, c.real_hi)]
        for i, a in enumerate(usable):
            for b in usable[i + 1:]:
                assert a.real_lo is not None and a.real_hi is not None
                assert b.real_lo is not None and b.real_hi is not None
                if a.real_hi < b.real_lo or b.real_hi < a.real_lo:
                    hi, lo = (a, b) if a.real > b.real else (b, a)  # type: ignore[operator]
                    checks.append(PairCheck(rate, metric, hi.config, lo.config,
                                            hi.simulated > lo.simulated))  # type: ignore[operator]
    return checks


_LABELS = {"goodput_tok_s": ("goodput tok/s", 1.0, 1), "tpot_p50_s": ("TPOT p50 ms", 1000.0, 1)}


def report_markdown(run: BenchRun, comparisons: Sequence[Comparison],
                    checks: Sequence[PairCheck], truth: GroundTruth) -> str:
    def num(v: float | None, scale: float, digits: int) -> str:
        return "-" if v is None else f"{v * scale:.{digits}f}"

    lines = [f"# Simulator validation: {run.folder}", "",
             f"Bench: `{run.meta.get('command', '')}`; machine {run.meta.get('machine', '?')}; "
             f"dtype {run.meta.get('dtype', '?')}; mode {run.meta.get('mode', '?')}; "
             f"{run.rounds} round(s).", f"Ground truth: {truth.description}.", ""]
    metrics = list(dict.fromkeys(c.metric for c in comparisons))
    head = "| config | load req/s | " + " | ".join(
        f"real {_LABELS.get(m, (m, 1, 3))[0]} | sim | error" for m in metrics) + " |"
    lines += [head, "|---|---|" + "---|---|---|" * len(metrics)]
    rows: dict[tuple[str, float], dict[str, Comparison]] = {}
    for c in comparisons:
        rows.setdefault((c.config, c.rate), {})[c.metric] = c
    for (config, rate), by_metric in rows.items():
        cols = []
        for m in metrics:
            c = by_metric[m]
            _, scale, digits = _LABELS.get(m, (m, 1.0, 3))
            err = c.error
            cols.append(f"{num(c.real, scale, digits)} | {num(c.simulated, scale, digits)} | "
                        f"{'-' if err is None else f'{err * 100:.1f}%'}")
        lines.append(f"| {config} | {rate:g} | " + " | ".join(cols) + " |")
    lines.append("")
    for m in metrics:
        med = median_error(comparisons, m)
        lines.append(f"- median error, {_LABELS.get(m, (m,))[0]}: "
                     f"{'-' if med is None else f'{med * 100:.1f}%'}")
    for m in metrics:
        mine = [c for c in checks if c.metric == m]
        agree = sum(c.agrees for c in mine)
        lines.append(f"- ranking, {_LABELS.get(m, (m,))[0]}: {agree}/{len(mine)} pairs the real "
                     "intervals separate are ordered the same"
                     + ("" if agree == len(mine) else ": " + ", ".join(
                         f"{c.better} > {c.worse} @ {c.rate:g}" for c in mine if not c.agrees)))
    return "\n".join(lines) + "\n"


def validate(run: BenchRun, rows: Sequence[TraceRow], truth: GroundTruth, *,
             profile: Profile | None, rounds: int | None = None, seed: int = 0,
             progress: Callable[[str], None] | None = None
             ) -> tuple[list[Comparison], list[PairCheck], list[Cell]]:
    """Simulate `run` and compare: (per-cell comparisons, ranking checks, simulated cells)."""
    levels = simulate_bench(run, rows, truth, profile=profile, rounds=rounds, seed=seed,
                            progress=progress)
    simulated = cells(levels, run.tpot_slo_s, replicates=min(run.replicates, 200),
                      seed=run.seed)
    comparisons = compare(run, simulated)
    return comparisons, ranking_checks(comparisons), simulated
