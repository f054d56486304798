"""`specserve simulate`: replay a trace on simulated SpecServe replicas (docs/simulator.md).

    specserve simulate --synthetic-acceptance --replicas 32 --speedup 100     # GPU model, smoke
    specserve simulate --steps bench/results/sim-groundtruth/steps.jsonl \\
        --verifications bench/results/sim-groundtruth/verifications.jsonl \\
        --rate 2 --requests 48 --config adaptive                         # one bench level, CPU

Ground truth: `--steps` (raw step records of this machine, interpolated) or the published H100
model (default); acceptance from `--verifications` (the real engine's records), or synthetic
records with `--synthetic-acceptance` (a smoke run: no claim rests on it). Workload: the
bench's plan for one level (`--rate` with `--requests`, lengths scaled to the tiny models) or
the trace at its own lengths, its gaps divided by `--speedup`. No controller: a fixed replica
count (the control side adds controllers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from specserve_engine.trace_replay.trace import TraceError, load_trace, percentile

DEFAULT_TRACE = "../shared/traces/azure_llm_conv_2023.csv"
GROUND_TRUTH_DIR = "bench/results/sim-groundtruth"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default=DEFAULT_TRACE, help=f"trace CSV (default {DEFAULT_TRACE})")
    p.add_argument("--requests", type=int, default=None,
                   help="requests from --trace-start (default: the whole trace; with --rate 48)")
    p.add_argument("--trace-start", type=int, default=0)
    p.add_argument("--speedup", type=float, default=1.0,
                   help="trace at its own lengths, gaps divided by this (default 1: native)")
    p.add_argument("--rate", type=float, default=None,
                   help="instead: the bench's plan at this rate (req/s), lengths scaled to "
                        "--max-prompt-tokens / --max-output-tokens")
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--max-output-tokens", type=int, default=128)
    p.add_argument("--config", default="adaptive",
                   help="a bench configuration: off K=1 K=2 K=3 K=5 dynamic-sd threshold-0.6 "
                        "adaptive (default)")
    p.add_argument("--tpot-slo-ms", type=float, default=50.0)
    p.add_argument("--steps", default=None,
                   help="step records (SPECSERVE_RECORD_STEPS lines) as ground truth; default: "
                        "the published H100 model")
    p.add_argument("--verifications", default=None,
                   help=f"verification records (default {GROUND_TRUTH_DIR}/verifications.jsonl)")
    p.add_argument("--synthetic-acceptance", action="store_true",
                   help="synthetic verification records (a smoke run, not a measurement)")
    p.add_argument("--profile", default=None,
                   help="the policy's starting profile (default: what the profiler would "
                        "measure on the GPU model; with --steps the built-in prior)")
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deadline", type=float, default=None, help="stop after this many seconds")
    p.add_argument("-o", "--output", default=None,
                   help="write requests, time series and scaling events as JSON")


def _fail(msg: str) -> int:
    print(f"specserve simulate: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from specserve_engine.policy import Profile
    from specserve_sim import synthetic, workload
    from specserve_sim.cluster import Cluster
    from specserve_sim.configs import BENCH_CONFIGS, bench_config
    from specserve_sim.groundtruth import GroundTruth, StepTimeTable, VerificationSampler
    from specserve_sim.hardware import HardwareModel, grid_profile

    if args.config not in BENCH_CONFIGS:
        return _fail(f"unknown --config {args.config}; known: {' '.join(BENCH_CONFIGS)}")
    if args.replicas < 1:
        return _fail("--replicas must be >= 1")
    try:
        rows = load_trace(Path(args.trace))
    except TraceError as exc:
        return _fail(str(exc))
    verify_path = Path(args.verifications or f"{GROUND_TRUTH_DIR}/verifications.jsonl")
    if args.synthetic_acceptance:
        sampler = synthetic.ground_truth(args.seed).verifications
    elif verify_path.is_file():
        sampler = VerificationSampler.from_jsonl(verify_path)
    else:
        return _fail(f"no verification records at {verify_path}: record them with "
                     "SPECSERVE_RECORD_VERIFICATIONS (docs/simulator.md) or pass "
                     "--synthetic-acceptance for a smoke run")
    profile = Profile.load(args.profile) if args.profile else None
    if args.steps:
        steps = StepTimeTable.from_jsonl(args.steps)
        described = f"step records {args.steps}"
    else:
        hw = HardwareModel()
        steps, described = hw, hw.name
        profile = profile or grid_profile(hw)
    truth = GroundTruth(steps, sampler, f"{described}; acceptance {sampler.source}")
    config = bench_config(args.config, args.tpot_slo_ms / 1000, profile)
    if not args.steps:
        config = config.with_gpu_defaults()
    try:
        if args.rate is not None:
            requests = workload.bench_level(
                rows, rate=args.rate, count=args.requests or 48, start=args.trace_start,
                max_prompt_tokens=args.max_prompt_tokens,
                max_output_tokens=args.max_output_tokens)
        else:
            requests = workload.native(rows, speedup=args.speedup, count=args.requests,
                                       start=args.trace_start)
    except ValueError as exc:
        return _fail(str(exc))
    started = time.perf_counter()
    result = Cluster(requests, config, truth, args.replicas, seed=args.seed,
                     deadline_s=args.deadline).run()
    wall = time.perf_counter() - started
    print(summary_text(result, args.tpot_slo_ms / 1000, wall, truth.description, config.name))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "requests": [asdict(r) for r in result.requests],
            "series": [asdict(p) for p in result.series],
            "scaling": [asdict(e) for e in result.scaling],
            "replica_seconds": result.replica_seconds, "end_time": result.end_time}))
    return 0


def summary_text(result: object, tpot_slo_s: float, wall_s: float, truth: str,
                 config: str) -> str:
    from specserve_sim.interface import SimResult

    assert isinstance(result, SimResult)
    done = [r for r in result.requests if r.finish is not None]
    tpots = [t for r in done if (t := r.tpot) is not None]
    ttfts = [t for r in done if (t := r.ttft) is not None]
    steps = result.steps
    request_steps = sum(s.batch for s in steps)

    def pct(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:.1f}" if values else "-"

    met = sum(1 for r in done if r.tpot is None or r.tpot <= tpot_slo_s)
    span = result.end_time - min((r.arrival for r in result.requests), default=0.0)
    return "\n".join([
        f"config {config}; ground truth: {truth}",
        f"requests {len(done)}/{len(result.requests)} done in {result.end_time:.1f} simulated s "
        f"({wall_s:.1f} s wall, {len(steps)} engine steps)",
        f"goodput {sum(r.output_tokens for r in done) / span if span > 0 else 0:.1f} tok/s; "
        f"TTFT p50/p99 {pct(ttfts, 50)}/{pct(ttfts, 99)} ms; "
        f"TPOT p50/p99 {pct(tpots, 50)}/{pct(tpots, 99)} ms; "
        f"TPOT <= {tpot_slo_s * 1000:g} ms: {met / max(len(result.requests), 1):.1%}",
        f"mean K {sum(s.drafted for s in steps) / request_steps if request_steps else 0:.2f} "
        f"drafts verified per request-step; replica-seconds {result.replica_seconds:.0f}",
    ])
