"""One fresh engine per configuration, the same request sequence at every load level.

Configurations (docs/architecture.md, "Benchmark baselines"; all on the same target and draft):
no speculation; vLLM's own fixed K in {1, 2, 3, 5}; vLLM's Dynamic-SD table (a hand-set K per
batch-size range); confidence-threshold drafting (stop at draft probability < 0.6, K_max 5);
SpecServe adaptive (K_max 5, the bench's TPOT SLO in its policy). Engines run one at a time
(this project's machines have 2 cores); with `rounds` > 1 the configuration order is reversed
every other round so slow drift of the machine does not favour whichever ran first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from specserve_contract import ENV_RECORD_CYCLES, ENV_RECORD_REQUESTS
from specserve_contract.metrics import (
    VLLM_GENERATION_TOKENS,
    VLLM_RUNNING,
    VLLM_SPEC_ACCEPTED_TOKENS,
    VLLM_SPEC_DRAFT_TOKENS,
    VLLM_SPEC_DRAFTS,
)
from specserve_engine.launcher import ServerProcess, free_port
from specserve_engine.policy import Policy
from specserve_engine.trace_replay.bootstrap import DEFAULT_REPLICATES
from specserve_engine.trace_replay.client import RequestRecord, replay
from specserve_engine.trace_replay.summary import Cell, Counters, RoundRecords, cell, mean_k
from specserve_engine.trace_replay.trace import (
    PlannedRequest,
    TraceRow,
    plan_requests,
    token_prompts,
)
from specserve_engine.vllm_counters import metric_totals

MODEL_NAME = "bench"
# A hand-set table of the kind vLLM's Dynamic-SD docs describe: long drafts when the batch is
# small, shorter as it grows, none once verification is compute-bound.
DYNAMIC_SD_TABLE = "1-2:5,3-8:3,9-16:2,17-32:1,33-1024:0"
STATIC_KS = (1, 2, 3, 5)
K_MAX = 5


@dataclass(frozen=True)
class BenchConfig:
    name: str
    serve_args: tuple[str, ...]
    specserve: bool = False  # has a SpecServe control port (its specserve_* metrics)


def standard_configs(draft: Path, policy_file: Path, profile: Path | None = None
                     ) -> list[BenchConfig]:
    """Every baseline and SpecServe adaptive; `profile` is the adaptive policy's step-time
    profile (default: the one `specserve serve` finds in the model folder)."""
    d = ("--draft", str(draft))
    profiled = ("--profile", str(profile)) if profile else ()
    configs = [BenchConfig("off", ("--draft", "none"))]
    configs += [BenchConfig(f"K={k}", (*d, "--k-max", str(k), "--no-specserve"))
                for k in STATIC_KS]
    configs += [
        BenchConfig("dynamic-sd", (*d, "--k-max", str(K_MAX), "--no-specserve",
                                   "--k-table", DYNAMIC_SD_TABLE)),
        BenchConfig("threshold-0.6", (*d, "--k-max", str(K_MAX), "--mode", "threshold"),
                    specserve=True),
        BenchConfig("adaptive", (*d, "--k-max", str(K_MAX), "--policy-file", str(policy_file),
                                 *profiled), specserve=True),
    ]
    return configs


# SpecServe's components one at a time (the ablation); the full policy is `adaptive` above. The
# policies carry no SLO, so one engine serves every SLO's search.
ABLATION_POLICIES = {
    # adaptive K per step, every draft verified
    "adaptive-drafter": Policy(mode="adaptive", k_max=K_MAX, trim_drafts=False),
    # adaptive K, and per request the low-confidence draft tail dropped before verification
    "adaptive-verifier": Policy(mode="adaptive", k_max=K_MAX, trim_drafts=True),
}


def ablation_configs(draft: Path, policy_files: Mapping[str, Path], profile: Path | None = None
                     ) -> list[BenchConfig]:
    """The ablation configurations, in ABLATION_POLICIES' order, each serving the policy written
    at `policy_files[name]` (the caller writes ABLATION_POLICIES[name] there)."""
    profiled = ("--profile", str(profile)) if profile else ()
    return [BenchConfig(name, ("--draft", str(draft), "--k-max", str(K_MAX), "--policy-file",
                               str(policy_files[name]), *profiled), specserve=True)
            for name in ABLATION_POLICIES]


@dataclass
class LevelResult:
    """One configuration at one load level in one round."""

    config: str
    rate: float
    round: int
    records: list[RequestRecord]
    # vLLM's counters over the level, in the order of COUNTERS.
    counters: Counters = (0.0, 0.0, 0.0, 0.0)
    # (seconds since the level started, running requests, K verified since the last sample).
    timeline: list[tuple[float, float, float | None]] = field(default_factory=list)
    # SpecServe engines only: each finished request's TPOT as the engine's model predicted it.
    predicted_tpot_s: list[float] = field(default_factory=list)


def cells(results: Sequence[LevelResult], tpot_slo_s: float, *,
          replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> list[Cell]:
    """One cell per (configuration, load level): the rounds pooled, with bootstrap intervals."""
    groups: dict[tuple[str, float], list[LevelResult]] = {}
    for r in sorted(results, key=lambda r: r.round):
        groups.setdefault((r.config, r.rate), []).append(r)
    return [cell(config, rate, [RoundRecords(g.records, g.counters) for g in group],
                 tpot_slo_s=tpot_slo_s, replicates=replicates, seed=seed)
            for (config, rate), group in groups.items()]


class Progress:
    """One status line on stderr, rewritten as requests finish."""

    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done, self.errors = label, total, 0, 0
        self.started = time.monotonic()

    def update(self, record: RequestRecord) -> None:
        self.done += 1
        self.errors += 0 if record.ok else 1
        width = 24
        filled = width * self.done // max(self.total, 1)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} errors {self.errors} "
                         f"{time.monotonic() - self.started:5.0f}s")
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


class _Sampler(threading.Thread):
    """Polls vLLM's metrics while a level runs: running requests, and the K actually verified
    (draft tokens per decoding request-step) since the previous sample."""

    def __init__(self, engine_url: str, period_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.engine_url, self.period_s = engine_url, period_s
        self.samples: list[tuple[float, float, float | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        with httpx.Client(timeout=5) as client:
            last: tuple[float, float, float] | None = None
            while not self._halt.wait(self.period_s):
                try:
                    engine = metric_totals(client.get(f"{self.engine_url}/metrics").text)
                except httpx.HTTPError:
                    continue
                counters = _counters(engine)
                k = None if last is None else mean_k(
                    *(a - b for a, b in zip(counters, last, strict=True)))
                last = counters
                self.samples.append((time.monotonic() - start,
                                     engine.get(VLLM_RUNNING, 0.0), k))

    def stop(self) -> list[tuple[float, float, float | None]]:
        self._halt.set()
        self.join()
        return self.samples


COUNTERS = ("draft_tokens", "drafts", "generated_tokens", "accepted_tokens")


def _counters(t: dict[str, float]) -> tuple[float, float, float, float]:
    """vLLM's counters, in the order of COUNTERS."""
    return (t.get(VLLM_SPEC_DRAFT_TOKENS, 0.0), t.get(VLLM_SPEC_DRAFTS, 0.0),
            t.get(VLLM_GENERATION_TOKENS, 0.0), t.get(VLLM_SPEC_ACCEPTED_TOKENS, 0.0))


def _read_counters(url: str) -> tuple[float, float, float, float]:
    return _counters(metric_totals(httpx.get(f"{url}/metrics", timeout=10).text))


@dataclass(frozen=True)
class Workload:
    rates: tuple[float, ...]
    plans: dict[float, list[PlannedRequest]]
    prompts: list[list[int]]  # the same prompts at every level (the plans share lengths)

    @classmethod
    def build(cls, rows: Sequence[TraceRow], token_ids: Sequence[int], *, rates: Sequence[float],
              count: int, max_prompt_tokens: int, max_output_tokens: int, start: int,
              seed: int) -> Workload:
        plans = {r: plan_requests(rows, rate=r, count=count, start=start,
                                  max_prompt_tokens=max_prompt_tokens,
                                  max_output_tokens=max_output_tokens) for r in rates}
        first = plans[rates[0]]
        prompts = token_prompts(token_ids, [p.prompt_tokens for p in first], seed)
        return cls(tuple(rates), plans, prompts)


def predicted_tpots(engine: ServerProcess) -> list[float]:
    """Every predicted TPOT the engine has recorded so far (`ENV_RECORD_REQUESTS`)."""
    path = engine.env.get(ENV_RECORD_REQUESTS)
    if not path or not Path(path).is_file():
        return []
    return [json.loads(line)["predicted_tpot_seconds"]
            for line in Path(path).read_text().splitlines() if line.strip()]


def run_level(engine: ServerProcess, config: BenchConfig, workload: Workload, rate: float,
              rnd: int, *, deadline_s: float) -> LevelResult:
    plan = workload.plans[rate]
    progress = Progress(f"{config.name:>13} @ {rate:g} req/s", len(plan))
    before = _read_counters(engine.url)
    predicted_before = len(predicted_tpots(engine))
    sampler = _Sampler(engine.url)
    sampler.start()
    try:
        records = asyncio.run(replay(engine.url, MODEL_NAME, plan, workload.prompts,
                                     deadline_s=deadline_s, on_done=progress.update))
    finally:
        timeline = sampler.stop()
    after = _read_counters(engine.url)
    delta = tuple(a - b for a, b in zip(after, before, strict=True))
    predicted = predicted_tpots(engine)[predicted_before:]
    return LevelResult(config.name, rate, rnd, records, delta, timeline,  # type: ignore[arg-type]
                       predicted)


def warm_up(engine: ServerProcess, prompts: Sequence[list[int]]) -> None:
    """A few short requests first: the first steps of a fresh engine are slower."""
    for prompt in prompts[:4]:
        httpx.post(f"{engine.url}/v1/completions", timeout=300, json={
            "model": MODEL_NAME, "prompt": prompt, "max_tokens": 16, "temperature": 0,
            "ignore_eos": True}).raise_for_status()


def start_engine(config: BenchConfig, target: Path, *, extra_serve_args: Sequence[str],
                 log_path: Path) -> ServerProcess:
    """`specserve serve` for one configuration, started and answering (stopped on failure)."""
    control_port = free_port() if config.specserve else None
    args = ["--model", str(target), "--served-model-name", MODEL_NAME, *config.serve_args]
    if control_port:
        args += ["--control-port", str(control_port)]
    # SpecServe engines record each request's predicted TPOT and each cycle's predicted and
    # measured time (policy/cycle_error.py) beside the log.
    env = {ENV_RECORD_REQUESTS: str(log_path.with_suffix(".requests.jsonl")),
           ENV_RECORD_CYCLES: str(log_path.with_suffix(".cycles.jsonl"))} \
        if config.specserve else {}
    engine = ServerProcess([*args, *extra_serve_args], name=engine_name(config),
                           log_path=log_path, env=env)
    print(f"[bench] starting engine {config.name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    engine.start()
    try:
        engine.wait_ready()
    except BaseException:
        engine.stop()
        raise
    print(f"[bench] {config.name} ready in {time.monotonic() - started:.0f}s",
          file=sys.stderr, flush=True)
    return engine


def engine_name(config: BenchConfig) -> str:
    """The configuration's name as a file-name part ("K=3" -> "K3")."""
    return config.name.replace("=", "").replace(".", "")


def run_config(config: BenchConfig, target: Path, workload: Workload, rnd: int, *,
               deadline_s: float, extra_serve_args: Sequence[str],
               log_dir: Path) -> list[LevelResult]:
    engine = start_engine(config, target, extra_serve_args=extra_serve_args,
                          log_path=log_dir / f"engine-{engine_name(config)}-r{rnd}.log")
    try:
        warm_up(engine, workload.prompts)
        return [run_level(engine, config, workload, rate, rnd,
                          deadline_s=deadline_s) for rate in workload.rates]
    finally:
        engine.stop()


def write_results(path: Path, meta: dict, table: Sequence[Cell],
                  results: Sequence[LevelResult], ratios: Sequence[dict] = ()) -> None:
    data = {
        "meta": meta,
        "summaries": [asdict(c.summary) for c in table],
        "ratios": list(ratios),
        "levels": [{"config": r.config, "rate": r.rate, "round": r.round,
                    "counters": dict(zip(COUNTERS, r.counters, strict=True)),
                    "records": [{**asdict(rec), "tpot_s": rec.tpot_s} for rec in r.records],
                    "predicted_tpot_s": r.predicted_tpot_s,
                    "timeline": r.timeline} for r in results],
    }
    path.write_text(json.dumps(data, indent=1))


def read_results(path: Path) -> tuple[dict, list[LevelResult]]:
    """`write_results`'s file back: its meta and every level of every round."""
    data = json.loads(path.read_text())
    fields = set(RequestRecord.__dataclass_fields__)
    results = [
        LevelResult(
            level["config"], float(level["rate"]), int(level["round"]),
            [RequestRecord(**{k: v for k, v in rec.items() if k in fields})
             for rec in level["records"]],
            tuple(level["counters"][name] for name in COUNTERS),  # type: ignore[arg-type]
            [tuple(t) for t in level.get("timeline", [])],  # type: ignore[misc]
            list(level.get("predicted_tpot_s", [])))
        for level in data["levels"]]
    return data["meta"], results
