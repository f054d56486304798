"""`specserve bench`: the trace-replay benchmark from the command line.

    specserve bench --quick                  # smoke: 3 configurations, small levels, 1 round
    specserve bench -o bench-out             # every baseline, 5 load levels, 3 rounds
    specserve bench --url http://HOST:PORT --served-model NAME   # replay against any endpoint
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from specserve_engine.machine import this_machine
from specserve_engine.serving import engine_dtype
from specserve_engine.trace_replay import plots
from specserve_engine.trace_replay.bootstrap import DEFAULT_REPLICATES, MIN_ROUNDS
from specserve_engine.trace_replay.client import replay
from specserve_engine.trace_replay.runner import (
    LevelResult,
    Progress,
    Workload,
    cells,
    read_results,
    run_config,
    standard_configs,
    write_results,
)
from specserve_engine.trace_replay.summary import (
    ratio_rows,
    report_markdown,
    tpot_prediction_markdown,
    tpot_predictions,
)
from specserve_engine.trace_replay.trace import TraceError, load_trace

DEFAULT_TRACE = "../shared/traces/azure_llm_conv_2023.csv"
QUICK_CONFIGS = ("off", "K=3", "adaptive")
STATIC = ("off", "K=1", "K=2", "K=3", "K=5")  # off is static K=0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trace", default=DEFAULT_TRACE, help=f"trace CSV (default {DEFAULT_TRACE})")
    p.add_argument("-o", "--output", default="bench-results", help="output folder")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: off, K=3 and adaptive, 12 requests per level, --eager")
    p.add_argument("--configs", nargs="+", default=None,
                   help="configurations to run (default: all): off K=1 K=2 K=3 K=5 dynamic-sd "
                        "threshold-0.6 adaptive")
    p.add_argument("--rates", type=float, nargs="+", default=[0.5, 1, 2, 4, 8],
                   help="load levels, requests/s (default 0.5 1 2 4 8)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per level (default 48; 12 with --quick)")
    p.add_argument("--trace-start", type=int, default=0, help="first trace row replayed")
    p.add_argument("--max-prompt-tokens", type=int, default=256)
    p.add_argument("--max-output-tokens", type=int, default=128)
    p.add_argument("--tpot-slo-ms", type=float, default=60.0,
                   help="TPOT SLO for attainment and for the adaptive policy (default 60)")
    p.add_argument("--level-timeout", type=float, default=300.0,
                   help="seconds a level may run before unfinished requests count as errors")
    p.add_argument("--rounds", type=int, default=None,
                   help="repeat every configuration (a fresh engine each time); odd rounds run "
                        f"them in reverse order; intervals need >= {MIN_ROUNDS} (default "
                        f"{MIN_ROUNDS}; 1 with --quick, a smoke run without round noise)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_REPLICATES,
                   help="bootstrap replicates behind every interval (default "
                        f"{DEFAULT_REPLICATES}; seeded by --seed)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--url", default=None,
                   help="replay against this running OpenAI endpoint instead of starting engines")
    p.add_argument("--served-model", default="bench", help="model name at --url")
    p.add_argument("--from-results", metavar="RESULTS_JSON", default=None,
                   help="run nothing: rewrite summary.md and the plots in --output from an "
                        "earlier run's results.json")
    p.add_argument("--eager", action="store_true",
                   help="engines run with vLLM's --enforce-eager (no torch.compile; implied by "
                        "--quick)")
    p.add_argument("--profile", default=None,
                   help="step-time profile for the adaptive policy, measured with the same engine "
                        "flags (e.g. `specserve profile -o eager.json -- --enforce-eager`); "
                        "default: the model folder's")
    p.add_argument("--serve-arg", action="append", default=[],
                   help="extra `specserve serve` argument for every engine (repeatable)")


def _given_flags(args: argparse.Namespace) -> list[str]:
    """The flags that differ from the defaults, to print the command that reproduces a run."""
    defaults = vars(_parser().parse_args([]))
    flags = []
    for key, value in vars(args).items():
        if key in defaults and value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            if value is True:
                flags.append(flag)
            elif isinstance(value, list):
                flags += [flag, *map(str, value)]
            else:
                flags += [flag, str(value)]
    return flags


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specserve bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return parser


def _fail(msg: str) -> int:
    print(f"specserve bench: error: {msg}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from specserve_engine import tiny
    from specserve_engine.policy import Policy, SloTargets

    if args.from_results:
        return _summarize_earlier(args)
    try:
        rows = load_trace(Path(args.trace))
    except TraceError as exc:
        return _fail(str(exc))
    args.rounds = rounds(args)
    if any(r <= 0 for r in args.rates) or args.rounds < 1 or args.bootstrap < 1:
        return _fail("--rates must be > 0, --rounds and --bootstrap >= 1")
    count = args.requests or (12 if args.quick else 48)
    if not 1 <= count <= len(rows) - args.trace_start:
        return _fail(f"--requests must be between 1 and {len(rows) - args.trace_start}")
    models = tiny.build()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(models.target / "tokenizer.json"))
    token_ids = tokenizer.encode(models.heldout.read_text(encoding="utf-8")).ids
    rates = sorted(set(args.rates))
    workload = Workload.build(rows, token_ids, rates=rates, count=count, start=args.trace_start,
                              max_prompt_tokens=args.max_prompt_tokens,
                              max_output_tokens=args.max_output_tokens, seed=args.seed)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    slo = args.tpot_slo_ms / 1000
    meta = {"command": "specserve bench " + " ".join(_given_flags(args)), "trace": args.trace,
            "rates": rates, "requests_per_level": count, "tpot_slo_s": slo,
            "max_prompt_tokens": args.max_prompt_tokens, "seed": args.seed,
            "max_output_tokens": args.max_output_tokens,
            "machine": this_machine().describe(),
            "dtype": engine_dtype(models.target, args.serve_arg),
            "mode": engine_mode(args),
            "rounds": args.rounds, "bootstrap_replicates": args.bootstrap,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if args.url:
        # Someone else's engine: its machine and dtype are not this process's to know.
        meta.update(machine=f"the endpoint {args.url}", dtype="as that endpoint serves",
                    mode="as that endpoint serves")
        return _replay_endpoint(args, workload, slo, meta, out)

    policy_file = out / "adaptive-policy.json"
    policy_file.write_text(Policy(mode="adaptive", k_max=5,
                                  slo=SloTargets(tpot_seconds=slo)).model_dump_json(indent=1))
    profile = Path(args.profile) if args.profile else None
    if profile is not None and not profile.is_file():
        return _fail(f"--profile {profile} does not exist")
    configs = standard_configs(models.draft, policy_file, profile)
    wanted = args.configs or (QUICK_CONFIGS if args.quick else [c.name for c in configs])
    unknown = sorted(set(wanted) - {c.name for c in configs})
    if unknown:
        return _fail(f"unknown configuration(s) {', '.join(unknown)}; known: "
                     + " ".join(c.name for c in configs))
    configs = [c for c in configs if c.name in wanted]
    extra = list(args.serve_arg) + (["--", "--enforce-eager"] if args.quick or args.eager else [])
    results: list[LevelResult] = []
    for rnd in range(args.rounds):
        for config in configs if rnd % 2 == 0 else configs[::-1]:
            results += run_config(config, models.target, workload, rnd,
                                  deadline_s=args.level_timeout, extra_serve_args=extra,
                                  log_dir=out)
            _report(out, meta, results, slo, args)  # partial results survive an interruption
    _report(out, meta, results, slo, args, final=True)
    return 0


def rounds(args: argparse.Namespace) -> int:
    """--rounds, else MIN_ROUNDS (1 for a --quick smoke run)."""
    if args.rounds is not None:
        return int(args.rounds)
    return 1 if args.quick else MIN_ROUNDS


def engine_mode(args: argparse.Namespace) -> str:
    """'eager' when the engines run with vLLM's --enforce-eager, else 'compiled'."""
    eager = args.quick or args.eager or "--enforce-eager" in args.serve_arg
    return "eager" if eager else "compiled"


def _replay_endpoint(args: argparse.Namespace, workload: Workload, slo: float, meta: dict,
                     out: Path) -> int:
    results = []
    for rate in workload.rates:
        plan = workload.plans[rate]
        progress = Progress(f"endpoint @ {rate:g} req/s", len(plan))
        records = asyncio.run(replay(args.url, args.served_model, plan, workload.prompts,
                                     deadline_s=args.level_timeout, on_done=progress.update))
        results.append(LevelResult("endpoint", rate, 0, records))
    _report(out, meta, results, slo, args, final=True)
    return 0


def _report(out: Path, meta: dict, results: list[LevelResult], slo: float,
            args: argparse.Namespace, final: bool = False) -> None:
    table = cells(results, slo, replicates=args.bootstrap, seed=args.seed)
    configs = {c.summary.config for c in table}
    baselines = sorted(configs - {"adaptive"})
    ratios = ratio_rows(table, "adaptive", baselines) if "adaptive" in configs else []
    write_results(out / "results.json", meta, table, results, ratios)
    text = report_markdown(meta, table, slo, statics=STATIC, replicates=args.bootstrap,
                           seed=args.seed)
    text += tpot_prediction_markdown(tpot_predictions(
        (r.config, r.rate, r.records, r.predicted_tpot_s) for r in results))
    (out / "summary.md").write_text(text)
    if final:
        levels = [c.summary for c in table]
        plots.metric_vs_load(levels, "goodput_tok_s", "goodput (output tokens/s)",
                             out / "goodput_vs_load.png")
        plots.metric_vs_load(levels, "tpot_p99_s", "TPOT p99 (ms)", out / "tpot_p99_vs_load.png",
                             scale=1000, slo=slo)
        for config in ("adaptive", "threshold-0.6", "dynamic-sd"):
            timelines = {r.rate: r.timeline for r in results
                         if r.config == config and r.round == 0 and r.timeline}
            if timelines:
                plots.k_over_time(timelines, f"{config}: K verified vs running requests",
                                  out / f"k_over_time_{config}.png")
        print(text)
        print(f"[bench] results in {out}/ (results.json, summary.md, *.png)", file=sys.stderr)


def _summarize_earlier(args: argparse.Namespace) -> int:
    path = Path(args.from_results)
    try:
        meta, results = read_results(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _fail(f"--from-results {path}: not a bench results.json ({exc})")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    _report(out, meta, results, float(meta["tpot_slo_s"]), args, final=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
