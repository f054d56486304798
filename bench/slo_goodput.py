"""SLO goodput per configuration: the highest request rate each one serves within the SLO.

Below saturation every configuration delivers the offered load, so the trace-replay table's
goodput ratios there are 1 by construction. This measures capacity the way serving papers do
(DistServe, OSDI'24): the highest rate at which >= 90% of requests meet the TPOT SLO (and the
TTFT SLO with --ttft-slo-ms). For each configuration it starts one engine (one at a time, as
bench/crossover.py does), then searches the rate (`trace_replay.slo_goodput`: exponential steps,
then bisection on a log scale); each probe sends --requests requests of the Azure trace window
with Poisson arrivals at that rate (the same arrival pattern at every rate, scaled) and waits at
most --drain-s after the last send; requests unfinished by then count as misses.

    python bench/slo_goodput.py --eager --profile eager-profile.json -o slo-goodput
    python bench/slo_goodput.py --configs off K=2 adaptive --rounds 2 --tpot-slo-ms 100

Writes slo-goodput.json (every probe) and slo-goodput.md (the table, naming CPU, dtype and mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import httpx

from specserve_contract.metrics import VLLM_RUNNING, VLLM_WAITING
from specserve_engine import tiny
from specserve_engine.machine import this_machine
from specserve_engine.policy import Policy, SloTargets
from specserve_engine.serving import engine_dtype
from specserve_engine.trace_replay.client import RequestRecord, replay
from specserve_engine.trace_replay.command import DEFAULT_TRACE
from specserve_engine.trace_replay.runner import (
    MODEL_NAME,
    Progress,
    engine_name,
    standard_configs,
    start_engine,
    warm_up,
)
from specserve_engine.trace_replay.slo_goodput import SloGoodput, SloTarget, markdown, slo_goodput
from specserve_engine.trace_replay.trace import TraceRow, load_trace, poisson_plan, token_prompts
from specserve_engine.vllm_counters import metric_totals


def wait_idle(url: str, timeout_s: float = 120.0) -> None:
    """Until the engine runs and queues nothing (requests cut at a probe's deadline are aborted
    by vLLM when their connection closes; the next probe must not inherit them)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        totals = metric_totals(httpx.get(f"{url}/metrics", timeout=10).text)
        if totals.get(VLLM_RUNNING, 0) + totals.get(VLLM_WAITING, 0) == 0:
            return
        time.sleep(1.0)


def probe_runner(url: str, rows: Sequence[TraceRow], token_ids: Sequence[int], label: str,
                 args: argparse.Namespace, seed: int) -> Callable[[float], list[RequestRecord]]:
    """run(rate): one bounded probe at `rate` against the engine at `url`."""
    def run(rate: float) -> list[RequestRecord]:
        plan = poisson_plan(rows, rate=rate, count=args.requests, start=args.trace_start,
                            max_prompt_tokens=args.max_prompt_tokens,
                            max_output_tokens=args.max_output_tokens, seed=seed)
        prompts = token_prompts(token_ids, [p.prompt_tokens for p in plan], seed)
        progress = Progress(f"{label:>13} @ {rate:.3g} req/s", len(plan))
        records = asyncio.run(replay(url, MODEL_NAME, plan, prompts,
                                     deadline_s=plan[-1].send_at_s + args.drain_s,
                                     on_done=progress.update))
        wait_idle(url)
        return records
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--trace", default=DEFAULT_TRACE)
    ap.add_argument("-o", "--output", default="slo-goodput", help="output folder")
    ap.add_argument("--configs", nargs="+", default=None,
                    help="configurations (default: all of `specserve bench`)")
    ap.add_argument("--tpot-slo-ms", type=float, default=60.0,
                    help="TPOT SLO (default 60, as `specserve bench`; the adaptive policy's too)")
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
                    help="searches per configuration, a fresh engine and arrival seed each; odd "
                         "rounds run the configurations in reverse order (default 1)")
    ap.add_argument("--trace-start", type=int, default=0)
    ap.add_argument("--max-prompt-tokens", type=int, default=256)
    ap.add_argument("--max-output-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eager", action="store_true", help="engines run with --enforce-eager")
    ap.add_argument("--profile", default=None, help="step-time profile for the adaptive policy")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `specserve serve` argument for every engine (repeatable)")
    args = ap.parse_args()

    rows = load_trace(Path(args.trace))
    models = tiny.build()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models.target / "tokenizer.json"))
    token_ids = tokenizer.encode(models.heldout.read_text(encoding="utf-8")).ids
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    target = SloTarget(args.tpot_slo_ms / 1000,
                       None if args.ttft_slo_ms is None else args.ttft_slo_ms / 1000,
                       args.attainment)
    policy_file = out / "adaptive-policy.json"
    policy_file.write_text(Policy(mode="adaptive", k_max=5, slo=SloTargets(
        tpot_seconds=target.tpot_s)).model_dump_json(indent=1))
    configs = standard_configs(models.draft, policy_file,
                               Path(args.profile) if args.profile else None)
    if args.configs:
        unknown = sorted(set(args.configs) - {c.name for c in configs})
        if unknown:
            print(f"unknown configuration(s) {', '.join(unknown)}", file=sys.stderr)
            return 2
        configs = [c for c in configs if c.name in args.configs]
    mode = "eager" if args.eager or "--enforce-eager" in args.serve_arg else "compiled"
    extra = [*args.serve_arg, *(["--", "--enforce-eager"] if args.eager else [])]
    meta = {"command": " ".join(sys.argv), "machine": this_machine().describe(),
            "dtype": engine_dtype(models.target, args.serve_arg), "mode": mode,
            "slo": asdict(target), "requests_per_probe": args.requests,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    results: dict[str, list[SloGoodput]] = {c.name: [] for c in configs}
    for rnd in range(args.rounds):
        for config in configs if rnd % 2 == 0 else configs[::-1]:
            engine = start_engine(config, models.target, extra_serve_args=extra,
                                  log_path=out / f"engine-{engine_name(config)}-r{rnd}.log")
            try:
                warm_up(engine, token_prompts(token_ids, [32] * 4, args.seed))
                run = probe_runner(engine.url, rows, token_ids, config.name, args,
                                   seed=args.seed + rnd)
                found = slo_goodput(run, target, start_rate=args.start_rate,
                                    min_rate=args.min_rate, max_rate=args.max_rate,
                                    rel_tol=args.rel_tol, max_probes=args.max_probes)
            finally:
                engine.stop()
            results[config.name].append(found)
            print(f"[slo-goodput] {config.name} round {rnd + 1}: {found.rate:.3g} req/s "
                  f"(fails at {found.upper}) after {len(found.probes)} probes",
                  file=sys.stderr, flush=True)
            write(out, meta, results, target)
    print((out / "slo-goodput.md").read_text())
    return 0


def write(out: Path, meta: dict, results: dict[str, list[SloGoodput]], target: SloTarget) -> None:
    (out / "slo-goodput.json").write_text(json.dumps(
        {"meta": meta, "results": {name: [{**asdict(s), "converged": s.converged}
                                          for s in searches]
                                   for name, searches in results.items()}}, indent=1))
    baseline = "off" if results.get("off") else None
    (out / "slo-goodput.md").write_text(
        f"# SLO goodput\n\n`{meta['command']}`\n\nMachine: {meta['machine']}; dtype "
        f"{meta['dtype']}; mode {meta['mode']}; {meta['requests_per_probe']} requests per "
        "probe, Poisson arrivals\n\n" + markdown(results, target, baseline)
        + "\nbounds: lowest passing .. highest failing rate over the searches; range: the "
          "ratio's range from both bounds (search resolution and spread over rounds, not a "
          "confidence interval); * where it excludes 1.\n")


if __name__ == "__main__":
    sys.exit(main())
