"""`specserve` command line: serve, profile, models, demo; bench, simulate and plan when their
packages are installed (the engine image carries only what serving needs)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specserve_contract import ENV_POLICY_FILE, HTTP_PORT, PROFILE_FILENAME
from specserve_engine.machine import DTYPES, this_machine
from specserve_engine.serving import (
    ServeConfig,
    UserError,
    cpu_runtime_env,
    engine_env,
    on_cpu_build,
    parse_k_table,
    profile_warning,
    vllm_serve_argv,
)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="target model folder (HF format); default: the tiny target")
    p.add_argument(
        "--draft",
        help="draft model folder, or 'none' for no speculation; default: the tiny draft "
        "when --model is not given, else none",
    )
    p.add_argument("--k-max", type=int, default=5, help="largest K the policy may use (1-16)")
    p.add_argument("--served-model-name", default=None, help="model name clients send")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=HTTP_PORT)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="dtype vLLM computes in. auto: on CPU, bfloat16 where the CPU has "
                        "native bf16 (AVX-512 BF16 / AMX) and float32 elsewhere for float32 "
                        "checkpoints; on GPU, vLLM's own choice. GET /specserve/policy reports "
                        "the dtype in force")
    p.add_argument(
        "--kv-cache-gib", type=float, default=None,
        help="CPU KV cache size in GiB (sets VLLM_CPU_KVCACHE_SPACE; default 1)",
    )
    p.add_argument("--drain-seconds", type=int, default=0,
                   help="on SIGTERM, let in-flight requests finish for up to this many seconds "
                        "(new ones are refused) before exiting; 0: abort them (default)")
    p.add_argument("--mode", default="adaptive",
                   help="initial policy: adaptive | static | off | threshold (a baseline: "
                        "drafting stops at draft probability < 0.6)")
    p.add_argument("--static-k", type=int, default=None, help="K for --mode static (default 3)")
    p.add_argument(
        "--no-specserve", action="store_true",
        help="plain vLLM speculation with a fixed K = --k-max (a baseline; no control port)",
    )
    p.add_argument("--k-table", default=None,
                   help="with --no-specserve: vLLM's Dynamic-SD table, K per batch-size range, "
                        "e.g. 1-4:3,5-16:2,17-1024:0 (a baseline)")
    p.add_argument("--control-host", default=None, help="control port host (default: --host)")
    p.add_argument("--control-port", type=int, default=None,
                   help="control port: policy endpoint and specserve_* metrics (default: port+1)")
    p.add_argument("--policy-file", default=None,
                   help=f"initial Policy JSON (the operator mounts one; env {ENV_POLICY_FILE})")
    p.add_argument("--profile", default=None,
                   help="step-time profile JSON from `specserve profile`, or `none` for the "
                        "built-in timing prior (default: <model>/specserve-profile.json if "
                        "it exists)")
    p.add_argument(
        "vllm_args", nargs=argparse.REMAINDER,
        help="extra arguments passed to `vllm serve` as is (after a `--`)",
    )


def _serve_config(args: argparse.Namespace) -> ServeConfig:
    extra = [a for a in args.vllm_args if a != "--"]
    return ServeConfig(
        model=Path(args.model) if args.model else None,
        draft=args.draft,
        k_max=args.k_max,
        served_model_name=args.served_model_name,
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
        mode=args.mode,
        static_k=args.static_k,
        specserve=not args.no_specserve,
        control_host=args.control_host,
        control_port=args.control_port,
        policy_file=Path(args.policy_file) if args.policy_file else None,
        profile_file=Path(args.profile) if args.profile not in (None, "none") else None,
        auto_profile=args.profile != "none",
        k_table=parse_k_table(args.k_table) if args.k_table else None,
        extra_vllm_args=extra,
        drain_seconds=args.drain_seconds,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _serve_config(args).resolved()
    print(f"specserve: dtype {cfg.dtype} on {this_machine().describe()}", file=sys.stderr)
    if cfg.profile_file is not None:
        warning = profile_warning(cfg.profile_file, cfg.dtype or "")
        if warning:
            print(f"specserve: warning: {warning}", file=sys.stderr, flush=True)
    if args.kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gib)
    if on_cpu_build():
        os.environ.update(cpu_runtime_env(dict(os.environ)))
    if cfg.speculative and cfg.specserve:
        os.environ.update(engine_env(cfg, dict(os.environ)))
    argv = vllm_serve_argv(cfg)
    print("specserve: " + " ".join(argv), file=sys.stderr, flush=True)
    # vLLM's own CLI owns the process from here: its OpenAI server, signals and shutdown.
    os.execvp(argv[0], argv)
    return 0  # unreachable


def cmd_profile(args: argparse.Namespace) -> int:
    from specserve_engine import tiny
    from specserve_engine.profiler import run_profile
    from specserve_engine.serving import check_causal_lm_dir, default_profile_path

    if args.model is None:
        models = tiny.build()
        model, draft, text = models.target, models.draft, models.heldout.read_text()
    else:
        if args.draft is None:
            raise UserError("--draft is required with --model (profiling needs a draft model)")
        model, draft = Path(args.model), Path(args.draft)
        text = Path(args.text).read_text() if args.text else _stdlib_text()
    check_causal_lm_dir(model, "target")
    check_causal_lm_dir(draft, "draft")
    if args.calibration_prompts < 0:
        raise UserError(f"--calibration-prompts must be >= 0 (got {args.calibration_prompts})")
    out = Path(args.output) if args.output else default_profile_path(model)
    run_profile(model, draft, out, prompt_text=text, batch_sizes=args.batch_sizes,
                k_values=args.k_values, context_lens=args.context_lens,
                new_tokens=args.new_tokens, calibration_prompts=args.calibration_prompts,
                raw_records=Path(args.records) if args.records else None,
                extra_args=["--", *(a for a in args.vllm_args if a != "--")]
                if args.vllm_args else ())
    return 0


def _stdlib_text() -> str:
    from specserve_engine import tiny

    return tiny.load_corpus(1_000_000)[1]


def cmd_models(args: argparse.Namespace) -> int:
    from specserve_engine import tiny

    models = tiny.build(force=args.force)
    print(json.dumps({"target": str(models.target), "draft": str(models.draft), **models.info},
                     indent=2))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from specserve_engine.demo import run_demo

    return run_demo(port=args.port, requests=args.requests, max_tokens=args.max_tokens)


@dataclass(frozen=True)
class OptionalCommand:
    """A subcommand whose code is not part of serving (the bench, the simulator). Its module,
    which has `add_arguments(parser)` and `run(args)`, is imported only when that subcommand is
    the one asked for, so an install with serving alone (the engine image) starts, and asking
    for a subcommand it lacks answers one line saying how to get it."""

    name: str
    help: str
    module: str
    needs: str  # what to install when the module (or one it imports) is missing

    def add_to(self, sub: argparse._SubParsersAction, chosen: str | None) -> None:
        if chosen != self.name:
            sub.add_parser(self.name, help=self.help)  # listed in --help, never parsed
            return
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            raise UserError(f"`specserve {self.name}` needs the Python package {exc.name!r}, "
                            f"which this install does not have ({self.needs})") from None
        parser = sub.add_parser(self.name, help=self.help, description=module.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


_FROM_SOURCE = "install SpecServe from a source checkout: pip install -e '.[engine,operator,dev]'"
OPTIONAL_COMMANDS = (
    OptionalCommand("bench", "replay the Azure trace against SpecServe and vLLM's baselines",
                    "specserve_engine.trace_replay.command", _FROM_SOURCE),
    OptionalCommand("simulate",
                    "replay a trace on simulated SpecServe replicas (discrete-event)",
                    "specserve_sim.command", _FROM_SOURCE),
    OptionalCommand("plan", "trace + SLO + hardware model -> replicas per load level, with "
                            "and without adaptive speculation",
                    "specserve_sim.plan_command", _FROM_SOURCE),
)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `argv`: optional subcommands are built only when `argv` asks for one
    (UserError when its package is not installed)."""
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(
        prog="specserve", description="SLO-aware adaptive speculative decoding on vLLM"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run vLLM's OpenAI server with SpecServe speculation")
    _add_serve_args(serve)
    serve.set_defaults(func=cmd_serve)

    profile = sub.add_parser(
        "profile", help="measure step times of target and draft on this hardware -> profile JSON"
    )
    profile.add_argument("--model", help="target model folder (default: the tiny target)")
    profile.add_argument("--draft", help="draft model folder (default: the tiny draft)")
    profile.add_argument("-o", "--output",
                         help=f"profile JSON (default: <model>/{PROFILE_FILENAME}, "
                              "which `specserve serve` picks up by itself)")
    profile.add_argument("--text", help="text file to cut prompts from (default: stdlib source)")
    profile.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    profile.add_argument("--k-values", type=int, nargs="+", default=[0, 1, 3, 5])
    profile.add_argument("--context-lens", type=int, nargs="+", default=[64, 384])
    profile.add_argument("--new-tokens", type=int, default=16, help="tokens generated per cell")
    profile.add_argument("--calibration-prompts", type=int, default=24,
                         help="prompts drafted with the largest K to fit the acceptance "
                              "calibration (0: skip; engines then learn it online)")
    profile.add_argument("--records", metavar="DIR",
                         help="also keep the raw records there: every step (steps.jsonl) and "
                              "every verification (verifications.jsonl), the simulator's "
                              "ground truth")
    profile.add_argument(
        "vllm_args", nargs=argparse.REMAINDER,
        help="extra vLLM arguments after a `--`, as the engine will be served with (e.g. "
             "-- --enforce-eager): step times depend on them")
    profile.set_defaults(func=cmd_profile)

    models = sub.add_parser("models", help="build (or show the cached) tiny target/draft models")
    models.add_argument("--force", action="store_true", help="rebuild even if cached")
    models.set_defaults(func=cmd_models)

    demo = sub.add_parser(
        "demo", help="serve the tiny models, send a few OpenAI requests, print answers and stats"
    )
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--requests", type=int, default=4)
    demo.add_argument("--max-tokens", type=int, default=48)
    demo.set_defaults(func=cmd_demo)

    for command in OPTIONAL_COMMANDS:
        command.add_to(sub, chosen=chosen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"specserve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
