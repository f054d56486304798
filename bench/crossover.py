"""Where does speculation stop paying on this machine? Static K vs no speculation, by batch size.

Starts real engines on the tiny models (one at a time: this machine has 2 cores), sends batches of
B concurrent greedy requests (ignore_eos, fixed output length), and prints, per batch size, the
wall time of a batch with and without speculation side by side, their ratio, and the draft
acceptance rate measured by vLLM. Runs are interleaved in rounds to cancel drift.

    python bench/crossover.py                 # K=3, batch sizes 1 and 32
    python bench/crossover.py --k 3 --batch-sizes 1 4 16 32 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from specserve_engine import tiny
from specserve_engine.launcher import ServerProcess
from specserve_engine.vllm_metrics import spec_decode_stats


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
    args = ap.parse_args()

    models = tiny.build()
    configs = {
        "off": ["--draft", "none"],
        # vLLM's own fixed-K speculation (no SpecServe scheduler): the static-K baseline.
        f"K={args.k}": ["--draft", str(models.draft), "--k-max", str(args.k), "--no-specserve"],
    }
    times: dict[tuple[str, int], list[float]] = {}
    acceptance: dict[str, float] = {}
    # Engines alternate inside each round so slow drift of the machine hits both alike.
    for rnd in range(args.rounds):
        for name, extra in configs.items():
            server = ServerProcess(
                ["--model", str(models.target), "--served-model-name", "tiny", *extra,
                 *args.serve_arg],
                name=name,
            )
            with server:
                run_batch(server.url, tiny.heldout_prompts(models, 2, seed=99), 8)  # warm-up
                before = spec_decode_stats(httpx.get(f"{server.url}/metrics").text)
                for b in args.batch_sizes:
                    prompts = tiny.heldout_prompts(models, b, seed=rnd * 1000 + b)
                    t = run_batch(server.url, prompts, args.max_tokens)
                    times.setdefault((name, b), []).append(t)
                    print(f"round {rnd + 1}/{args.rounds} {name:>6} B={b:<3} {t:7.2f}s",
                          file=sys.stderr, flush=True)
                stats = spec_decode_stats(httpx.get(f"{server.url}/metrics").text).minus(before)
                if stats.draft_tokens:
                    acceptance[name] = stats.acceptance_rate

    spec_name = f"K={args.k}"
    print(f"\n{'batch':>5} {'off (s)':>9} {spec_name + ' (s)':>9} {'ratio':>7}   "
          f"(median of {args.rounds}; {args.max_tokens} tokens per request; ratio = spec/off)")
    rows = []
    for b in args.batch_sizes:
        off = statistics.median(times[("off", b)])
        spec = statistics.median(times[(spec_name, b)])
        rows.append({"batch": b, "off_s": off, "spec_s": spec, "ratio": spec / off})
        print(f"{b:>5} {off:>9.2f} {spec:>9.2f} {spec / off:>7.2f}")
    print(f"greedy draft acceptance rate (vLLM counters): {acceptance.get(spec_name, 0):.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"k": args.k, "rows": rows, "acceptance": acceptance}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
