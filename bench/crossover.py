"""Where does speculation stop paying on this machine? Static K vs no speculation, by batch size.

Starts real engines on the tiny models (one at a time: this machine has 2 cores), sends batches of
B concurrent greedy requests (ignore_eos, fixed output length), and prints, per batch size, the
wall time of a batch with and without speculation side by side, their ratio, and the draft
acceptance rate measured by vLLM. Runs are interleaved in rounds to cancel drift.

With ``--adaptive`` SpecServe's adaptive policy runs beside them (K_max 5; give it the step-time
profile measured with the same engine flags), and each row also shows goodput and the K verified.

    python bench/crossover.py                 # K=3, batch sizes 1 and 32
    python bench/crossover.py --k 3 --batch-sizes 1 4 16 32 --rounds 3
    python bench/crossover.py --adaptive --adaptive-profile eager.json --eager
    python bench/crossover.py --adaptive --adaptive-profile eager.json --eager --draft mismatched

``--tpot-slo-ms X`` gives the adaptive engine a TPOT SLO of X ms (headroom 1). Set below what any
K reaches, it shows the fallback: the highest-goodput K (`_best` in policy/goodput.py; an
earlier fallback ran K = 0, then the K with the lowest predicted TPOT, which under load is often
K = 0 again, bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.machine import this_machine
from specserve_engine.serving import engine_dtype
from specserve_engine.trace_replay.summary import mean_k
from specserve_engine.vllm_counters import spec_decode_stats


def run_batch(url: str, prompts: list[str], max_tokens: int) -> float:
    def one(prompt: str) -> None:
        r = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": prompt, "max_tokens": max_tokens,
                  "temperature": 0, "ignore_eos": True},
            timeout=600,
        )
        r.raise_for_status()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(prompts)) as pool:
        list(pool.map(one, prompts))
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="extra `specserve serve` argument for every engine (repeatable)")
    ap.add_argument("--eager", action="store_true", help="engines run with vLLM's --enforce-eager")
    ap.add_argument("--adaptive", action="store_true", help="also run SpecServe adaptive")
    ap.add_argument("--adaptive-profile", help="step-time profile for the adaptive engine")
    ap.add_argument("--tpot-slo-ms", type=float,
                    help="TPOT SLO of the adaptive engine (implies --adaptive)")
    ap.add_argument("--draft", choices=("tiny", "mismatched"), default="tiny",
                    help="the tiny pair's draft, or `tiny.mismatched_draft`: as fast, as "
                         "confident, almost never accepted (where speculation never pays)")
    args = ap.parse_args()
    args.adaptive = args.adaptive or args.tpot_slo_ms is not None

    models = tiny.build()
    draft = tiny.mismatched_draft(models) if args.draft == "mismatched" else models.draft
    spec_name = f"K={args.k}"
    configs = {
        "off": ["--draft", "none"],
        # vLLM's own fixed-K speculation (no SpecServe scheduler): the static-K baseline.
        spec_name: ["--draft", str(draft), "--k-max", str(args.k), "--no-specserve"],
    }
    if args.adaptive:
        profile = ["--profile", args.adaptive_profile] if args.adaptive_profile else []
        policy: list[str] = []
        if args.tpot_slo_ms is not None:
            path = Path(tempfile.mkdtemp(prefix="specserve-crossover-")) / "policy.json"
            path.write_text(json.dumps({"k_max": 5, "tpot_headroom": 1.0,
                                        "slo": {"tpot_seconds": args.tpot_slo_ms / 1e3}}))
            policy = ["--policy-file", str(path)]
        configs["adaptive"] = ["--draft", str(draft), "--k-max", "5", *profile, *policy]
    times: dict[tuple[str, int], list[float]] = {}
    k_verified: dict[tuple[str, int], list[float]] = {}
    acceptance: dict[str, float] = {}
    # Engines alternate inside each round so slow drift of the machine hits all alike.
    for rnd in range(args.rounds):
        for name, extra in configs.items():
            server = ServerProcess(
                ["--model", str(models.target), "--served-model-name", "tiny", *extra,
                 *args.serve_arg, *(["--", "--enforce-eager"] if args.eager else [])],
                name=name,
            )
            with server:
                run_batch(server.url, tiny.heldout_prompts(models, 2, seed=99), 8)  # warm-up
                first = before = spec_decode_stats(httpx.get(f"{server.url}/metrics").text)
                for b in args.batch_sizes:
                    prompts = tiny.heldout_prompts(models, b, seed=rnd * 1000 + b)
                    t = run_batch(server.url, prompts, args.max_tokens)
                    after = spec_decode_stats(httpx.get(f"{server.url}/metrics").text)
                    d = after.minus(before)
                    before = after
                    k = mean_k(d.draft_tokens, d.drafts, b * args.max_tokens, d.accepted_tokens)
                    times.setdefault((name, b), []).append(t)
                    k_verified.setdefault((name, b), []).append(k or 0.0)
                    print(f"round {rnd + 1}/{args.rounds} {name:>8} B={b:<3} {t:7.2f}s "
                          f"K verified {k or 0.0:.2f}", file=sys.stderr, flush=True)
                stats = before.minus(first)
                if stats.draft_tokens:
                    acceptance[name] = stats.acceptance_rate

    dtype = engine_dtype(models.target, args.serve_arg)
    mode = "eager" if args.eager else "compiled"
    slo = f"; adaptive TPOT SLO {args.tpot_slo_ms:g} ms" if args.tpot_slo_ms is not None else ""
    slo += "; mismatched draft" if args.draft == "mismatched" else ""
    print(f"\n{this_machine().describe()}, dtype {dtype}, {mode}{slo}; median of {args.rounds} "
          f"rounds; {args.max_tokens} tokens per request; goodput = output tokens / wall time "
          "of the batch; ratio = time / off's time")
    print(f"{'batch':>5} {'config':>9} {'time s':>8} {'tok/s':>7} {'ratio':>6} {'K':>5}")
    rows = []
    for b in args.batch_sizes:
        off = statistics.median(times[("off", b)])
        for name in configs:
            t = statistics.median(times[(name, b)])
            k = statistics.median(k_verified[(name, b)])
            rows.append({"batch": b, "config": name, "seconds": t, "ratio": t / off,
                         "goodput": b * args.max_tokens / t, "k_verified": k})
            print(f"{b:>5} {name:>9} {t:>8.2f} {b * args.max_tokens / t:>7.1f} "
                  f"{t / off:>6.2f} {k:>5.2f}")
    print("greedy draft acceptance rate (vLLM counters): "
          + ", ".join(f"{n} {a:.3f}" for n, a in acceptance.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"k": args.k, "machine": this_machine().describe(), "dtype": dtype,
                       "mode": mode, "tpot_slo_ms": args.tpot_slo_ms, "draft": args.draft,
                       "rows": rows,
                       "acceptance": acceptance}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
