"""SLO goodput per configuration: the highest request rate each one serves within the SLO.

Below saturation every configuration delivers the offered load, so the trace-replay table's
goodput ratios there are 1 by construction. This measures capacity the way serving papers do
(DistServe, OSDI'24): the highest rate at which >= 90% of requests meet the TPOT SLO (and the
TTFT SLO with --ttft-slo-ms), searched by `trace_replay.slo_goodput` (exponential steps, then
bisection on a log scale). Each probe sends --requests requests of the Azure trace window at one
rate, with lengths shaped by --workload (trace_replay/trace.py gives the numbers) and Poisson or
bursty (gamma, CV --burst-cv) arrivals, the same pattern at every rate, scaled; it waits at most
--drain-s after the last send, and requests unfinished by then count as misses.

The matrix: every --workload x --arrivals x --tpot-slo-ms cell is searched for every
configuration in every round. Engines run one at a time; an engine starts per (configuration,
round) and runs all its searches, except `adaptive`, whose policy file carries the SLO: it
starts once per SLO. Probes an engine has run are reused by its later searches of another SLO
(same workload, arrivals and rate: the same requests). vLLM's prefix cache is off
(--prefix-caching turns it on): probes replay the same prompts, which would otherwise be cached
after the first probe. A probe is a bounded burst: vLLM runs at most --max-num-seqs requests
(32) and queues the rest, so overload shows in TTFT; give a TTFT SLO (--ttft-slo-ms) to count it.
Without both, an engine that admits a whole probe and meets the TPOT SLO at that batch passes at
any rate. --dry-run prints the engines and a time estimate, starting nothing.

    python bench/slo_goodput.py --eager --profile eager-profile.json -o slo-goodput
    python bench/slo_goodput.py --configs off K=2 adaptive --rounds 2 --tpot-slo-ms 100
    python bench/slo_goodput.py --eager --profile eager-profile.json --rounds 3 \\
        --workload conversation prefill-heavy decode-heavy --arrivals poisson bursty \\
        --tpot-slo-ms 60 150 --configs off K=1 K=2 K=3 K=5 dynamic-sd adaptive-drafter \\
        adaptive-verifier adaptive --dry-run

Configurations: those of `specserve bench` (off K=1 K=2 K=3 K=5 dynamic-sd threshold-0.6
adaptive) and the ablation's adaptive-drafter (adaptive K, every draft verified, no SLO) and
adaptive-verifier (adaptive K and per-request trimming, no SLO). Writes slo-goodput.json (every
probe) and slo-goodput.md (a table per cell with bootstrap intervals, naming CPU, dtype and
mode); --from-results rewrites the tables from a JSON file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import httpx

from specserve_contract.metrics import VLLM_RUNNING, VLLM_WAITING
from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.machine import this_machine
from specserve_engine.policy import Policy, SloTargets
from specserve_engine.serving import engine_dtype
from specserve_engine.trace_replay.client import RequestRecord, replay
from specserve_engine.trace_replay.command import DEFAULT_TRACE
from specserve_engine.trace_replay.runner import (
    ABLATION_POLICIES,
    K_MAX,
    MODEL_NAME,
    BenchConfig,
    Progress,
    ablation_configs,
    engine_name,
    predicted_tpots,
    standard_configs,
    start_engine,
    warm_up,
)
from specserve_engine.trace_replay.slo_goodput import (
    DEFAULT_REPLICATES,
    EngineRun,
    Found,
    SloTarget,
    engine_runs,
    estimate_s,
    expected_probes,
    found_json,
    matrix_markdown,
    quantile,
    read_results,
    slo_goodput,
)
from specserve_engine.trace_replay.trace import (
    ARRIVALS,
    BURSTY_CV,
    DEFAULT_CONTEXT_TOKENS,
    WORKLOADS,
    Shape,
    TraceRow,
    load_trace,
    shaped_plan,
    timed_plan,
    token_prompts,
    workload_shape,
)
from specserve_engine.vllm_counters import metric_totals

# Configurations whose policy file carries the TPOT SLO, with what their policy changes from
# `adaptive`'s: `adaptive-unpriced` is the policy before issue #22 (K priced with the decode
# batch alone, not the step's prefill), measured side by side.
SLO_BOUND_POLICY: dict[str, dict[str, object]] = {
    "adaptive-unpriced": {"price_prefill": False}, "adaptive": {}}
SLO_BOUND = tuple(SLO_BOUND_POLICY)
# For the estimate before anything ran: an engine start, and what a probe takes beyond sending
# (the last requests finishing, then the engine going idle); the 120-request run of
# bench/RESULTS.md (7 engines, 39 probes at 8-32 req/s, 22 min) fits about these.
ENGINE_START_S = 40.0
PROBE_SETTLE_S = 20.0


def wait_idle(url: str, timeout_s: float = 120.0) -> None:
    """Until the engine runs and queues nothing (requests cut at a probe's deadline are aborted
    by vLLM when their connection closes; the next probe must not inherit them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        totals = metric_totals(httpx.get(f"{url}/metrics", timeout=10).text)
        if totals.get(VLLM_RUNNING, 0) + totals.get(VLLM_WAITING, 0) == 0:
            return
        time.sleep(1.0)


class Probes:
    """run(rate) for one engine and one (workload, arrivals): a bounded probe at `rate`, kept so
    a later search of another SLO on the same engine reuses it (the same requests at the same
    rate), and timed for the progress estimate. A SpecServe engine's predicted TPOTs for the
    probe's requests are kept beside it (`predicted_p50`)."""

    def __init__(self, engine: ServerProcess, rows: Sequence[TraceRow],
                 token_ids: Sequence[int], label: str, args: argparse.Namespace, shape: Shape,
                 arrivals: str, seed: int, clock: Clock) -> None:
        self.engine, self.url, self.rows, self.label = engine, engine.url, rows, label
        self.args = args
        self.shape, self.arrivals, self.seed, self.clock = shape, arrivals, seed, clock
        lengths = shaped_plan(rows, shape, rate=1.0, count=args.requests, start=args.trace_start)
        self.prompts = token_prompts(token_ids, [p.prompt_tokens for p in lengths], seed)
        self.ran: dict[float, list[RequestRecord]] = {}
        self.predicted_p50: dict[float, float | None] = {}

    def __call__(self, rate: float) -> list[RequestRecord]:
        if rate not in self.ran:
            self.ran[rate] = self._probe(rate)
        return self.ran[rate]

    def _probe(self, rate: float) -> list[RequestRecord]:
        lengths = shaped_plan(self.rows, self.shape, rate=rate, count=self.args.requests,
                              start=self.args.trace_start)
        plan = timed_plan(lengths, rate=rate, arrivals=self.arrivals, seed=self.seed,
                          cv=self.args.burst_cv)
        progress = Progress(f"{self.label:>17} {self.shape.name} {self.arrivals} @ {rate:.3g}/s",
                            len(plan))
        started = time.monotonic()
        predicted_before = len(predicted_tpots(self.engine))
        records = asyncio.run(replay(self.url, MODEL_NAME, plan, self.prompts,
                                     deadline_s=plan[-1].send_at_s + self.args.drain_s,
                                     on_done=progress.update))
        wait_idle(self.url)
        self.predicted_p50[rate] = quantile(predicted_tpots(self.engine)[predicted_before:], 0.5)
        self.clock.probe(time.monotonic() - started)
        return records


class Clock:
    """Measured engine starts and probes, for the remaining-time estimate."""

    def __init__(self, per_search: float) -> None:
        self.started = time.monotonic()
        self.per_search = per_search  # the planned probes per search, until some have run
        self.starts: list[float] = []
        self.probes: list[float] = []
        self.searches = 0
        self.search_probes = 0

    def probe(self, seconds: float) -> None:
        self.probes.append(seconds)

    def remaining_s(self, runs_left: int, searches_left: int, probe_s: float) -> float:
        start = sum(self.starts) / len(self.starts) if self.starts else ENGINE_START_S
        probe = sum(self.probes) / len(self.probes) if self.probes else probe_s
        per_search = self.search_probes / self.searches if self.searches else self.per_search
        return runs_left * start + searches_left * per_search * probe


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("-o", "--output", default="slo-goodput", help="output folder")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="configurations (default: all of `specserve bench`); also "
                         "adaptive-drafter adaptive-verifier")
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=["conversation"],
                    help="request-length shapes (default conversation)")
    ap.add_argument("--arrivals", nargs="+", choices=ARRIVALS, default=["poisson"],
                    help="arrival processes (default poisson)")
    ap.add_argument("--burst-cv", type=float, default=BURSTY_CV,
                    help=f"coefficient of variation of bursty gaps (default {BURSTY_CV:g})")
    ap.add_argument("--context-tokens", type=int, default=DEFAULT_CONTEXT_TOKENS,
                    help="prompt + output never exceed this (default "
                         f"{DEFAULT_CONTEXT_TOKENS}, the tiny models' context)")
    ap.add_argument("--tpot-slo-ms", type=float, nargs="+", default=[60.0],
                    help="TPOT SLOs, each searched separately; adaptive's policy gets the SLO of "
                         "its search (default 60, as `specserve bench`)")
    ap.add_argument("--ttft-slo-ms", type=float, default=None, help="TTFT SLO (default: none)")
    ap.add_argument("--attainment", type=float, default=0.9,
                    help="fraction of requests that must meet the SLO (default 0.9)")
    ap.add_argument("--requests", type=int, default=32, help="requests per probe (default 32)")
    ap.add_argument("--start-rate", type=float, default=1.0, help="first probe, req/s")
    ap.add_argument("--min-rate", type=float, default=0.25,
                    help="give up below this rate (default 0.25: a probe lasts about "
                         "requests / rate seconds)")
    ap.add_argument("--max-rate", type=float, default=32.0)
    ap.add_argument("--rel-tol", type=float, default=0.1,
                    help="stop when the bracket is within this relative width (default 0.1)")
    ap.add_argument("--max-probes", type=int, default=8, help="per search (default 8)")
    ap.add_argument("--drain-s", type=float, default=60.0,
                    help="a probe waits this long after its last send (default 60)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="searches per configuration and cell, a fresh engine and arrival seed "
                         "each; odd rounds run the configurations in reverse order (default 1)")
    ap.add_argument("--bootstrap", type=int, default=DEFAULT_REPLICATES,
                    help=f"bootstrap replicates per interval (default {DEFAULT_REPLICATES}; "
                         "seeded by --seed)")
    ap.add_argument("--trace-start", type=int, default=0)
    ap.add_argument("--max-prompt-tokens", type=int, default=256, help="conversation's")
    ap.add_argument("--max-output-tokens", type=int, default=128, help="conversation's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eager", action="store_true", help="engines run with --enforce-eager")
    ap.add_argument("--prefix-caching", action="store_true",
                    help="leave vLLM's prefix cache on (default off: probes repeat prompts)")
    ap.add_argument("--profile", default=None, help="step-time profile for the adaptive policies")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `specserve serve` argument for every engine (repeatable)")
    ap.add_argument("--max-num-seqs", type=int, default=32,
                    help="vLLM's cap on running requests (default 32, the largest batch the "
                         "profile measures): past it requests queue and show in TTFT. Without "
                         "a cap a probe of N requests is a burst the engine admits whole, and "
                         "a decode-heavy burst meets the TPOT SLO at any rate, so the search "
                         "never fails; 0 leaves vLLM's default")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the engines to start and the time estimate, run nothing")
    ap.add_argument("--from-results", metavar="JSON", default=None,
                    help="run nothing: rewrite slo-goodput.md in --output from this JSON")
    return ap


def config_names() -> list[str]:
    """Every configuration name --configs accepts, in table order."""
    names = [c.name for c in standard_configs(Path("draft"), Path("policy.json"))]
    return [*names[:-1], *ABLATION_POLICIES, *SLO_BOUND]


def main() -> int:
    args = parser().parse_args()
    out = Path(args.output)
    if args.from_results:
        meta, found = read_results(json.loads(Path(args.from_results).read_text()))
        out.mkdir(parents=True, exist_ok=True)
        write(out, meta, found)
        print((out / "slo-goodput.md").read_text())
        return 0
    known = config_names()
    wanted = args.configs or [c for c in known if c not in ABLATION_POLICIES
                              and c != "adaptive-unpriced"]
    unknown = sorted(set(wanted) - set(known))
    if unknown:
        print(f"unknown configuration(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    try:
        shapes = {w: workload_shape(w, context_tokens=args.context_tokens,
                                    max_prompt_tokens=args.max_prompt_tokens,
                                    max_output_tokens=args.max_output_tokens)
                  for w in args.workload}
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    workloads, arrivals = list(dict.fromkeys(args.workload)), list(dict.fromkeys(args.arrivals))
    slos = list(dict.fromkeys(args.tpot_slo_ms))
    configs = [c for c in known if c in wanted]
    runs = engine_runs(configs, SLO_BOUND, workloads=workloads, arrivals=arrivals, slos_ms=slos,
                       rounds=args.rounds)
    per_search = expected_probes(growth=2.0, rel_tol=args.rel_tol, max_probes=args.max_probes)
    probe_s = (args.requests - 1) / args.start_rate + PROBE_SETTLE_S
    searches = sum(len(r.searches) for r in runs)
    total = estimate_s(runs, probes_per_search=per_search, probe_s=probe_s,
                       engine_start_s=ENGINE_START_S)
    bound = estimate_s(runs, probes_per_search=args.max_probes, engine_start_s=ENGINE_START_S,
                       probe_s=(args.requests - 1) / args.min_rate + args.drain_s + 10)
    print(f"[slo-goodput] {len(runs)} engines, {searches} searches; estimate {hours(total)} "
          f"({len(runs)} x {ENGINE_START_S:.0f} s start + {searches} x {per_search} probes x "
          f"{probe_s:.0f} s, a probe at the start rate); bound {hours(bound)} ("
          f"{args.max_probes} probes per search, each at --min-rate with the whole --drain-s)",
          file=sys.stderr, flush=True)
    if args.dry_run:
        for r in runs:
            slo = f" (policy SLO {r.policy_slo_ms:g} ms)" if r.policy_slo_ms is not None else ""
            print(f"round {r.round}: {r.config}{slo}: {len(r.searches)} searches")
        return 0
    return run_matrix(args, out, runs, shapes, Clock(per_search), probe_s)


def run_matrix(args: argparse.Namespace, out: Path, runs: Sequence[EngineRun],
               shapes: dict[str, Shape], clock: Clock, probe_s: float) -> int:
    rows = load_trace(Path(args.trace))
    models = tiny.build()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models.target / "tokenizer.json"))
    token_ids = tokenizer.encode(models.heldout.read_text(encoding="utf-8")).ids
    policies = out / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    profile = Path(args.profile) if args.profile else None
    ablation_files = {name: policies / f"{name}.json" for name in ABLATION_POLICIES}
    for name, policy in ABLATION_POLICIES.items():
        ablation_files[name].write_text(policy.model_dump_json(indent=1))
    # `adaptive` is not taken from here: its policy file, one per SLO, is `config_for`'s.
    fixed = {c.name: c for c in [*standard_configs(models.draft, policies / "none.json",
                                                   profile),
                                 *ablation_configs(models.draft, ablation_files, profile)]}

    def config_for(run: EngineRun) -> BenchConfig:
        if run.policy_slo_ms is None:
            return fixed[run.config]
        path = policies / f"{run.config}-{run.policy_slo_ms:g}ms.json"
        path.write_text(Policy(mode="adaptive", k_max=K_MAX, slo=SloTargets(
            tpot_seconds=run.policy_slo_ms / 1000),
            **SLO_BOUND_POLICY[run.config],  # type: ignore[arg-type]
        ).model_dump_json(indent=1))
        [config] = [c for c in standard_configs(models.draft, path, profile)
                    if c.name == "adaptive"]
        return BenchConfig(run.config, config.serve_args, specserve=True)

    mode = "eager" if args.eager or "--enforce-eager" in args.serve_arg else "compiled"
    vllm_args = [*(["--enforce-eager"] if args.eager else []),
                 *([] if args.prefix_caching else ["--no-enable-prefix-caching"]),
                 *(["--max-num-seqs", str(args.max_num_seqs)] if args.max_num_seqs else [])]
    extra = [*args.serve_arg, *(["--", *vllm_args] if vllm_args else [])]
    meta = {"command": " ".join(sys.argv), "machine": this_machine().describe(),
            "dtype": engine_dtype(models.target, args.serve_arg), "mode": mode,
            "ttft_slo_s": None if args.ttft_slo_ms is None else args.ttft_slo_ms / 1000,
            "attainment": args.attainment, "requests_per_probe": args.requests,
            "bootstrap": args.bootstrap, "seed": args.seed, "burst_cv": args.burst_cv,
            "prefix_caching": args.prefix_caching, "max_num_seqs": args.max_num_seqs or None,
            "workloads": {w: asdict(s) for w, s in shapes.items()},
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    found: list[Found] = []
    searches_left = sum(len(r.searches) for r in runs)
    for i, run in enumerate(runs):
        config = config_for(run)
        slo_part = "" if run.policy_slo_ms is None else f"-{run.policy_slo_ms:g}ms"
        started = time.monotonic()
        engine = start_engine(config, models.target, extra_serve_args=extra,
                              log_path=out / f"engine-{engine_name(config)}{slo_part}"
                                             f"-r{run.round}.log")
        clock.starts.append(time.monotonic() - started)
        try:
            warm_up(engine, token_prompts(token_ids, [32] * 4, args.seed))
            probes: dict[tuple[str, str], Callable[[float], list[RequestRecord]]] = {}
            for key in run.searches:
                if (key.workload, key.arrivals) not in probes:
                    probes[key.workload, key.arrivals] = Probes(
                        engine, rows, token_ids, config.name, args, shapes[key.workload],
                        key.arrivals, args.seed + run.round, clock)
                probe = probes[key.workload, key.arrivals]
                ran_before = len(clock.probes)
                target = SloTarget(key.tpot_slo_ms / 1000, meta["ttft_slo_s"], args.attainment)
                result = slo_goodput(probe, target, start_rate=args.start_rate,
                                     min_rate=args.min_rate, max_rate=args.max_rate,
                                     rel_tol=args.rel_tol, max_probes=args.max_probes)
                result = replace(result, probes=tuple(
                    replace(p, predicted_tpot_p50_s=probe.predicted_p50.get(p.rate))
                    for p in result.probes))
                found.append(Found(key, config.name, run.round, result))
                clock.searches += 1
                clock.search_probes += len(clock.probes) - ran_before
                searches_left -= 1
                left = clock.remaining_s(len(runs) - i - 1, searches_left, probe_s)
                print(f"[slo-goodput] {config.name} r{run.round} {key.workload} {key.arrivals} "
                      f"{key.tpot_slo_ms:g} ms: {result.rate:.3g} req/s (fails at "
                      f"{result.upper}), {len(result.probes)} probes "
                      f"({len(clock.probes) - ran_before} run, the rest reused); "
                      f"{searches_left} searches left, about {hours(left)} "
                      f"({hours(time.monotonic() - clock.started)} so far)",
                      file=sys.stderr, flush=True)
                write(out, meta, found)
        finally:
            engine.stop()
    print((out / "slo-goodput.md").read_text())
    return 0


def write(out: Path, meta: dict, found: Sequence[Found]) -> None:
    (out / "slo-goodput.json").write_text(json.dumps(
        {"meta": meta, "searches": [found_json(f) for f in found]}, indent=1))
    describe = f"{meta['machine']}; dtype {meta['dtype']}; mode {meta['mode']}"
    (out / "slo-goodput.md").write_text(
        f"# SLO goodput\n\n`{meta['command']}`\n\nMachine: {meta['machine']}; dtype "
        f"{meta['dtype']}; mode {meta['mode']}; {meta['requests_per_probe']} requests per "
        f"probe; "
        + (f"at most {meta['max_num_seqs']} running requests (vLLM --max-num-seqs); "
           if meta.get("max_num_seqs") else "")
        + f"bursty arrivals: gamma gaps, CV {meta.get('burst_cv', BURSTY_CV):g}; "
        f"{meta.get('bootstrap', DEFAULT_REPLICATES)} bootstrap replicates\n\n"
        + matrix_markdown(found, describe=describe, ttft_s=meta.get("ttft_slo_s"),
                          attainment=meta.get("attainment", 0.9),
                          replicates=meta.get("bootstrap", DEFAULT_REPLICATES),
                          seed=meta.get("seed", 0))
        + "\nmin..max: the rounds' answers; brackets: lowest passing .. highest failing rate "
          "over the rounds (the search's resolution); 95% interval: bootstrap over rounds, each "
          "drawn search's capacity uniform in its bracket; * where it excludes 1. probes: "
          "per search (a probe one engine ran for one SLO's search and reused in another's "
          "counts in both).\n")


if __name__ == "__main__":
    sys.exit(main())
