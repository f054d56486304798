"""Validate the simulator against a real trace-replay bench run (bench/SIMULATION.md).

    specserve bench -o bench-out ...                       # the real run (engines, slow)
    python bench/sim_validate.py bench-out \\
        --ground-truth bench/results/sim-groundtruth -o bench/results/sim-validation.md

Ground truth, recorded on the machine the bench ran on: `steps.jsonl` (SPECSERVE_RECORD_STEPS
lines), `verifications.jsonl` (SPECSERVE_RECORD_VERIFICATIONS lines), and the profile the
adaptive engines started from (`--profile`, default: the one the bench command names, else
`profile.json` in the ground-truth folder). Prints, per (configuration, level), real vs
simulated goodput and TPOT p50 with the error, the median errors, and whether the simulation
orders the configurations as the real run does wherever its intervals separate them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from specserve_engine.policy import Profile
from specserve_engine.trace_replay.trace import load_trace
from specserve_sim.groundtruth import GroundTruth, StepTimeTable, VerificationSampler
from specserve_sim.validate import BenchRun, flag_value, median_error, report_markdown, validate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench_dir", help="the folder `specserve bench -o` wrote (results.json)")
    p.add_argument("--ground-truth", default="bench/results/sim-groundtruth")
    p.add_argument("--steps", default=None, help="default: GROUND_TRUTH/steps.jsonl")
    p.add_argument("--verifications", default=None,
                   help="default: GROUND_TRUTH/verifications.jsonl")
    p.add_argument("--profile", default=None, help="the adaptive engines' starting profile")
    p.add_argument("--trace", default=None, help="default: the trace the bench replayed")
    p.add_argument("--rounds", type=int, default=None,
                   help="simulated rounds per configuration (default: the bench's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, help="also write the report here")
    args = p.parse_args(argv)

    run = BenchRun.load(args.bench_dir)
    gt = Path(args.ground_truth)
    steps = StepTimeTable.from_jsonl(args.steps or gt / "steps.jsonl")
    sampler = VerificationSampler.from_jsonl(args.verifications or gt / "verifications.jsonl")
    profile_path = args.profile or flag_value(str(run.meta.get("command", "")), "--profile", "")
    if not profile_path or not Path(profile_path).is_file():
        profile_path = str(gt / "profile.json")
    profile = Profile.load(profile_path) if Path(profile_path).is_file() else None
    truth = GroundTruth(steps, sampler,
                        f"{steps.records} step records ({', '.join(steps.roles)}) from "
                        f"{steps.source}; {len(sampler.pool)} verifications from "
                        f"{sampler.source} ({'per-request streams' if sampler.streams else 'iid'}"
                        f"); adaptive profile {profile_path if profile else 'none (prior)'}")
    rows = load_trace(Path(args.trace or str(run.meta.get("trace"))))
    started = time.perf_counter()
    comparisons, checks, _ = validate(
        run, rows, truth, profile=profile, rounds=args.rounds, seed=args.seed,
        progress=lambda msg: print(f"[sim_validate] {msg}", file=sys.stderr, flush=True))
    text = report_markdown(run, comparisons, checks, truth)
    text += f"\nSimulated in {time.perf_counter() - started:.1f} s.\n"
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    goodput = median_error(comparisons, "goodput_tok_s")
    tpot = median_error(comparisons, "tpot_p50_s")
    ok = (goodput is not None and goodput <= 0.10 and tpot is not None and tpot <= 0.10
          and all(c.agrees for c in checks))
    print(f"[sim_validate] goal (median errors <= 10%, same ranking): "
          f"{'met' if ok else 'NOT met'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
